"""Kinematic bicycle model of a car (Kong et al., "Kinematic and Dynamic Vehicle Models for
Autonomous Driving Control Design", IV 2015), referenced at the box centre.

The state is the centre pose and speed (:class:`~coperception.drive.records.VehicleState`); the
input is a :class:`~coperception.drive.records.Control` (acceleration, front-wheel angle). With
the centre halfway between the axles, the slip angle is ``beta = atan(tan(steer) / 2)`` and::

    x' = v cos(yaw + beta),  y' = v sin(yaw + beta),  yaw' = v sin(beta) / (L / 2),  v' = a

integrated with the exact arc over a step (constant yaw rate), speed clamped to [0, max_speed]
(no reversing: a braking car stops).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from coperception.drive.records import Control, VehicleState


@dataclass(frozen=True)
class VehicleLimits:
    """Actuator limits: max_steer (rad, front wheels), max_accel and max_decel (m/s^2, both
    positive), max_speed (m/s)."""

    max_steer: float = np.radians(35.0)
    max_accel: float = 3.0
    max_decel: float = 8.0
    max_speed: float = 20.0

    def clamp(self, control: Control) -> Control:
        return Control(float(np.clip(control.accel, -self.max_decel, self.max_accel)),
                       float(np.clip(control.steer, -self.max_steer, self.max_steer)))


def step_bicycle(state: VehicleState, control: Control, dt: float,
                 limits: VehicleLimits = VehicleLimits()) -> VehicleState:
    """The state ``dt`` seconds later under ``control`` (clamped to ``limits``)."""
    if dt <= 0:
        raise ValueError(f"dt must be > 0, got {dt}")
    c = limits.clamp(control)
    v0 = state.speed
    v1 = float(np.clip(v0 + c.accel * dt, 0.0, limits.max_speed))
    # Distance covered with the speed changing linearly (stopping mid-step covers less).
    if c.accel < 0 and v0 + c.accel * dt < 0:
        dist = v0 * v0 / (2 * -c.accel) if c.accel else 0.0
    else:
        dist = 0.5 * (v0 + v1) * dt
    beta = float(np.arctan(np.tan(c.steer) / 2.0))
    dyaw = dist * np.sin(beta) / (state.wheelbase / 2.0)
    heading = state.yaw + beta
    if abs(dyaw) < 1e-9:
        dx, dy = dist * np.cos(heading), dist * np.sin(heading)
    else:  # exact arc of constant curvature
        r = dist / dyaw
        dx = r * (np.sin(heading + dyaw) - np.sin(heading))
        dy = r * (np.cos(heading) - np.cos(heading + dyaw))
    yaw = float(np.arctan2(np.sin(state.yaw + dyaw), np.cos(state.yaw + dyaw)))
    return replace(state, x=float(state.x + dx), y=float(state.y + dy), yaw=yaw, speed=v1)
