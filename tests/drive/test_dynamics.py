import numpy as np
import pytest

from coperception.drive.dynamics import VehicleLimits, step_bicycle
from coperception.drive.records import Control, Route, VehicleState, route_timeout


def test_straight_line_constant_speed():
    s = VehicleState(0.0, 0.0, np.pi / 2, 10.0)
    for _ in range(10):
        s = step_bicycle(s, Control(0.0, 0.0), 0.1)
    assert s.x == pytest.approx(0.0, abs=1e-9) and s.y == pytest.approx(10.0) and s.speed == 10.0


def test_constant_steer_drives_a_circle_of_the_bicycle_radius():
    wheelbase, steer, v = 2.8, 0.2, 5.0
    s = VehicleState(0.0, 0.0, 0.0, v, wheelbase=wheelbase)
    beta = np.arctan(np.tan(steer) / 2)
    radius = (wheelbase / 2) / np.sin(beta)  # centre-referenced turning radius
    period = 2 * np.pi * radius / v
    n = 400
    for _ in range(n):
        s = step_bicycle(s, Control(0.0, steer), period / n)
    assert np.hypot(s.x, s.y) < 1e-6  # back at the start after one lap
    assert s.yaw == pytest.approx(0.0, abs=1e-6)


def test_braking_stops_without_reversing_and_covers_v2_over_2a():
    s = VehicleState(0.0, 0.0, 0.0, 8.0)
    s = step_bicycle(s, Control(-8.0, 0.0), 5.0, VehicleLimits(max_decel=8.0))
    assert s.speed == 0.0 and s.x == pytest.approx(4.0)


def test_limits_clamp_inputs():
    lim = VehicleLimits(max_steer=0.1, max_accel=2.0)
    s = step_bicycle(VehicleState(0, 0, 0, 0.0), Control(100.0, 5.0), 1.0, lim)
    assert s.speed == pytest.approx(2.0)
    with pytest.raises(ValueError, match="dt"):
        step_bicycle(s, Control(), 0.0)


def test_route_projection_and_timeout():
    r = Route(np.array([[0.0, 0.0], [10.0, 0.0], [10.0, 10.0]]))
    assert r.length == 20.0
    s, d = r.project(np.array([10.5, 5.0]))
    assert s == pytest.approx(15.0) and d == pytest.approx(0.5)
    assert np.allclose(r.point_at(12.0), [10.0, 2.0])
    assert route_timeout(r.length) == 24.0  # int(0.8 * 20 + 8)
    with pytest.raises(ValueError, match="waypoints"):
        Route(np.zeros((1, 2)))
