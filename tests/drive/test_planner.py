import numpy as np
import pytest

from coperception.drive.control import SpeedPID
from coperception.drive.dynamics import step_bicycle
from coperception.drive.footprints import footprints_overlap
from coperception.drive.planner import PlannerConfig, SpeedPlanner
from coperception.drive.records import Control, Route, VehicleState
from coperception.errors import ConfigError

ROUTE = Route(np.array([[0.0, 0.0], [300.0, 0.0]]))
CAR, PED = 0, 4


def _car(x, y=0.0, yaw=0.0):
    return np.array([x, y, 0.8, 4.6, 1.9, 1.6, yaw])


def _ped(x, y):
    return np.array([x, y, 0.9, 0.5, 0.5, 1.8, 0.0])


def _run(objects, seconds, ego=None, signals=lambda t: None, dt=0.1):
    """Closed loop on the straight route: ``objects(t) -> (boxes, velocities, labels)``.
    Returns the ego states, plans and object boxes at each step."""
    planner, pid = SpeedPlanner(ROUTE), SpeedPID()
    s = ego or VehicleState(0.0, 0.0, 0.0, 8.0)
    states, plans, seen = [], [], []
    for k in range(round(seconds / dt)):
        boxes, vel, labels = objects(k * dt)
        plan = planner.plan(s, boxes, vel, labels, signals(k * dt))
        a = plan.accel if plan.reason == "emergency" else pid.accel(plan.target_speed, s.speed, dt, upper=plan.accel)
        s = step_bicycle(s, Control(a, 0.0), dt)
        states.append(s), plans.append(plan), seen.append(objects((k + 1) * dt)[0])
    return states, plans, seen


def _collided(states, seen):
    return any(footprints_overlap(st.box()[None], b).any() for st, b in zip(states, seen) if len(b))


def test_stops_behind_a_stationary_object_at_the_min_gap():
    parked = lambda t: (_car(60.0)[None], np.zeros((1, 2)), [CAR])
    states, plans, seen = _run(parked, 25.0)
    final = states[-1]
    gap = (60.0 - 2.3) - (final.x + 2.3)
    assert final.speed == 0.0
    assert 4.0 - 0.5 <= gap <= 4.0 + 1.5
    assert not _collided(states, seen)
    assert "follow" in {p.reason for p in plans} and plans[0].reason == "cruise"


def test_follows_a_slower_lead_at_about_the_time_gap():
    lead = lambda t: (_car(40.0 + 5.0 * t)[None], np.array([[5.0, 0.0]]), [CAR])
    states, plans, seen = _run(lead, 40.0)
    gaps = np.array([(40.0 + 5.0 * (k + 1) * 0.1 - 2.3) - (s.x + 2.3) for k, s in enumerate(states)])
    speeds = np.array([s.speed for s in states])
    assert abs(speeds[-1] - 5.0) < 0.1
    time_gap = (gaps[-1] - 4.0) / speeds[-1]
    assert 1.3 < time_gap < 1.7
    assert plans[-1].reason == "follow" and not _collided(states, seen)


def test_yields_to_a_pedestrian_predicted_to_enter_and_then_goes():
    def walker(t):  # crosses the road at x = 25 from y = -4 at 1.5 m/s
        return _ped(25.0, -4.0 + 1.5 * t)[None], np.array([[0.0, 1.5]]), [PED]
    planner = SpeedPlanner(ROUTE)
    first = planner.plan(VehicleState(0.0, 0.0, 0.0, 8.0), *walker(0.0))
    assert first.reason == "yield" and first.accel < -1.0
    assert first.gap == pytest.approx(25.0 - 1.25 - 2.3, abs=0.6)  # where the inflated pedestrian enters
    states, _, seen = _run(walker, 20.0)
    assert not _collided(states, seen)
    assert states[-1].x > 40.0  # passed once the way was clear
    # The same pedestrian walking along the kerb never enters: the ego cruises.
    kerb = lambda t: (_ped(25.0 + 1.5 * t, -4.0)[None], np.array([[1.5, 0.0]]), [PED])
    assert planner.plan(VehicleState(0.0, 0.0, 0.0, 8.0), *kerb(0.0)).reason == "cruise"


def test_ignores_a_car_parked_beside_the_lane_but_not_a_pedestrian_there():
    planner = SpeedPlanner(ROUTE)
    ego = VehicleState(0.0, 0.0, 0.0, 6.0)
    plan = planner.plan(ego, _car(20.0, y=2.5)[None], np.zeros((1, 2)), [CAR])
    assert plan.reason == "cruise" and plan.accel == pytest.approx(2.0 * (1 - (6 / 8) ** 4))
    # At 2.0 m from the lane centre a car (0.5 m margin) stays clear, a pedestrian (1.0 m) does not.
    assert planner.plan(ego, _car(20.0, y=2.9)[None], np.zeros((1, 2)), [CAR]).reason == "cruise"
    assert planner.plan(ego, _ped(20.0, 2.1)[None], np.zeros((1, 2)), [PED]).reason == "follow"
    assert planner.plan(ego, _ped(20.0, 2.3)[None], np.zeros((1, 2)), [PED]).reason == "cruise"


def test_objects_behind_are_ignored():
    plan = SpeedPlanner(ROUTE).plan(VehicleState(50.0, 0.0, 0.0, 8.0), _car(40.0)[None], np.array([[12.0, 0.0]]), [CAR])
    assert plan.reason == "cruise"


def test_stops_for_a_red_light_and_goes_on_green():
    line = 50.0
    signals = lambda t: np.array([[line, 0.0, 1.0 if t < 20.0 else 0.0]])
    states, plans, _ = _run(lambda t: (np.zeros((0, 7)), np.zeros((0, 2)), []), 30.0, signals=signals)
    at_red = states[int(19.9 / 0.1)]
    assert at_red.speed == 0.0 and line - 3.0 <= at_red.x + 2.3 <= line
    assert "red_light" in {p.reason for p in plans}
    assert states[-1].x > line + 20


def test_runs_a_red_light_it_cannot_stop_for_comfortably():
    planner = SpeedPlanner(ROUTE)
    ego = VehicleState(0.0, 0.0, 0.0, 8.0)  # front at 2.3; line 7 m ahead, stop 1 m short: 8^2 / 12 = 5.3 m/s^2
    assert planner.plan(ego, np.zeros((0, 7)), np.zeros((0, 2)), [], np.array([[8.3 + 1.0, 0.0, 1.0]])).reason == "cruise"
    far = planner.plan(ego, np.zeros((0, 7)), np.zeros((0, 2)), [], np.array([[25.0, 0.0, 1.0]]))
    assert far.reason == "red_light" and far.gap == pytest.approx(25.0 - 2.3) and far.accel < 0


def test_emergency_brake_when_time_to_collision_is_short():
    planner = SpeedPlanner(ROUTE)
    ego = VehicleState(0.0, 0.0, 0.0, 8.0)
    cut_in = _car(2.3 + 8.0 + 2.3)[None]  # 8 m ahead, stopped: TTC = 1.0 s
    plan = planner.plan(ego, cut_in, np.zeros((1, 2)), [CAR])
    assert plan.reason == "emergency" and plan.accel == -8.0
    calm = planner.plan(ego, _car(2.3 + 14.0 + 2.3)[None], np.zeros((1, 2)), [CAR])  # TTC 1.75 s
    assert calm.reason == "follow"


def test_plan_path_and_config_validation():
    plan = SpeedPlanner(ROUTE).plan(VehicleState(10.0, 0.0, 0.0, 0.0), np.zeros((0, 7)), np.zeros((0, 2)), [])
    assert plan.path[0] == pytest.approx([12.3, 0.0]) and plan.path[-1, 0] == pytest.approx(12.3 + 25.0)
    with pytest.raises(ConfigError, match="time_gap"):
        PlannerConfig(time_gap=-1.0)
    with pytest.raises(ConfigError, match="min_corridor"):
        PlannerConfig(min_corridor=90.0)
    with pytest.raises(ValueError, match="rows"):
        SpeedPlanner(ROUTE).plan(VehicleState(0, 0, 0, 0), np.zeros((1, 7)), np.zeros((2, 2)), [0])
