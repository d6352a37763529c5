"""The embedded closed-loop backend: deterministic resets, the ego obeying its controls, and the
infraction checks (collisions once per contact, red lights, metres outside the route's lanes)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from embedded_drivers import follow

from coperception.drive.embedded import EmbeddedBackend, closed_loop_config, object_velocities
from coperception.drive.events import ContactTracker, LaneJudge, StopLines, boxes_overlap, mesh_boxes
from coperception.drive.records import Backend, Control, EventKind, Route
from coperception.errors import ConfigError
from coperception.sim.objects import CLASS_INDEX
from coperception.sim.raycast import box_mesh
from coperception.sim.roads import build_road_network

FAST = {"lidar": {"channels": 16, "firing_rate_hz": 3600.0}}  # 16 x 360 rays: events do not need more


@pytest.fixture(scope="module")
def backend():
    return EmbeddedBackend(closed_loop_config(FAST))


def _box(x, y, l, w, yaw):
    return np.array([x, y, 0.8, l, w, 1.6, yaw])


def test_boxes_overlap_hand_cases():
    a = np.stack([_box(0, 0, 4, 2, 0), _box(10, 0, 4, 2, 0)])
    b = np.stack([_box(3.9, 0, 4, 2, 0),            # 0.1 m overlap in x with a[0]
                  _box(4.0, 0, 4, 2, 0),            # touching a[0]: not an overlap
                  _box(0, 2.9, 2, 2, np.pi / 4),    # diamond reaching y = 2.9 - 1.414 = 1.49 > 1: clear
                  _box(0, 2.3, 2, 2, np.pi / 4)])   # reaching y = 0.89 < 1: overlaps a[0]
    got = boxes_overlap(a, b)
    np.testing.assert_array_equal(got, [[True, False, False, True], [False, False, False, False]])
    # A thin bar crossing the middle of a square, no corner inside the other: only SAT sees it.
    assert boxes_overlap(_box(0, 0, 2, 2, 0), _box(0, 0, 6, 0.2, np.pi / 4))[0, 0]
    with pytest.raises(ValueError, match="boxes"):
        boxes_overlap(np.zeros((2, 5)), a)


def test_mesh_boxes_recovers_the_boxes():
    boxes = np.array([[1.0, 2.0, 3.0, 4.0, 2.0, 6.0, 0.3], [-5.0, 0.0, 1.0, 0.3, 0.3, 2.0, 0.0]])
    mesh = box_mesh(boxes[:, :3], boxes[:, 3:6], boxes[:, 6])
    np.testing.assert_allclose(mesh_boxes(mesh), boxes, atol=1e-5)


def test_contact_tracker_reports_again_only_after_separation():
    t = ContactTracker()
    assert t.update({"a"}) == ["a"] and t.update({"a", "b"}) == ["b"] and t.update({"a"}) == []
    assert t.update(set()) == [] and t.update({"a", "b"}) == ["a", "b"]


def test_stop_line_and_lane_judge_on_the_grid(tiny_town):
    roads = build_road_network(tiny_town)
    lines = StopLines.of(roads)
    hs, lw = tiny_town.road_half_width, tiny_town.lane_width
    c = roads.centers[roads.junction_index((1, 1))]
    # Northbound in lane 1 (x = c + 5.25) across the south stop line at y = c - hs.
    crossed = lines.crossed(c + [1.5 * lw, -hs - 0.3], c + [1.5 * lw, -hs + 0.3])
    k = np.flatnonzero(crossed)
    assert len(k) == 1 and lines.junction[k[0]] == roads.junction_index((1, 1)) and lines.side[k[0]] == 2
    assert not lines.crossed(c + [1.5 * lw, -hs + 0.3], c + [1.5 * lw, -hs - 0.3]).any()  # leaving
    assert not lines.crossed(c + [-1.5 * lw, -hs - 0.3], c + [-1.5 * lw, -hs + 0.3]).any()  # wrong side
    judge = LaneJudge(roads)
    north = np.pi / 2
    assert not judge.outside(c + [1.5 * lw, -hs - 20], north)            # own lane
    assert judge.outside(c + [-0.5 * lw, -hs - 20], north)               # opposite lane
    assert judge.outside(c + [2 * lw + 1.0, -hs - 20], north)            # parking lane
    assert not judge.outside(c + [-0.5 * lw, 0.0], north)                # junctions are not judged


@pytest.fixture(scope="module")
def tiny_town():
    return closed_loop_config().town


def test_reset_is_deterministic_per_seed(backend):
    assert isinstance(backend, Backend)
    other = EmbeddedBackend(closed_loop_config(FAST))
    info1, t1 = backend.reset("occluded_crossing", 3)
    t1 = backend.step({})
    info2, t2 = other.reset("occluded_crossing", 3)
    t2 = other.step({})
    np.testing.assert_array_equal(info1.route.waypoints, info2.route.waypoints)
    np.testing.assert_array_equal(t1.frame.objects.boxes, t2.frame.objects.boxes)
    np.testing.assert_array_equal(t1.frame.ego.points, t2.frame.ego.points)
    assert t1.ego == t2.ego and info1.collaborators == info2.collaborators
    info3, t3 = other.reset("occluded_crossing", 4)
    assert not np.array_equal(info3.route.waypoints, info1.route.waypoints) or t3.ego != t1.ego


@pytest.mark.parametrize("rate", [10.0, 20.0])
def test_ego_follows_its_control(rate):
    b = EmbeddedBackend(closed_loop_config(FAST), rate_hz=rate)
    info, tick = b.reset("occluded_crossing", 0)
    ego_id = tick.frame.ego_id
    start, v0 = tick.ego, tick.ego.speed
    for k in range(int(rate)):  # 1 s straight at constant speed
        tick = b.step({ego_id: Control(0.0, 0.0)})
        assert tick.time == pytest.approx((k + 1) / rate)
    moved = tick.ego.xy - start.xy
    assert np.linalg.norm(moved) == pytest.approx(v0 * 1.0, rel=1e-9)
    assert np.arctan2(moved[1], moved[0]) == pytest.approx(start.yaw, abs=1e-9)
    for _ in range(int(rate)):  # then 1 s at +1 m/s^2: v0 + 1 m/s, v0 + 0.5 m further
        tick = b.step({ego_id: Control(1.0, 0.0)})
    assert tick.ego.speed == pytest.approx(v0 + 1.0)
    assert np.linalg.norm(tick.ego.xy - start.xy) == pytest.approx(2 * v0 + 0.5, rel=1e-9)
    # The ground truth and the ego's own LiDAR pose follow the driven ego.
    row = np.flatnonzero(tick.frame.objects.ids == int(ego_id))[0]
    np.testing.assert_allclose(tick.frame.objects.boxes[row, :2], tick.ego.xy)
    np.testing.assert_allclose(tick.frame.ego.world_from_lidar[:2, 3], tick.ego.xy)


def test_bad_arguments_and_configs(backend):
    with pytest.raises(ConfigError, match="unknown 'nope'.*occluded_crossing"):
        backend.reset("nope", 0)
    with pytest.raises(ConfigError, match="frame_interval"):
        EmbeddedBackend(closed_loop_config(FAST), rate_hz=7.0)
    small = closed_loop_config({**FAST, "town": {"roads_x": 2, "roads_y": 2}, "traffic": {"vehicles": 4}})
    with pytest.raises(ConfigError, match="4 legs.*2x2"):
        EmbeddedBackend(small).reset("signal_junction_crossing", 0)
    short = closed_loop_config({**FAST, "town": {"block_size": 60.0}, "traffic": {"vehicles": 4}})
    with pytest.raises(ConfigError, match="block_size"):
        EmbeddedBackend(short).reset("cut_in", 0)
    _, tick = backend.reset("cut_in", 0)
    with pytest.raises(ValueError, match="unknown agent id 'ghost'"):
        backend.step({"ghost": Control()})
    with pytest.raises(ValueError, match="road-side unit"):
        backend.step({"-1": Control()})


def test_driving_into_a_parked_truck_is_one_vehicle_collision(backend):
    info, tick = backend.reset("occluded_crossing", 0)
    truck = backend.scenario.actor_ids["occluder"]
    yaw = tick.ego.yaw
    # The route moved 2.5 m to the right runs through the truck parked at the curb.
    shifted = Route(info.route.waypoints + 2.5 * np.array([np.sin(yaw), -np.cos(yaw)]))
    events, overlapping = [], 0
    for _ in range(80):
        tick = backend.step({tick.frame.ego_id: follow(shifted, tick.ego, 8.0, 8.0)})
        events += tick.events
        objs = tick.frame.objects
        row = np.flatnonzero(objs.ids == truck)[0]
        overlapping += bool(boxes_overlap(tick.ego.box(), objs.boxes[row])[0, 0])
    hits = [e for e in events if e.kind is EventKind.COLLISION_VEHICLE and e.other == str(truck)]
    assert overlapping >= 5 and len(hits) == 1
    assert hits[0].xy == pytest.approx(tuple(hits[0].xy)) and hits[0].time > 0


def test_metres_outside_the_route_lanes_in_the_opposite_lane(backend):
    info, tick = backend.reset("cut_in", 1)
    yaw, lane_width = tick.ego.yaw, backend.base.town.lane_width
    left = np.array([-np.sin(yaw), np.cos(yaw)])
    # Two lanes to the left of the ego's (outer) lane is the inner lane of the opposite direction.
    wrong_way = Route(info.route.waypoints + 2 * lane_width * left)
    centre_line = info.route.waypoints[0] + 1.5 * lane_width * left  # a on the ego's road (2 lanes)
    steady = []
    for _ in range(55):
        prev = tick.ego
        tick = backend.step({tick.frame.ego_id: follow(wrong_way, tick.ego, 8.0, 8.0)})
        metres = sum(e.value for e in tick.events if e.kind is EventKind.OUTSIDE_ROUTE_LANES)
        offsets = [float((p.xy - centre_line) @ left) for p in (prev, tick.ego)]
        if min(offsets) > 0.3 and abs(tick.ego.yaw - yaw) < 0.02:  # settled well inside the opposite lane
            steady.append((metres, float(np.linalg.norm(tick.ego.xy - prev.xy))))
        if max(offsets) < -lane_width:  # still in its own lane: nothing counted
            assert metres == 0.0
    assert len(steady) >= 10
    np.testing.assert_allclose(*zip(*steady), rtol=1e-4)  # sub-tick chords of a near-straight path


@pytest.mark.parametrize("light", ["red", "green"])
def test_red_light_is_reported_once_when_the_ego_crosses_on_red(backend, light):
    info, tick = backend.reset("signal_junction_crossing", 2)
    sim, jid = backend.scenario.sim, backend.scenario.sim.population.ego_junction
    sim.lights.force(jid, sim.population.ego_side, light, sim.time)
    stop = info.route.waypoints[np.argmin(np.linalg.norm(info.route.waypoints - tick.signals[0, :2], axis=1))]
    s_stop = info.route.project(stop)[0]
    reds, crossing = [], None
    for _ in range(80):
        prev = tick.ego
        tick = backend.step({tick.frame.ego_id: Control(0.0, 0.0)})
        if len(tick.signals):
            assert tick.signals[0, 2] == (1.0 if light == "red" else 0.0)
        reds += [e for e in tick.events if e.kind is EventKind.RED_LIGHT]
        if info.route.project(prev.xy)[0] < s_stop <= info.route.project(tick.ego.xy)[0]:
            crossing = tick.time
    assert crossing is not None and len(tick.signals) == 0  # the stop line is behind the ego now
    if light == "green":
        assert reds == []
    else:
        assert len(reds) == 1 and reds[0].other == f"junction:{jid}"
        assert crossing - 0.1 < reds[0].time <= crossing + 1e-9


def test_ground_truth_velocities_match_the_motion(backend):
    _, tick = backend.reset("occluded_crossing", 0)
    actor = backend.scenario.actor_ids["crossing"]
    for _ in range(75):  # it has reached its crossing speed by then
        prev, tick = tick, backend.step({})
    rows = [np.flatnonzero(t.frame.objects.ids == actor)[0] for t in (prev, tick)]
    moved = tick.frame.objects.boxes[rows[1], :2] - prev.frame.objects.boxes[rows[0], :2]
    assert np.linalg.norm(moved) > 0.1  # it is crossing by now
    np.testing.assert_allclose(tick.velocities[rows[1]], moved / 0.1, atol=1e-6)
    np.testing.assert_array_equal(backend.object_velocities(), tick.velocities)
    np.testing.assert_array_equal(object_velocities(tick.frame.objects), tick.velocities)
    assert tick.frame.objects.classes[rows[1]] in (CLASS_INDEX["pedestrian"], CLASS_INDEX["cyclist"])


def test_traffic_behind_the_ego_follows_it_and_stops(tiny_town):
    from coperception.drive.dynamics import step_bicycle
    from coperception.drive.records import VehicleState
    from coperception.sim.config import AgentsConfig, Placement
    from coperception.sim.driven import DrivenSimulation
    agents = AgentsConfig(cavs=1, rsus=0, ego_junction=(1, 1), ego_light="green", placements=(
        Placement("ego", "car", "S", 1, 25.0, (1, 1), 8.0, "straight"),
        Placement("npc", "car", "S", 1, 38.0, (1, 1), 8.0, "straight")))
    cfg = replace(closed_loop_config({**FAST, "traffic": {"vehicles": 0, "cyclists": 0}}), agents=agents)
    sim = DrivenSimulation(cfg, seed=0)
    sim.ego_lanes = sim.vehicle_path(0)
    x, y, _, length, width, _, yaw = sim.vehicles.boxes(sim.world.roads)[0]
    ego = VehicleState(x, y, yaw, 8.0, length, width)
    for _ in range(240):  # the ego brakes to a stop at 3 m/s^2 and stays there
        ego = step_bicycle(ego, Control(-3.0, 0.0), sim.cfg.dt)
        sim.set_ego(ego.x, ego.y, ego.yaw, ego.speed)
        sim.advance_tick()
        boxes, speeds = sim.object_boxes()
        assert not boxes_overlap(boxes[0], boxes[1])[0, 0]
    gap = np.linalg.norm(boxes[1, :2] - boxes[0, :2]) - (boxes[0, 3] + boxes[1, 3]) / 2
    assert speeds[0] == 0.0 and speeds[1] < 0.05 and 1.0 < gap < 4.0  # IDM's standstill gap s0 = 2 m


def test_driven_simulation_left_alone_is_the_base_simulation(tiny_town):
    from coperception.sim.driven import DrivenSimulation
    from coperception.sim.simulation import Simulation
    cfg = closed_loop_config({**FAST, "warmup": 0.5})
    base, driven = Simulation(cfg, seed=5), DrivenSimulation(cfg, seed=5)
    for _ in range(3):
        a, b = base.step(), driven.step()
        np.testing.assert_array_equal(a.objects.boxes, b.objects.boxes)
        np.testing.assert_array_equal(a.ego.points, b.ego.points)
