import numpy as np
import pytest

from coperception.drive.control import PurePursuit, SpeedPID, route_points
from coperception.drive.dynamics import VehicleLimits, step_bicycle
from coperception.drive.records import Control, Route, VehicleState


def _turn_route(radius=15.0):
    """50 m east, a 90-degree left arc of ``radius``, 60 m north."""
    straight = np.stack([np.arange(0.0, 50.0, 1.0), np.zeros(50)], -1)
    ang = np.radians(np.arange(-90.0, 0.0, 2.0))
    arc = np.stack([50.0 + radius * np.cos(ang), radius + radius * np.sin(ang)], -1)
    north = np.stack([np.full(61, 50.0 + radius), radius + np.arange(0.0, 61.0, 1.0)], -1)
    return Route(np.concatenate([straight, arc, north]))


def _follow(route, speed=8.0, dt=0.1, seconds=15.0, start=None):
    pp, pid = PurePursuit(), SpeedPID()
    s = start or VehicleState(0.0, 0.0, 0.0, speed)
    log = []
    for _ in range(int(seconds / dt)):
        c = Control(pid.accel(speed, s.speed, dt), pp.steer(route, s))
        s = step_bicycle(s, c, dt)
        log.append((*route.project(s.xy), s.speed))
    return np.array(log)  # (T, 3): arc length, lateral error, speed


def test_follows_a_straight_route_from_an_offset():
    route = Route(np.array([[0.0, 0.0], [200.0, 0.0]]))
    log = _follow(route, start=VehicleState(0.0, 1.0, 0.0, 8.0), seconds=12.0)
    settled = log[log[:, 0] > 30.0]
    assert len(settled) > 50 and settled[:, 1].max() < 0.5
    assert settled[-20:, 1].max() < 0.05


def test_follows_a_90_degree_turn_at_8_mps():
    route = _turn_route()
    arc_start, arc_end = 50.0, 50.0 + 15.0 * np.pi / 2
    log = _follow(route, seconds=14.0)
    straight = log[(log[:, 0] < arc_start - 2) | (log[:, 0] > arc_end + 15.0)]
    turn = log[(log[:, 0] >= arc_start - 2) & (log[:, 0] <= arc_end + 15.0)]
    assert log[-1, 0] > arc_end + 30  # got through
    assert straight[:, 1].max() < 0.5
    assert 0.05 < turn[:, 1].max() < 1.5  # pure pursuit cuts the corner a little, not much
    assert np.abs(log[20:, 2] - 8.0).max() < 0.05


def test_pid_reaches_target_speed_with_small_overshoot():
    pid, dt, v = SpeedPID(), 0.1, 0.0
    speeds = []
    for _ in range(200):
        v = max(0.0, v + pid.accel(8.0, v, dt) * dt)  # the bicycle model's speed update, clamped
        speeds.append(v)
    speeds = np.array(speeds)
    assert speeds.max() < 8.0 * 1.05
    assert abs(speeds[-1] - 8.0) < 0.05
    assert np.argmax(speeds > 7.6) * dt < 5.0  # 3 m/s^2 saturated: about 2.7 s to 95 %


def test_pid_slows_down_and_holds_a_stop():
    pid, dt = SpeedPID(), 0.1
    s = VehicleState(0.0, 0.0, 0.0, 8.0)
    for _ in range(100):
        s = step_bicycle(s, Control(pid.accel(0.0, s.speed, dt), 0.0), dt)
    x_stopped = s.x
    assert s.speed == 0.0
    for _ in range(100):
        a = pid.accel(0.0, s.speed, dt)
        assert a < 0
        s = step_bicycle(s, Control(a, 0.0), dt)
    assert s.x == x_stopped and s.speed == 0.0


def test_pid_respects_limits_and_upper_cap_without_windup():
    lim = VehicleLimits(max_accel=2.0, max_decel=5.0)
    pid = SpeedPID(kp=5.0, ki=1.0, limits=lim)
    assert pid.accel(20.0, 0.0, 0.1) == 2.0
    assert pid.accel(0.0, 20.0, 0.1) == -5.0
    pid.reset()
    for _ in range(100):  # held back by a planner cap for 10 s
        assert pid.accel(8.0, 7.5, 0.1, upper=0.0) == 0.0  # within the integral band
    assert pid._integral == 0.0  # the cap is a saturation: no windup
    with pytest.raises(ValueError, match="dt"):
        pid.accel(1.0, 0.0, 0.0)


def test_route_points_interpolates_and_extends_past_the_goal():
    route = Route(np.array([[0.0, 0.0], [10.0, 0.0], [10.0, 10.0]]))
    pts = route_points(route, np.array([-2.0, 5.0, 15.0, 25.0]))
    assert pts == pytest.approx(np.array([[-2.0, 0.0], [5.0, 0.0], [10.0, 5.0], [10.0, 15.0]]))
    assert PurePursuit().lookahead(0.0) == 4.0 and PurePursuit().lookahead(30.0) == 15.0
    with pytest.raises(ValueError, match="lookahead"):
        PurePursuit(min_lookahead=5.0, max_lookahead=4.0)
