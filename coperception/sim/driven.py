"""A :class:`~coperception.sim.simulation.Simulation` with an externally driven ego and scripted actors,
for closed-loop driving (the CARLA scenario runner's role: the ego is moved by the agent under test,
scenario actors by scripts).

* The ego (vehicle 0) is moved by the caller: :meth:`DrivenSimulation.set_ego` sets its pose and
  speed before each tick (its box is in the scene, so other agents' LiDARs see it). It keeps its
  row in the traffic arrays, placed at the projection of its centre on its lane sequence
  (``ego_lanes``), so that IDM vehicles behind it on those lanes follow it as their leader and a
  junction it occupies counts as busy; it is never advanced by IDM. IDM vehicles do not react to
  the ego elsewhere (beside them, cutting across their lane).
* ``accel_override`` (V,) replaces the IDM command of a vehicle where finite (scripted vehicles:
  a car running a red light, a truck held in a queue); such a vehicle ignores lights and leaders.
* :class:`PathActor` s move along polylines at scripted speeds (a pedestrian stepping out, a
  parked truck, a car cutting in); they are objects of the scene and of the ground truth, but
  IDM vehicles do not see them.
* :meth:`DrivenSimulation.remove` takes background vehicles or parked cars out of the scene
  (clearing a scenario's lanes).

With none of these used the simulation is exactly the base one.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np

from coperception.sim.ground import CURB_HEIGHT
from coperception.sim.objects import sample_paint
from coperception.sim.roads import CONNECTOR
from coperception.sim.simulation import Simulation
from coperception.sim.traffic import B_MAX, Vehicles, advance, gaps, idm_acceleration


@dataclass
class PathActor:
    """A road user on a polyline ``path`` (P, 2): class index, size (3,) ``l, w, h``, arc position
    ``s`` (m) and speed ``v`` (m/s); once ``started`` its speed moves towards ``v_target`` at
    ``accel`` m/s^2; ``stages`` ``(s, v_target, accel)`` change those two once the actor passes
    arc ``s`` (a car braking after it has cut in). It stops at the end of its path."""

    cls: int
    size: np.ndarray
    path: np.ndarray
    s: float = 0.0
    v: float = 0.0
    v_target: float = 0.0
    accel: float = 2.0
    started: bool = False
    stages: list[tuple[float, float, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.path = np.asarray(self.path, np.float64)
        self.size = np.asarray(self.size, np.float64)
        self.cum = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(self.path, axis=0), axis=1))])

    @property
    def length(self) -> float:
        return float(self.cum[-1])

    def step(self, dt: float) -> None:
        while self.stages and self.s >= self.stages[0][0]:
            _, self.v_target, self.accel = self.stages.pop(0)
        if self.started:
            dv = np.clip(self.v_target - self.v, -self.accel * dt, self.accel * dt)
            v_new = self.v + dv
            self.s += 0.5 * (self.v + v_new) * dt
            self.v = v_new
        if self.s >= self.length:
            self.s, self.v = self.length, 0.0

    def pose(self) -> tuple[np.ndarray, float]:
        """Position (2,) and heading (rad) at the current ``s``."""
        cum = self.cum
        k = int(np.clip(np.searchsorted(cum, self.s, side="right") - 1, 0, len(cum) - 2))
        t = (self.s - cum[k]) / max(cum[k + 1] - cum[k], 1e-9)
        d = self.path[k + 1] - self.path[k]
        return self.path[k] + t * d, float(np.arctan2(d[1], d[0]))


class DrivenSimulation(Simulation):
    """See the module docstring. Construct it like :class:`Simulation`; the ego is taken over by
    the first :meth:`set_ego` (before that, and during warm-up, it drives by IDM)."""

    def __init__(self, config, seed: int = 0, name: str | None = None, threads: int = 0):
        # Set before the base class runs its warm-up ticks, which are then the base class's own.
        self.ego_box: np.ndarray | None = None
        self.accel_override: np.ndarray | None = None
        self.actors: list[PathActor] = []
        super().__init__(config, seed, name, threads)
        self.ego_speed = 0.0
        self.ego_lanes: list[int] = []
        self.accel_override = np.full(len(self.vehicles), np.nan)
        self._rng_actors = np.random.default_rng(np.random.SeedSequence([seed, 7]))
        self._base = dict(classes=self.classes, ids=self.ids, paint=self.paint, reflectivity=self.reflectivity)
        self._actor_arrays = dict(classes=np.zeros(0, np.int64), ids=np.zeros(0, np.int64),
                                  paint=np.zeros((0, 3), np.uint8), reflectivity=np.zeros(0))

    # ----------------------------------------------------------------------------- scene edits
    def remove(self, vehicles: np.ndarray | None = None, parked: np.ndarray | None = None) -> None:
        """Take the vehicles / parked cars where the (V,) / (P,) masks are True out of the scene.
        Connected vehicles (the agents) cannot be removed."""
        n_v, n_p = len(self.vehicles), len(self.world.parked_boxes)
        drop_v = np.zeros(n_v, bool) if vehicles is None else np.asarray(vehicles, bool)
        drop_p = np.zeros(n_p, bool) if parked is None else np.asarray(parked, bool)
        if drop_v.shape != (n_v,) or drop_p.shape != (n_p,):
            raise ValueError(f"masks must be ({n_v},) and ({n_p},), got {drop_v.shape} and {drop_p.shape}")
        if drop_v[:self.population.n_cavs].any():
            raise ValueError("connected vehicles (agents) cannot be removed")
        keep_v, keep_p = ~drop_v, ~drop_p
        self.vehicles = Vehicles(**{f.name: getattr(self.vehicles, f.name)[keep_v] for f in fields(Vehicles)})
        self.accel_override = self.accel_override[keep_v]
        self.world.parked_boxes = self.world.parked_boxes[keep_p]
        self.world.parked_classes = self.world.parked_classes[keep_p]
        keep = np.concatenate([keep_v, keep_p, np.ones(len(self.pedestrians), bool)])
        self._base = {k: v[keep] for k, v in self._base.items()}
        self._refresh()

    def add_actor(self, actor: PathActor, object_id: int | None = None) -> int:
        """Add a scripted actor; returns its object id (default: one above every id in use)."""
        oid = int(object_id if object_id is not None else max(self.ids.max(initial=0), 0) + 1)
        paint, refl = sample_paint(1, np.array([actor.cls]), self._rng_actors)
        new = dict(classes=[actor.cls], ids=[oid], paint=paint, reflectivity=refl)
        self._actor_arrays = {k: np.concatenate([v, np.asarray(new[k], v.dtype)]) for k, v in self._actor_arrays.items()}
        self.actors.append(actor)
        self._refresh()
        return oid

    def _refresh(self) -> None:
        for key in ("classes", "ids", "paint", "reflectivity"):
            setattr(self, key, np.concatenate([self._base[key], self._actor_arrays[key]]))

    # ----------------------------------------------------------------------------- the ego
    def set_ego(self, x: float, y: float, yaw: float, speed: float) -> None:
        """Put the ego at centre ``x, y`` heading ``yaw`` moving at ``speed`` (m/s) and place its
        traffic row on ``ego_lanes`` (if set) for the IDM vehicles behind it."""
        size = self.vehicles.size[0]
        self.ego_box = np.array([x, y, size[2] / 2, *size, yaw], np.float64)
        self.ego_speed = float(speed)
        veh = self.vehicles
        veh.v[0] = speed
        if self.ego_lanes:
            lane, s, prev, nxt = self._project_on_lanes(np.array([x, y]))
            veh.lane[0], veh.s[0], veh.prev_lane[0], veh.next_lane[0] = lane, s, prev, nxt

    def _project_on_lanes(self, xy: np.ndarray) -> tuple[int, float, int, int]:
        roads, lanes = self.world.roads, self.ego_lanes
        best = (np.inf, 0, 0.0)
        for k, lane in enumerate(lanes):
            o, n = roads.lane_offset[lane], roads.lane_points[lane]
            pts = roads.points[o:o + n]
            d = np.einsum("ij,ij->i", pts - xy, pts - xy)
            i = int(np.argmin(d))
            if d[i] < best[0]:
                best = (float(d[i]), k, i * roads.lane_length[lane] / (n - 1))
        _, k, s = best
        lane = lanes[k]
        prev = lanes[k - 1] if k > 0 else -1
        if k + 1 < len(lanes):
            nxt = lanes[k + 1]
        elif roads.lane_kind[lane] == CONNECTOR:
            nxt = int(roads.conn_exit[lane])
        else:
            nxt = int(roads.options[lane][0])
        s = float(np.clip(s, 0.0, roads.lane_length[lane] - 1e-3))  # never past the end: IDM must not move it on
        return int(lane), s, int(prev), nxt

    # ----------------------------------------------------------------------------- dynamics
    def _tick(self, accel_override: np.ndarray | None = None) -> None:
        if self.accel_override is None:  # still in the base class's construction (warm-up)
            super()._tick(accel_override)
            return
        veh, roads = self.vehicles, self.world.roads
        gap, lead_v = gaps(veh, roads, self.lights.state(self.time))
        acc = idm_acceleration(veh, roads, gap, lead_v)
        override = self.accel_override if accel_override is None else \
            np.where(np.isfinite(accel_override), accel_override, self.accel_override)
        acc = np.where(np.isfinite(override), np.clip(override, -B_MAX, 4.0), acc)
        ego_v = veh.v[0]
        if self.ego_box is not None:  # the ego's row stands still; set_ego moves it
            acc[0], veh.v[0] = 0.0, 0.0
        advance(veh, roads, acc, self.cfg.dt, self.rng_traffic)
        if self.ego_box is not None:
            veh.v[0] = ego_v
        self.pedestrians.step(self.cfg.dt)
        for actor in self.actors:
            actor.step(self.cfg.dt)
        self.time += self.cfg.dt
        self.tick += 1

    def advance_tick(self, accel_override: np.ndarray | None = None) -> None:
        """One simulation tick (``cfg.dt``) without sensing; ``accel_override`` as in the base
        class's :meth:`Simulation.step` (per vehicle, NaN = IDM)."""
        self._tick(accel_override)

    def vehicle_path(self, index: int) -> list[int]:
        """The lanes vehicle ``index`` will drive: its lane, the next and (after a connector) the exit."""
        roads, veh = self.world.roads, self.vehicles
        lanes = [int(veh.lane[index]), int(veh.next_lane[index])]
        if roads.lane_kind[lanes[-1]] == CONNECTOR:
            lanes.append(int(roads.conn_exit[lanes[-1]]))
        return lanes

    # ----------------------------------------------------------------------------- state
    def object_boxes(self) -> tuple[np.ndarray, np.ndarray]:
        boxes, speeds = super().object_boxes()
        if self.ego_box is not None:
            boxes[0], speeds[0] = self.ego_box, self.ego_speed
        if not self.actors:
            return boxes, speeds
        extra = np.zeros((len(self.actors), 7))
        for k, a in enumerate(self.actors):
            xy, yaw = a.pose()
            on_curb = bool(self.world.ground.in_block(np.array([xy[0]]), np.array([xy[1]]))[0])
            extra[k] = [xy[0], xy[1], a.size[2] / 2 + (CURB_HEIGHT if on_curb else 0.0), *a.size, yaw]
        return np.concatenate([boxes, extra]), np.concatenate([speeds, [a.v for a in self.actors]])
