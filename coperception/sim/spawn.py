"""Populating a town: connected vehicles, background traffic, cyclists and road-side units.

Placements from the scenario come first (the ego, collaborators, the truck that hides a car...),
then the ego (if not placed) on a leg of the ego junction, collaborators within ``cav_radius``
of it, background vehicles and cyclists on free spawn slots. Initial speeds are capped so that
every vehicle can stop for its leader or a red light, which keeps the first ticks collision-free.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from coperception.errors import ConfigError
from coperception.sim.config import Placement, SimConfig
from coperception.sim.objects import CLASS_INDEX, sample_sizes
from coperception.sim.roads import MOVEMENTS, SIDES
from coperception.sim.traffic import TrafficLights, Vehicles, choose_next, gaps
from coperception.sim.world import CORNER_SIGNS, World

FIRST_OBJECT_ID = 1000


@dataclass
class Population:
    """vehicles: all lane-following road users, connected ones first (ego at index 0).
    rsu_poses: (K, 3) ``x, y, yaw`` of road-side units; ego_junction/ego_side: where the ego starts."""

    vehicles: Vehicles
    n_cavs: int
    rsu_poses: np.ndarray
    ego_junction: int
    ego_side: int


class _Slots:
    """Free spawn slots (lane, s) with their world positions."""

    def __init__(self, world: World, spacing: float):
        self.lane, self.s = world.roads.spawn_slots(spacing)
        self.xy, _ = world.roads.pose(self.lane, self.s)
        self.free = np.ones(len(self.lane), bool)
        self.spacing = spacing

    def occupy(self, lane: int, s: float) -> None:
        self.free &= ~((self.lane == lane) & (np.abs(self.s - s) < self.spacing))

    def take(self, idx: np.ndarray) -> None:
        self.free[idx] = False


def _idm_params(cls: np.ndarray, limit: float, spread: float, rng: np.random.Generator) -> dict:
    n = len(cls)
    heavy = np.isin(cls, [CLASS_INDEX["truck"], CLASS_INDEX["bus"]])
    bike = cls == CLASS_INDEX["cyclist"]
    v0 = limit * np.clip(1 + spread * rng.standard_normal(n), 0.6, 1.3) * np.where(heavy, 0.85, 1.0)
    v0 = np.where(bike, rng.uniform(4.0, 6.5, n), v0)
    return dict(v0=v0, a_max=np.where(heavy | bike, 1.0, rng.uniform(1.7, 2.3, n)),
                b=np.where(heavy | bike, 2.5, 3.0), headway=np.where(heavy, rng.uniform(1.6, 2.0, n),
                                                                   rng.uniform(1.2, 1.6, n)),
                s0=np.full(n, 2.0))


def _ego_junction(cfg: SimConfig, world: World, rng: np.random.Generator) -> int:
    choice = cfg.agents.ego_junction
    if choice == "center":
        return int(np.argmin(np.linalg.norm(world.roads.centers, axis=1)))
    if choice == "random":
        return int(rng.integers(0, len(world.roads.centers)))
    return world.roads.junction_index(choice)


def _placed(p: Placement, i: int, world: World, ego_j: int, rng) -> tuple[int, float, int, np.ndarray]:
    """(lane, s, next lane, size) of placement ``i``; ConfigError if its leg or movement is missing."""
    roads = world.roads
    jid = ego_j if p.junction is None else roads.junction_index(p.junction)
    side = SIDES.index(p.approach)
    if not roads.legs[jid, side]:
        raise ConfigError(f"agents.placements[{i}].approach: junction {jid} has no {p.approach} leg")
    lane = roads.approach_id[(jid, side, p.lane)]
    size = sample_sizes(np.array([CLASS_INDEX[p.cls]]), rng)[0]
    s = roads.lane_length[lane] - p.distance - size[0] / 2
    if s < size[0] / 2:
        raise ConfigError(f"agents.placements[{i}].distance: {p.distance} m leaves no room for a {p.cls}")
    nxt = choose_next(roads, lane, rng, p.movement)
    if p.movement is not None and MOVEMENTS[roads.conn_movement[nxt]] != p.movement:
        raise ConfigError(f"agents.placements[{i}].movement: '{p.movement}' is not allowed from lane {p.lane} "
                          f"of the {p.approach} leg")
    return lane, s, nxt, size


def populate(cfg: SimConfig, world: World, lights: TrafficLights, rng: np.random.Generator) -> Population:
    """Place every vehicle and road-side unit of a scenario (see module docstring)."""
    roads, t = world.roads, cfg.traffic
    slots = _Slots(world, t.slot_spacing)
    ego_j = _ego_junction(cfg, world, rng)
    rows, n_agents = _placed_rows(cfg, world, ego_j, slots, rng)
    rows[n_agents:n_agents] = _agent_rows(cfg, roads, ego_j, slots, rows, n_agents, rng)
    mix = np.array([t.class_mix.get(c, 0.0) for c in ("car", "van", "truck", "bus")])
    npc_cls = rng.choice([CLASS_INDEX[c] for c in ("car", "van", "truck", "bus")], t.vehicles, p=mix / mix.sum())
    rows += _from_slot(_pick(slots.free.copy(), t.vehicles, rng, slots), slots, roads, npc_cls, rng)
    outer = slots.free & (roads.lane_index[slots.lane] == cfg.town.lanes_per_direction - 1)
    if outer.sum() < t.cyclists:
        raise ConfigError(f"traffic.cyclists: {t.cyclists} cyclists but only {int(outer.sum())} free outer-lane slots")
    rows += _from_slot(_pick(outer, t.cyclists, rng, slots), slots, roads, CLASS_INDEX["cyclist"], rng)
    vehicles = _vehicles(rows, cfg, roads, lights, rng)
    ego_side = int(roads.lane_side[vehicles.lane[0]])
    if cfg.agents.ego_light != "any":
        lights.force(ego_j, ego_side, cfg.agents.ego_light, cfg.warmup)
        _cap_speeds(vehicles, roads, lights, 0.0, [r[5] for r in rows])
    return Population(vehicles=vehicles, n_cavs=cfg.agents.cavs, rsu_poses=_rsus(cfg, world, ego_j, rng),
                      ego_junction=ego_j, ego_side=ego_side)


def _placed_rows(cfg: SimConfig, world: World, ego_j: int, slots: _Slots, rng) -> tuple[list, int]:
    """Rows (lane, s, next lane, size, class, speed) of the placements, ego and connected ones
    first, and how many of them are connected agents."""
    placements = cfg.agents.placements
    order = sorted(range(len(placements)), key=lambda i: ("ego", "cav", "npc").index(placements[i].role))
    rows: list[tuple[int, float, int, np.ndarray, int, float | None]] = []
    for i in order:
        p = placements[i]
        lane, s, nxt, size = _placed(p, i, world, ego_j, rng)
        for lane2, s2, _, size2, _, _ in rows:
            if lane2 == lane and abs(s2 - s) < (size[0] + size2[0]) / 2 + 1.0:
                raise ConfigError(f"agents.placements[{i}]: overlaps another placement on the same lane")
        slots.occupy(lane, s)
        rows.append((lane, s, nxt, size, CLASS_INDEX[p.cls], p.speed))
    roles = [placements[i].role for i in order]
    n_agents = sum(r in ("ego", "cav") for r in roles)
    if "ego" not in roles:  # a car on a leg of the ego junction, 10-50 m before the stop line
        to_line = world.roads.lane_length[slots.lane] - slots.s
        near = (world.roads.lane_junction[slots.lane] == ego_j) & (to_line > 10.0) & (to_line < 50.0) & slots.free
        rows.insert(0, _from_slot(_pick(near, 1, rng, slots), slots, world.roads, CLASS_INDEX["car"], rng)[0])
        n_agents += 1
    return rows, n_agents


def _agent_rows(cfg: SimConfig, roads, ego_j: int, slots: _Slots, rows: list, n_agents: int, rng) -> list:
    """Rows of the connected cars still missing: random free slots within ``cav_radius`` of the
    ego (the nearest slots if there are too few)."""
    need = cfg.agents.cavs - n_agents
    if need <= 0:
        return []
    ego_xy = roads.pose(np.array([rows[0][0]]), np.array([rows[0][1]]))[0][0]
    d = np.linalg.norm(slots.xy - ego_xy, axis=1)
    ranked = np.flatnonzero(slots.free)[np.argsort(d[slots.free], kind="stable")]
    within = ranked[d[ranked] <= cfg.agents.cav_radius]
    pick = rng.permutation(within)[:need] if len(within) >= need else ranked[:need]
    slots.take(pick)
    return _from_slot(pick, slots, roads, CLASS_INDEX["car"], rng)


def _pick(mask: np.ndarray, n: int, rng: np.random.Generator, slots: _Slots) -> np.ndarray:
    idx = np.flatnonzero(mask)
    if len(idx) < n:
        raise ConfigError(f"not enough free spawn slots: need {n}, have {len(idx)}")
    pick = rng.choice(idx, n, replace=False) if n else idx[:0]
    slots.take(pick)
    return pick


def _from_slot(idx, slots: _Slots, roads, cls, rng) -> list:
    cls = np.broadcast_to(np.asarray(cls), (len(idx),))
    sizes = sample_sizes(cls, rng)
    jitter = rng.uniform(-1, 1, len(idx)) * np.maximum(0.0, (slots.spacing - sizes[:, 0] - 2.5) / 2)
    return [(int(slots.lane[k]), float(slots.s[k] + j), choose_next(roads, int(slots.lane[k]), rng),
             size, int(c), None) for k, j, size, c in zip(idx, jitter, sizes, cls)]


def _vehicles(rows: list, cfg: SimConfig, roads, lights: TrafficLights, rng) -> Vehicles:
    cls = np.array([r[4] for r in rows], dtype=np.int64)
    veh = Vehicles(lane=np.array([r[0] for r in rows], dtype=np.int64), s=np.array([r[1] for r in rows]),
                   v=np.zeros(len(rows)), next_lane=np.array([r[2] for r in rows], dtype=np.int64),
                   prev_lane=np.full(len(rows), -1, dtype=np.int64),
                   size=np.array([r[3] for r in rows]).reshape(-1, 3), cls=cls,
                   **_idm_params(cls, cfg.traffic.speed_limit, cfg.traffic.speed_spread, rng))
    _cap_speeds(veh, roads, lights, 0.0, [r[5] for r in rows], rng)
    return veh


def _cap_speeds(veh: Vehicles, roads, lights: TrafficLights, t: float, forced: list, rng=None) -> None:
    """Start each vehicle at a speed from which it can stop before its obstacle (gap with v = 0)."""
    if rng is not None:
        veh.v = veh.v0 * rng.uniform(0.5, 1.0, len(veh))
    wanted = veh.v.copy()
    veh.v = np.zeros(len(veh))
    gap, _ = gaps(veh, roads, lights.state(t))
    veh.v = np.minimum(wanted, np.sqrt(2 * veh.b * np.maximum(gap - veh.s0, 0.0)))
    for i, v in enumerate(forced):
        if v is not None:
            veh.v[i] = v


def _rsus(cfg: SimConfig, world: World, ego_j: int, rng: np.random.Generator) -> np.ndarray:
    """(K, 3) ``x, y, yaw`` of road-side units: placements, then ego-junction corners, then nearest."""
    roads = world.roads
    chosen = [(roads.junction_index(r.junction) if r.junction is not None else ego_j, r.corner)
              for r in cfg.agents.rsu_placements]
    dist = np.linalg.norm(roads.centers - roads.centers[ego_j], axis=1)
    for jid in np.argsort(dist, kind="stable"):
        for corner in rng.permutation(list(CORNER_SIGNS)):
            if len(chosen) >= cfg.agents.rsus:
                break
            if (int(jid), str(corner)) not in chosen:
                chosen.append((int(jid), str(corner)))
    out = [(*world.corner_mount(j, c)[0], world.corner_mount(j, c)[1]) for j, c in chosen[:cfg.agents.rsus]]
    return np.array(out, dtype=np.float64).reshape(-1, 3)
