"""Route following: pure pursuit steering and a PID speed controller.

Pure pursuit (Coulter, "Implementation of the Pure Pursuit Path Tracking Algorithm", CMU-RI-TR-92-01,
1992) steers the rear axle along the arc through a point ``ld`` metres ahead on the route:
``steer = atan(2 L sin(alpha) / ld)`` with ``ld = clamp(k v, 4 m, 15 m)``. The kinematic bicycle
of :mod:`coperception.drive.dynamics` is referenced at the box centre, so the rear axle lies half
a wheelbase behind it. The PID tracks a target speed with conditional-integration anti-windup
(the integral freezes while the output is saturated) and clips to the vehicle's limits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from coperception.drive.dynamics import VehicleLimits
from coperception.drive.records import Route, VehicleState

#: The default vehicle's actuator limits (one shared immutable instance).
DEFAULT_LIMITS = VehicleLimits()


def route_points(route: Route, s: np.ndarray) -> np.ndarray:
    """(M, 2) points at arc lengths ``s``; beyond the goal the last segment is extended straight
    (the vehicle keeps its line past the end), before the start the first one is."""
    s = np.asarray(s, dtype=np.float64)
    cum, wp = route.cumulative, route.waypoints
    pts = np.stack([np.interp(s, cum, wp[:, 0]), np.interp(s, cum, wp[:, 1])], -1)
    for mask, seg, ref, over in ((s > cum[-1], wp[-1] - wp[-2], wp[-1], s - cum[-1]),
                                 (s < 0, wp[1] - wp[0], wp[0], s)):
        if mask.any():
            pts[mask] = ref + over[mask, None] * seg / np.linalg.norm(seg)
    return pts


def rear_axle(state: VehicleState) -> np.ndarray:
    return state.xy - 0.5 * state.wheelbase * np.array([math.cos(state.yaw), math.sin(state.yaw)])


@dataclass(frozen=True)
class PurePursuit:
    """Pure pursuit steering: lookahead ``clamp(gain * speed, min_lookahead, max_lookahead)`` m."""

    gain: float = 1.0
    min_lookahead: float = 4.0
    max_lookahead: float = 15.0

    def __post_init__(self) -> None:
        if not (self.gain >= 0 and 0 < self.min_lookahead <= self.max_lookahead):
            raise ValueError(f"pure pursuit needs gain >= 0 and 0 < min_lookahead <= max_lookahead, got "
                             f"{self.gain}, {self.min_lookahead}, {self.max_lookahead}")

    def lookahead(self, speed: float) -> float:
        return float(np.clip(self.gain * speed, self.min_lookahead, self.max_lookahead))

    def target_point(self, route: Route, state: VehicleState) -> np.ndarray:
        """(2,) the route point ``lookahead`` m of arc ahead of the rear axle's closest point."""
        s, _ = route.project(rear_axle(state))
        return route_points(route, np.array([s + self.lookahead(state.speed)]))[0]

    def steer(self, route: Route, state: VehicleState, limits: VehicleLimits = DEFAULT_LIMITS) -> float:
        """Front-wheel angle (rad) towards the target point, clipped to ``limits.max_steer``."""
        rear = rear_axle(state)
        d = self.target_point(route, state) - rear
        ld = max(float(np.linalg.norm(d)), 1e-6)
        alpha = math.atan2(d[1], d[0]) - state.yaw
        steer = math.atan2(2.0 * state.wheelbase * math.sin(alpha), ld)
        return float(np.clip(steer, -limits.max_steer, limits.max_steer))


class SpeedPID:
    """PID from speed error (m/s) to acceleration (m/s^2).

    ``accel(target, speed, dt, upper)``: the output is clipped to ``[-max_decel, min(max_accel,
    upper)]`` (``upper``: a cap from the planner); the integral only accumulates within
    ``integral_band`` m/s of the target and while the output is not saturated in the error's
    direction (integrating the whole run-up from standstill would overshoot). A target of 0 at (near) standstill holds
    the vehicle with ``hold_brake`` m/s^2 and clears the integral, so it never creeps.
    """

    def __init__(self, kp: float = 1.0, ki: float = 0.1, kd: float = 0.0,
                 limits: VehicleLimits = DEFAULT_LIMITS, hold_brake: float = 1.0,
                 integral_band: float = 1.0) -> None:
        if min(kp, ki, kd, hold_brake, integral_band) < 0:
            raise ValueError(f"PID gains, hold_brake and integral_band must be >= 0, got kp={kp}, ki={ki}, "
                             f"kd={kd}, hold_brake={hold_brake}, integral_band={integral_band}")
        self.kp, self.ki, self.kd, self.limits, self.hold_brake = kp, ki, kd, limits, hold_brake
        self.integral_band = integral_band
        self.reset()

    def reset(self) -> None:
        self._integral = 0.0
        self._last_error: float | None = None

    def accel(self, target_speed: float, speed: float, dt: float, upper: float = math.inf) -> float:
        if dt <= 0:
            raise ValueError(f"dt must be > 0, got {dt}")
        lo, hi = -self.limits.max_decel, min(self.limits.max_accel, upper)
        if target_speed <= 0.05 and speed < 0.3:
            self.reset()
            return float(max(min(-self.hold_brake, hi), lo))
        error = float(target_speed - speed)
        derivative = 0.0 if self._last_error is None else (error - self._last_error) / dt
        self._last_error = error
        step = error * dt if abs(error) <= self.integral_band else 0.0
        raw = self.kp * error + self.ki * (self._integral + step) + self.kd * derivative
        out = float(np.clip(raw, lo, max(hi, lo)))
        saturated = (raw > out and error > 0) or (raw < out and error < 0)
        if not saturated:
            self._integral += step
        return out
