"""Closed-loop scenario families of the embedded simulator, modelled on the CARLA scenario runner's
NHTSA pre-crash typology as V2Xverse uses it (occlusion makes each one dangerous without help):

* ``occluded_crossing`` (S3, DynamicObjectCrossing): a pedestrian or cyclist steps out from behind
  a parked truck or bus on the ego's side; the road-side unit on the junction corner ahead and an
  oncoming connected car see it waiting.
* ``signal_junction_crossing`` (S7): the ego crosses a signalised junction on green; a car hidden
  by the corner building runs the red light from the right or the left.
* ``unsignalized_junction`` (S10): the same crossing without lights; the hidden car comes from
  the right and has priority.
* ``unprotected_left`` (S8): the ego turns left across oncoming traffic hidden by an oncoming truck
  queued to turn left (the junction runs without lights for the ego: the embedded town gives each
  leg its own green, so opposing flows never share one).
* ``vehicle_turning`` (S4): the ego turns right or left; a pedestrian or cyclist hidden by the
  corner building crosses the exit leg.
* ``cut_in`` (S2 variant): a car in the adjacent lane cuts in close ahead of the ego and brakes.

Every family takes a seed (ego leg, distances, speeds, actor kinds; equal seeds build equal
scenarios), puts the scenario at the town's central junction, clears the background traffic
around it, and builds the ego's route along lane centres through its junction movement.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

from coperception.drive.records import Route, VehicleState
from coperception.drive.scenario_kit import (
    JunctionFrame,
    Trigger,
    build_route,
    clear_around,
    clear_parked,
    four_leg_junction,
    hold,
    lanes_polyline,
    need_segment,
    polyline_crossing,
    validate_route,
)
from coperception.errors import ConfigError
from coperception.sim.config import AgentsConfig, Placement, RsuPlacement, SimConfig
from coperception.sim.driven import DrivenSimulation, PathActor
from coperception.sim.objects import CLASS_INDEX, sample_sizes

_CORNER_BUILDINGS = dict(building_fill=1.0, building_setback=(0.0, 0.4), building_lots=(2, 3))
_EXIT_LENGTH = 30.0  # m of the exit lane the route runs into


@dataclass
class Scenario:
    """A scenario built in its simulation: the ego's route and lanes, the collaborators' agent ids,
    junctions without lights (for the ego), the scripted actors' triggers and object ids."""

    family: str
    seed: int
    sim: DrivenSimulation
    route: Route
    route_lanes: list[int]
    collaborators: tuple[str, ...]
    unsignalised: frozenset[int]
    triggers: list[Trigger]
    actor_ids: dict[str, int]

    def update(self, ego: VehicleState) -> None:
        """Fire the scripted actors' triggers for the ego's current state (call once per tick)."""
        ego_s = self.route.project(ego.xy)[0]
        for t in self.triggers:
            t.update(self.sim, ego, ego_s)


@dataclass
class _Layout:
    """What a family decides before the simulation exists, and its set-up once it does."""

    frame: JunctionFrame
    placements: tuple[Placement, ...]
    rsu_corners: tuple[tuple[int, int], ...]
    setup: Callable[[DrivenSimulation, Route, np.random.Generator], tuple[list[Trigger], dict[str, int]]]
    unsignalised: bool = False


def _assemble(family: str, seed: int, base: SimConfig, layout: _Layout, rng: np.random.Generator,
              threads: int) -> Scenario:
    f = layout.frame
    lights = replace(base.traffic.lights, green=max(base.traffic.lights.green, 25.0))
    cavs = 1 + sum(p.role == "cav" for p in layout.placements)
    config = replace(
        base, town=replace(base.town, **_CORNER_BUILDINGS), traffic=replace(base.traffic, lights=lights),
        agents=AgentsConfig(cavs=cavs, rsus=len(layout.rsu_corners), ego_junction=f.grid, ego_light="green",
                            placements=layout.placements,
                            rsu_placements=tuple(RsuPlacement(f.corner(*c), f.grid) for c in layout.rsu_corners)))
    config.validate()
    sim = DrivenSimulation(config, seed, name=f"{family}_{seed:04d}", threads=threads)
    roads = sim.world.roads
    clear_around(sim, f.center, 0.95 * base.town.block_size, protected=cavs + sum(
        p.role == "npc" for p in layout.placements))
    lanes = sim.vehicle_path(0)
    sim.ego_lanes = lanes
    route = build_route(roads, lanes, float(sim.vehicles.s[0]), _EXIT_LENGTH)
    validate_route(route, roads)
    triggers, actor_ids = layout.setup(sim, route, rng)
    x, y, _, _, _, _, yaw = sim.vehicles.boxes(roads)[0]
    sim.set_ego(x, y, yaw, float(sim.vehicles.v[0]))
    jid = roads.junction_index(f.grid)
    return Scenario(family, seed, sim, route, lanes, tuple(a.agent_id for a in sim.agents[1:]),
                    frozenset([jid]) if layout.unsignalised else frozenset(), triggers, actor_ids)


def _ego(lane: int, distance: float, movement: str, speed: float, f: JunctionFrame) -> Placement:
    return Placement("ego", "car", f.leg("back"), lane, distance, f.grid, speed, movement)


def _crosser(sim: DrivenSimulation, walker: bool, path: np.ndarray, rng: np.random.Generator) -> tuple[PathActor, int]:
    cls = CLASS_INDEX["pedestrian" if walker else "cyclist"]
    size = sample_sizes(np.array([cls]), rng)[0]
    speed, accel = (rng.uniform(1.4, 2.0), 4.0) if walker else (rng.uniform(3.5, 4.5), 2.5)
    actor = PathActor(cls, size, np.asarray(path), v_target=speed, accel=accel)
    return actor, sim.add_actor(actor)


def _zone(f: JunctionFrame, a: float, b: float, length: float, width: float) -> np.ndarray:
    """A (1, 7) box in the junction frame, ``length`` along the ego's forward direction."""
    xy = f.world(a, b)
    return np.array([[xy[0], xy[1], 1.0, length, width, 2.0, f.yaw(0.0, 1.0)]])


def _actor_trigger(route: Route, actor: PathActor, **kw) -> Trigger:
    route_s, actor_s = polyline_crossing(route.waypoints, actor.path)
    return Trigger(route_s, actor_s, actor.v_target, actor.accel, actor=actor, **kw)


def _vehicle_trigger(sim: DrivenSimulation, route: Route, index: int, v_target: float, **kw) -> Trigger:
    lanes = sim.vehicle_path(index)
    route_s, actor_s = polyline_crossing(route.waypoints, lanes_polyline(sim.world.roads, lanes))
    return Trigger(route_s, actor_s, v_target, 3.0, vehicle=index, vehicle_lanes=lanes, **kw)


def _turn_zone(sim: DrivenSimulation, route: Route) -> tuple[float, float, float]:
    """Route arcs where the ego's connector (a turn) runs, and its curve speed."""
    roads, conn = sim.world.roads, sim.ego_lanes[1]
    pts = roads.points[roads.lane_offset[conn]:roads.lane_offset[conn] + roads.lane_points[conn]]
    return route.project(pts[0])[0], route.project(pts[-1])[0], float(roads.turn_speed[conn])


# ----------------------------------------------------------------------------------- families
def occluded_crossing(base: SimConfig, seed: int, threads: int = 0) -> Scenario:
    town = base.town
    need_segment(town, 66.0, "occluded_crossing")
    if town.parking_width < 2.4 or town.sidewalk_width < 2.0:
        raise ConfigError(f"town.parking_width/sidewalk_width: occluded_crossing parks a truck at the curb and "
                          f"starts a walker on the sidewalk; need >= 2.4 / 2.0 m, got {town.parking_width} / "
                          f"{town.sidewalk_width}")
    rng = np.random.default_rng([seed, 1])
    f = four_leg_junction(town, int(rng.integers(4)))
    L, lw, hs = town.lanes_per_direction, town.lane_width, town.road_half_width
    gap = rng.uniform(10.0, 14.0)  # occluder's front to the junction edge (m)
    heavy, walker = ("truck", "bus")[int(rng.integers(2))], bool(rng.random() < 0.5)
    placements = (_ego(L - 1, rng.uniform(50.0, 60.0), "straight", rng.uniform(7.0, 9.0), f),
                  Placement("cav", "car", f.leg("ahead"), 0, rng.uniform(12.0, 20.0), f.grid, None, "straight"),
                  Placement("cav", "car", f.leg("right"), 0, rng.uniform(5.0, 15.0), f.grid, None, None))

    def setup(sim, route, rng):
        park_a = L * lw + town.parking_width / 2
        cls = CLASS_INDEX[heavy]
        size = sample_sizes(np.array([cls]), rng)[0]
        b0 = -(hs + gap + size[0] / 2)
        occluder = PathActor(cls, size, np.stack([f.world(park_a, b0), f.world(park_a, b0 + 0.01)]))
        occluder_id = sim.add_actor(occluder)
        b_cross = -(hs + gap) + 0.9  # just past the occluder's front
        actor, actor_id = _crosser(sim, walker, np.stack([f.world(hs + 1.5, b_cross), f.world(-(hs + 1.5), b_cross)]),
                                   rng)
        clear_parked(sim, np.concatenate([_zone(f, park_a, b0 + 1.5, size[0] + 7.0, town.parking_width),
                                          _zone(f, -park_a, b_cross, 6.0, town.parking_width)]))
        return [_actor_trigger(route, actor)], {"occluder": occluder_id, "crossing": actor_id}

    return _assemble("occluded_crossing", seed, base, _Layout(f, placements, ((1, -1),), setup), rng, threads)


def _crossing_family(family: str, base: SimConfig, seed: int, threads: int, unsignalised: bool) -> Scenario:
    town = base.town
    need_segment(town, 61.0, family)
    rng = np.random.default_rng([seed, 2 if unsignalised else 3])
    f = four_leg_junction(town, int(rng.integers(4)))
    L = town.lanes_per_direction
    side = "right" if unsignalised or rng.random() < 0.5 else "left"
    k_runner = int(rng.integers(L))
    ego = _ego(int(rng.integers(L)), rng.uniform(45.0, 55.0), "straight", rng.uniform(7.0, 9.0), f)
    queued = (Placement("cav", "car", f.leg(side), L - 1 - k_runner, 1.0, f.grid, 0.0, "straight") if L > 1 else
              Placement("cav", "car", f.leg("left" if side == "right" else "right"), 0, 1.0, f.grid, 0.0, None))
    runner = Placement("npc", "car", f.leg(side), k_runner, rng.uniform(20.0, 28.0), f.grid, 0.0, "straight")
    placements = (ego, queued, Placement("cav", "car", f.leg("ahead"), 0, 2.0, f.grid, 0.0, None), runner)
    v_runner = rng.uniform(8.0, 10.0) if unsignalised else rng.uniform(9.0, 12.0)
    corner = (1, 1) if side == "right" else (-1, -1)  # the corner beside the runner's lanes

    def setup(sim, route, rng):
        index = sim.population.n_cavs  # the first (only) placed background vehicle
        return [_vehicle_trigger(sim, route, index, v_runner)], {"runner": int(sim.ids[index])}

    return _assemble(family, seed, base, _Layout(f, placements, (corner,), setup, unsignalised), rng, threads)


def signal_junction_crossing(base: SimConfig, seed: int, threads: int = 0) -> Scenario:
    return _crossing_family("signal_junction_crossing", base, seed, threads, unsignalised=False)


def unsignalized_junction(base: SimConfig, seed: int, threads: int = 0) -> Scenario:
    return _crossing_family("unsignalized_junction", base, seed, threads, unsignalised=True)


def unprotected_left(base: SimConfig, seed: int, threads: int = 0) -> Scenario:
    town = base.town
    need_segment(town, 50.0, "unprotected_left")
    L = town.lanes_per_direction
    if L < 2:
        raise ConfigError("town.lanes_per_direction: unprotected_left needs 2 lanes (a queued truck beside "
                          "the oncoming car), got 1")
    rng = np.random.default_rng([seed, 4])
    f = four_leg_junction(town, int(rng.integers(4)))
    placements = (_ego(0, rng.uniform(25.0, 35.0), "left", rng.uniform(5.0, 7.0), f),
                  Placement("cav", "car", f.leg("right"), 0, 2.0, f.grid, 0.0, None),
                  Placement("cav", "car", f.leg("left"), 1, 10.0, f.grid, 0.0, None),
                  Placement("npc", "truck", f.leg("ahead"), 0, 1.0, f.grid, 0.0, "left"),
                  Placement("npc", "car", f.leg("ahead"), L - 1, rng.uniform(25.0, 35.0), f.grid, 0.0, "straight"))
    v_oncoming = rng.uniform(8.0, 10.0)

    def setup(sim, route, rng):
        truck, oncoming = sim.population.n_cavs, sim.population.n_cavs + 1
        hold(sim, truck)
        trig = _vehicle_trigger(sim, route, oncoming, v_oncoming, slow_zone=_turn_zone(sim, route))
        return [trig], {"occluder": int(sim.ids[truck]), "oncoming": int(sim.ids[oncoming])}

    return _assemble("unprotected_left", seed, base, _Layout(f, placements, ((-1, 1),), setup, True), rng, threads)


def vehicle_turning(base: SimConfig, seed: int, threads: int = 0) -> Scenario:
    town = base.town
    need_segment(town, 45.0, "vehicle_turning")
    rng = np.random.default_rng([seed, 5])
    f = four_leg_junction(town, int(rng.integers(4)))
    L, hs = town.lanes_per_direction, town.road_half_width
    turn = ("right", "left")[int(rng.integers(2))]
    sign = 1 if turn == "right" else -1
    walker, past = bool(rng.random() < 0.5), rng.uniform(5.0, 7.0)
    placements = (_ego(L - 1 if turn == "right" else 0, rng.uniform(25.0, 35.0), turn, rng.uniform(5.0, 7.0), f),
                  Placement("cav", "car", f.leg("ahead"), 0, 10.0, f.grid, 0.0, None),
                  Placement("cav", "car", f.leg("left" if turn == "right" else "right"), 0, 2.0, f.grid, 0.0, None))

    def setup(sim, route, rng):
        a = sign * (hs + past)
        actor, actor_id = _crosser(sim, walker, np.stack([f.world(a, -(hs + 1.5)), f.world(a, hs + 1.5)]), rng)
        # It comes along the near sidewalk, hidden by the corner building, and starts about 7 s
        # before the ego (driving in) would reach its path.
        along = max(6.0, 7.0 * actor.v_target - (hs + 1.5))
        actor.path = np.stack([f.world(a + sign * along, -(hs + 1.5)), f.world(a, -(hs + 1.5)), f.world(a, hs + 1.5)])
        actor.__post_init__()
        clear_parked(sim, _zone(f, a, 0.0, 2 * hs + 2.0, 4.0))
        trig = _actor_trigger(route, actor, slow_zone=_turn_zone(sim, route))
        trig.sync_until = trig.actor_s - (along + 1.5)  # adapts its pace until it steps off the curb
        return [trig], {"crossing": actor_id}

    return _assemble("vehicle_turning", seed, base, _Layout(f, placements, ((sign, -1),), setup), rng, threads)


def cut_in(base: SimConfig, seed: int, threads: int = 0) -> Scenario:
    town = base.town
    need_segment(town, 66.0, "cut_in")
    L, lw, hs = town.lanes_per_direction, town.lane_width, town.road_half_width
    if L < 2:
        raise ConfigError("town.lanes_per_direction: cut_in needs an adjacent lane, got 1 lane per direction")
    rng = np.random.default_rng([seed, 6])
    f = four_leg_junction(town, int(rng.integers(4)))
    v0, d_ego = rng.uniform(7.0, 9.0), min(rng.uniform(55.0, 60.0), town.segment_length - 6.0)
    placements = (_ego(L - 1, d_ego, "straight", v0, f),
                  Placement("cav", "car", f.leg("ahead"), 0, 5.0, f.grid, 0.0, None))
    gap, merge = rng.uniform(12.0, 16.0), rng.uniform(12.0, 16.0)

    def setup(sim, route, rng):
        a_ego, a_adj = (L - 0.5) * lw, (L - 1.5) * lw
        b = -(hs + d_ego + sim.vehicles.size[0, 0] / 2) + gap
        u = np.linspace(0.0, 1.0, 15)
        shift = np.stack([a_adj + (a_ego - a_adj) * (1 - np.cos(np.pi * u)) / 2, b + 6.0 + merge * u], 1)
        local = np.vstack([[a_adj, b], shift, [a_ego, hs + 30.0]])
        path = np.stack([f.world(p, q) for p, q in local])
        size = sample_sizes(np.array([CLASS_INDEX["car"]]), rng)[0]
        actor = PathActor(CLASS_INDEX["car"], size, path, v=v0, v_target=v0, accel=2.0, started=True)
        actor.stages = [(6.0 + merge, rng.uniform(1.0, 3.0), 4.0)]
        return [], {"cut_in": sim.add_actor(actor)}

    return _assemble("cut_in", seed, base, _Layout(f, placements, ((1, -1),), setup), rng, threads)


#: Every scenario family by name: ``FAMILIES[name](base_config, seed, threads) -> Scenario``.
FAMILIES: dict[str, Callable[..., Scenario]] = {
    "occluded_crossing": occluded_crossing,
    "signal_junction_crossing": signal_junction_crossing,
    "unsignalized_junction": unsignalized_junction,
    "unprotected_left": unprotected_left,
    "vehicle_turning": vehicle_turning,
    "cut_in": cut_in,
}


def build_scenario(family: str, base: SimConfig, seed: int, threads: int = 0) -> Scenario:
    """Build ``family`` with ``seed`` on top of ``base`` (town, traffic, sensors); ConfigError for
    an unknown family or a town the family cannot be laid out in."""
    if family not in FAMILIES:
        raise ConfigError(f"scenario family: unknown {family!r}; known: {sorted(FAMILIES)}")
    return FAMILIES[family](base, int(seed), threads)
