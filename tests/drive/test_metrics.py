import json
import math

import numpy as np
import pytest

from coperception.drive.footprints import footprints_overlap, time_to_collision
from coperception.drive.metrics import (
    EpisodeMonitor,
    EpisodeResult,
    Infraction,
    global_statistics,
    score_route,
    summarize,
)
from coperception.drive.records import Event, EventKind, Route, Tick, VehicleState
from coperception.structures.records import Frame, ObjectSet

STRAIGHT_200 = Route(np.array([[0.0, 0.0], [200.0, 0.0]]))


def _tick(t, x, y=0.0, speed=5.0, events=(), objects=None):
    frame = Frame("s", round(t * 10), "ego", {}, objects if objects is not None else ObjectSet.empty())
    return Tick(t, frame, VehicleState(x, y, 0.0, speed), list(events))


def _drive(monitor, x_stop, speed=10.0, dt=0.1, events_at=None):
    """Drive along +x at ``speed`` until x_stop; returns the time reached."""
    events_at = events_at or {}
    k, x = 0, 0.0
    while x < x_stop - 1e-9:
        k += 1
        x = min(x + speed * dt, x_stop)
        monitor.update(_tick(k * dt, x, speed=speed, events=events_at.get(k, ())))
    return k


def test_scripted_episode_hand_computed_scores():
    m = EpisodeMonitor(STRAIGHT_200, rate_hz=10)
    events = {10: [Event(EventKind.COLLISION_PEDESTRIAN, 1.0, "walker.7")],
              50: [Event(EventKind.COLLISION_VEHICLE, 5.0, "car.3")],
              80: [Event(EventKind.RED_LIGHT, 8.0, "light.1"),
                   Event(EventKind.OUTSIDE_ROUTE_LANES, 8.0, value=4.0)],
              90: [Event(EventKind.OUTSIDE_ROUTE_LANES, 9.0, value=6.0)]}
    k = _drive(m, 120.0, events_at=events)  # 60 % of the route
    assert not m.done and m.progress == pytest.approx(120.0)
    # Then it stands still until blocked (30 s below 0.5 m/s).
    while not m.done:
        k += 1
        m.update(_tick(k * 0.1, 120.0, speed=0.0))
    r = m.result("straight", 3, "ego_only", bytes_per_agent_tick=1234.0)
    assert r.status == "Failed - Agent got blocked"
    assert r.route_completion == 60.0
    # Off-lane: 10 m over the 120 m of route covered (the leaderboard's "% of the completed route").
    expected_is = 0.5 * 0.6 * 0.7 * (1 - (100 * 10 / 120) / 100)
    assert r.infraction_penalty == pytest.approx(expected_is)
    assert r.driving_score == pytest.approx(60.0 * expected_is)
    assert len(r.infractions["outside_route_lanes"]) == 1
    assert r.infractions["outside_route_lanes"][0].value == pytest.approx(10.0)
    assert [e.other for e in r.infractions["collisions_pedestrian"]] == ["walker.7"]
    assert len(r.infractions["vehicle_blocked"]) == 1 and m.events[-1].kind is EventKind.BLOCKED
    assert r.per_km() == pytest.approx(2 / 0.12)  # 2 collisions over 120 m
    assert r.per_km_leaderboard() == pytest.approx(2 / (60.0 * 200 / 1000))  # upstream: 100x smaller


def test_penalty_factors_each():
    for key, factor in [("collisions_pedestrian", 0.5), ("collisions_vehicle", 0.6), ("collisions_layout", 0.65),
                        ("red_light", 0.7), ("stop_infraction", 0.8)]:
        rc, pen, ds = score_route({key: [Infraction(1.0), Infraction(2.0)]}, 100.0, 40.0, False)
        assert (rc, pen, ds) == (40.0, pytest.approx(factor ** 2), pytest.approx(40.0 * factor ** 2))
    # Route deviation / blocked / timeout end a route but cost nothing.
    assert score_route({"route_dev": [Infraction(1.0)], "route_timeout": [Infraction(2.0)]}, 100.0, 100.0, True)[1] == 1.0


def test_completion_needs_99_percent_and_goal_within_10m():
    route = Route(np.array([[0.0, 0.0], [100.0, 0.0]]))
    m = EpisodeMonitor(route, rate_hz=10)
    _drive(m, 99.0)
    assert not m.done  # exactly 99 % is not > 99 %
    m.update(_tick(10.0, 99.2, speed=10.0))
    assert m.done and m.completed
    r = m.result("f", 0, "gt")
    assert (r.status, r.route_completion, r.driving_score) == ("Completed", 100.0, 100.0)


def test_timeout_is_0_8_s_per_metre_plus_8():
    route = Route(np.array([[0.0, 0.0], [100.0, 0.0]]))
    m = EpisodeMonitor(route, rate_hz=10)
    assert m.timeout == 88.0
    m.update(_tick(0.0, 0.0, speed=0.6))
    for k in range(1, 881):  # crawl at 0.6 m/s: neither blocked nor done by t = 88.0
        assert not m.update(_tick(k / 10, 0.06 * k, speed=0.6))
    assert m.update(_tick(88.1, 0.06 * 881, speed=0.6))
    assert m.result("f", 0, "gt").status == "Failed - Agent timed out"
    assert m.events[-1].kind is EventKind.TIMEOUT


def test_blocked_after_30s_below_half_a_metre_per_second():
    m = EpisodeMonitor(STRAIGHT_200, rate_hz=10)
    m.update(_tick(0.0, 0.0, speed=0.0))
    for k in range(1, 300):
        assert not m.update(_tick(k / 10, 0.0, speed=0.4)), k  # 29.9 s below threshold
    assert m.update(_tick(30.0, 0.0, speed=0.0))
    assert m.failure == "vehicle_blocked"
    # Moving resets the clock.
    m2 = EpisodeMonitor(STRAIGHT_200, rate_hz=10)
    for k in range(300):
        m2.update(_tick(k / 10, 0.0, speed=0.0))
    m2.update(_tick(30.0, 0.1, speed=1.0))
    assert not m2.update(_tick(59.9, 0.1, speed=0.0)) and m2.update(_tick(60.0, 0.1, speed=0.0))


def test_route_deviation_beyond_30m():
    m = EpisodeMonitor(STRAIGHT_200, rate_hz=10)
    assert not m.update(_tick(0.1, 5.0, y=29.0))
    assert m.update(_tick(0.2, 5.0, y=30.5))
    r = m.result("f", 0, "gt")
    assert r.status == "Failed - Agent deviated from the route" and len(r.infractions["route_dev"]) == 1


def test_progress_cannot_jump_to_a_nearby_later_part_of_the_route():
    # Out along y = 0, back along y = 5: a point at y = 3 projects onto the return leg (s ~ 190).
    route = Route(np.array([[0.0, 0.0], [100.0, 0.0], [100.0, 5.0], [0.0, 5.0]]))
    m = EpisodeMonitor(route, rate_hz=10)
    m.update(_tick(0.1, 10.0, y=0.0))
    m.update(_tick(0.2, 10.0, y=3.0))  # drove 3 m sideways
    assert route.project(np.array([10.0, 3.0]))[0] > 180
    assert m.progress <= 1.0 + 3.0 + 1.0 + 1e-9


def test_ttc_head_on_and_parallel_and_rear_end():
    ego = VehicleState(0.0, 0.0, 0.0, 10.0)  # 4.6 m long: front at x = 2.3
    oncoming = np.array([[2.3 + 30.0 + 2.3, 0.0, 0.8, 4.6, 1.9, 1.6, np.pi]])
    ttc = time_to_collision(ego, oncoming, np.array([[-10.0, 0.0]]))
    assert 1.5 - 1e-9 <= ttc <= 1.5 + 0.05 + 1e-9
    beside = oncoming.copy()
    beside[0, 1] = 3.5  # the next lane
    assert time_to_collision(ego, beside, np.array([[-10.0, 0.0]])) == math.inf
    lead = np.array([[2.3 + 20.0 + 2.3, 0.0, 0.8, 4.6, 1.9, 1.6, 0.0]])
    assert time_to_collision(ego, lead, np.zeros((1, 2))) == pytest.approx(2.0, abs=0.05 + 1e-9)
    assert time_to_collision(ego, lead, np.array([[10.0, 0.0]])) == math.inf  # same speed
    assert time_to_collision(ego, ego.box()[None], np.zeros((1, 2))) == 0.0
    assert time_to_collision(ego, np.zeros((0, 7)), np.zeros((0, 2))) == math.inf


def test_ttc_crossing_takes_the_earliest_object():
    ego = VehicleState(0.0, 0.0, 0.0, 10.0)
    # A pedestrian 20 m ahead (centre), 5 m to the left, walking right at 2.5 m/s: reaches the
    # ego's left side (y = 0.95 + 0.25) at t = (5 - 1.2) / 2.5 = 1.52 s, when the ego's front is at
    # 2.3 + 15.2 = 17.5 < 19.75 (no overlap yet); overlap starts when the front reaches 19.75, 1.745 s.
    ped = np.array([[20.0, 5.0, 0.9, 0.5, 0.5, 1.8, 0.0], [200.0, 0.0, 0.8, 4.6, 1.9, 1.6, 0.0]])
    ttc = time_to_collision(ego, ped, np.array([[0.0, -2.5], [0.0, 0.0]]))
    assert 1.745 - 1e-9 <= ttc <= 1.745 + 0.05


def test_footprints_overlap_rotated_is_exact_where_axis_aligned_bounds_are_not():
    a = np.array([0.0, 0.0, 0.0, 2.0, 2.0, 1.0, 0.0])
    b_far = np.array([1.9, 1.9, 0.0, 2.0, 2.0, 1.0, np.pi / 4])  # bounding boxes overlap, shapes do not
    b_near = np.array([1.6, 1.6, 0.0, 2.0, 2.0, 1.0, np.pi / 4])
    assert not footprints_overlap(a, b_far)
    assert footprints_overlap(a, b_near)
    out = footprints_overlap(a[None, None], np.stack([b_far, b_near])[None])
    assert out.shape == (1, 2) and out.tolist() == [[False, True]]
    with pytest.raises(ValueError, match="7"):
        footprints_overlap(np.zeros(6), a)


def _result(family="f", seed=0, perception="gt", rc=50.0, collisions=1, crashed="", ttc=math.inf):
    inf = {"collisions_vehicle": [Infraction(float(i), f"car.{i}") for i in range(collisions)]}
    rc_, pen, ds = score_route(inf, 200.0, rc * 2.0, rc == 100.0)
    return EpisodeResult(family, seed, perception, "Failed", rc_, pen, ds, 200.0, 30.0,
                         {**{k: [] for k in ("collisions_pedestrian", "collisions_layout")}, **inf},
                         min_ttc=ttc, bytes_per_agent_tick=100.0 * (seed + 1), crashed=crashed)


def test_json_round_trip_in_checkpoint_layout():
    r = _result(ttc=math.inf)
    d = json.loads(json.dumps(r.to_json()))
    assert set(d) == {"route_id", "status", "scores", "infractions", "meta"}
    assert d["scores"]["score_composed"] == pytest.approx(50.0 * 0.6)
    assert d["meta"]["route_length"] == 200.0 and d["meta"]["min_ttc"] is None
    back = EpisodeResult.from_json(d)
    assert back == EpisodeResult.from_json(json.loads(json.dumps(back.to_json())))
    assert back.min_ttc == math.inf and back.infractions["collisions_vehicle"][0].other == "car.0"
    assert back.driving_score == r.driving_score and back.seed == r.seed
    with pytest.raises(ValueError, match="meta"):
        EpisodeResult.from_json({"status": "x", "scores": {}})


def test_global_statistics_reproduces_the_per_km_quirk_and_the_corrected_rate():
    rs = [_result(rc=50.0, collisions=1), _result(seed=1, rc=100.0, collisions=2)]
    g = global_statistics(rs)
    assert g["scores"]["score_route"] == pytest.approx(75.0)
    assert g["scores"]["score_composed"] == pytest.approx((50 * 0.6 + 100 * 0.36) / 2)
    # Upstream: sum over routes of count / (score_route * length / 1000).
    assert g["infractions_per_km_leaderboard"]["collisions_vehicle"] == pytest.approx(1 / 10.0 + 2 / 20.0)
    # Corrected: 3 collisions over 0.1 + 0.2 km.
    assert g["infractions_per_km"]["collisions_vehicle"] == pytest.approx(3 / 0.3)
    assert g["status"] == "Failed" and len(g["exceptions"]) == 2


def test_summarize_groups_and_excludes_crashed():
    rs = [_result(seed=0, rc=40.0, ttc=2.0), _result(seed=1, rc=60.0, ttc=math.inf),
          _result(seed=2, rc=0.0, crashed="RuntimeError: boom"), _result(perception="late", seed=0)]
    rows = summarize(rs)
    assert [(r["perception"], r["family"], r["n"], r["crashed"]) for r in rows] == [("gt", "f", 3, 1), ("late", "f", 1, 0)]
    gt = rows[0]
    assert gt["rc_mean"] == pytest.approx(50.0) and gt["rc_std"] == pytest.approx(10.0)
    assert gt["ds_mean"] == pytest.approx(0.6 * 50.0)
    assert gt["min_ttc_mean"] == pytest.approx((2.0 + 10.0) / 2)  # inf clipped to the horizon
    assert gt["collisions_per_km_mean"] == pytest.approx((1 / 0.08 + 1 / 0.12) / 2)
    assert gt["bytes_per_agent_tick_mean"] == pytest.approx(150.0)


def test_monitor_takes_min_ttc_from_ground_truth_without_the_ego():
    m = EpisodeMonitor(STRAIGHT_200, rate_hz=10)
    # The ego's own box (same centre) and a stopped car 20 m between bumpers ahead.
    objs = ObjectSet(np.array([[0.0, 0.0, 0.8, 4.6, 1.9, 1.6, 0.0], [24.6, 0.0, 0.8, 4.6, 1.9, 1.6, 0.0]]),
                     [1, 2], [0, 0], [10.0, 0.0])
    m.update(_tick(0.1, 0.0, speed=10.0, objects=objs))
    assert m.min_ttc == pytest.approx(2.0, abs=0.051)
