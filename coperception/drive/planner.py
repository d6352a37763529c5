"""Speed planning from perceived objects along a fixed route.

The ego's corridor is the route ahead of its front bumper swept by its width; objects are inflated
by a lateral margin (larger for pedestrians and cyclists). Each constraint proposes an acceleration
with the interaction term of the Intelligent Driver Model (Treiber, Hennecke and Helbing,
"Congested traffic states in empirical observations and microscopic simulations", Phys. Rev. E
62, 2000): ``a (1 - (s*/s)^2)``, ``s* = s0 + max(0, v T + v dv / (2 sqrt(a b)))``; its free-road
term ``a (1 - (v/v0)^4)`` is the "cruise" proposal. The plan allows the smallest proposal:

- follow: an object in the corridor now, with its speed along the path;
- yield: an object predicted (constant velocity, 3 s) to enter the corridor before the ego would
  have cleared that point is a stopped obstacle where it enters;
- red_light: a red stop line the ego can stop for at <= 4 m/s^2 (else it proceeds);
- emergency: maximum braking if the time to collision (:func:`~coperception.drive.metrics.time_to_collision`)
  with an object ahead that is or will be in the corridor falls below 1.5 s. Only corridor
  objects count: extrapolating the ego straight along its heading flags parked cars on curves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np

from coperception.drive.control import DEFAULT_LIMITS, route_points
from coperception.drive.dynamics import VehicleLimits
from coperception.drive.footprints import footprints_overlap, time_to_collision
from coperception.drive.records import Route, VehicleState
from coperception.errors import ConfigError
from coperception.structures.records import OBJECT_CLASSES

#: Vulnerable road users: a larger lateral margin.
VRU_CLASSES: tuple[int, ...] = (OBJECT_CLASSES.index("pedestrian"), OBJECT_CLASSES.index("cyclist"))
STANDSTILL_SPEED = 0.3  # m/s: an obstacle slower than this counts as stopped
STANDSTILL_SLACK = 0.5  # m beyond the standstill gap at which the ego stops and holds


@dataclass(frozen=True)
class PlannerConfig:
    """Speeds m/s, distances m, times s, accelerations m/s^2 (all > 0 unless noted)."""

    cruise_speed: float = 8.0  # V2Xverse's agents drive at up to 8 m/s
    time_gap: float = 1.5
    min_gap: float = 4.0  # front bumper to the object's near edge, when stopped
    idm_accel: float = 2.0
    comfortable_decel: float = 3.0
    lateral_margin: float = 0.5
    vru_lateral_margin: float = 1.0
    prediction_horizon: float = 3.0
    prediction_step: float = 0.25
    red_light_max_decel: float = 4.0
    stop_line_gap: float = 1.0
    emergency_ttc: float = 1.5
    corridor_step: float = 0.5
    min_corridor: float = 25.0
    max_corridor: float = 80.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ConfigError(f"planner {f.name} must be a finite number > 0, got {value!r}")
        if self.min_corridor > self.max_corridor:
            raise ConfigError(f"planner min_corridor ({self.min_corridor}) > max_corridor ({self.max_corridor})")


@dataclass(frozen=True)
class Plan:
    """accel: the most acceleration the plan allows (m/s^2; the speed controller may use less);
    reason: 'cruise', 'follow', 'yield', 'red_light' or 'emergency'; path: (M, 2) the route ahead
    of the front bumper (world); target_speed: cruise speed, or 0 to stop and hold (m/s); gap: front bumper to the binding
    constraint along the path (m, inf when cruising)."""

    accel: float
    reason: str
    path: np.ndarray
    target_speed: float
    gap: float = math.inf


@dataclass(frozen=True)
class _Conflicts:
    follow: list[tuple[float, float]]  # (gap, speed along the path)
    stop: list[float]  # gaps to predicted entry points
    objects: np.ndarray  # indices of every corridor object


class SpeedPlanner:
    """Plans the ego's acceleration along ``route`` from tracked objects and stop lines."""

    def __init__(self, route: Route, config: PlannerConfig = PlannerConfig(),
                 limits: VehicleLimits = DEFAULT_LIMITS) -> None:
        self.route, self.config, self.limits = route, config, limits

    def corridor_length(self, speed: float) -> float:
        c = self.config
        need = speed ** 2 / (2 * c.comfortable_decel) + speed * c.time_gap + c.min_gap + 10.0
        return float(np.clip(need, c.min_corridor, c.max_corridor))

    def _idm(self, v: float, v_obj: float, gap: float, s0: float) -> float:
        c = self.config
        s_star = s0 + max(0.0, v * c.time_gap + v * (v - v_obj) / (2 * math.sqrt(c.idm_accel * c.comfortable_decel)))
        a = c.idm_accel * (1.0 - (s_star / max(gap, 0.01)) ** 2)
        return float(np.clip(a, -self.limits.max_decel, c.idm_accel))

    def plan(self, ego: VehicleState, boxes, velocities, labels, signals=None) -> Plan:
        """Boxes (N, 7), velocities (N, 2) and labels (N,) of tracked objects in the world frame;
        signals (K, 3) ``x, y, is_red`` of stop lines ahead."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 7)
        vel = np.asarray(velocities, dtype=np.float64).reshape(-1, 2)
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        if len(vel) != len(boxes) or len(labels) != len(boxes):
            raise ValueError(f"velocities and labels must have {len(boxes)} rows, got {len(vel)} and {len(labels)}")
        c, v = self.config, ego.speed
        s_front = self.route.project(ego.xy)[0] + ego.length / 2
        ds = c.corridor_step
        offsets = np.arange(0.0, self.corridor_length(v) + ds / 2, ds)
        path = route_points(self.route, s_front + offsets)
        # (accel, reason, gap, obstacle speed, standstill gap)
        proposals = [(c.idm_accel * (1.0 - (v / c.cruise_speed) ** 4), "cruise", math.inf, math.inf, 0.0)]
        conflicts = self._conflicts(ego, path, offsets, boxes, vel, labels)
        proposals += [(self._idm(v, vo, gap, c.min_gap), "follow", gap, vo, c.min_gap) for gap, vo in conflicts.follow]
        proposals += [(self._idm(v, 0.0, gap, c.min_gap), "yield", gap, 0.0, c.min_gap) for gap in conflicts.stop]
        proposals += [(self._idm(v, 0.0, gap, c.stop_line_gap), "red_light", gap, 0.0, c.stop_line_gap)
                      for gap in self._red_lines(v, s_front, signals)]
        if len(conflicts.objects):
            idx = conflicts.objects
            if time_to_collision(ego, boxes[idx], vel[idx], horizon=c.emergency_ttc) < c.emergency_ttc:
                return Plan(-self.limits.max_decel, "emergency", path, 0.0, 0.0)
        accel, reason, gap, v_obj, s0 = min(proposals, key=lambda p: p[0])
        if v_obj < STANDSTILL_SPEED and gap - s0 < STANDSTILL_SLACK:
            # IDM only creeps towards s0; at the standstill point, stop and hold instead.
            return Plan(min(float(accel), 0.0), reason, path, 0.0, float(gap))
        return Plan(float(accel), reason, path, c.cruise_speed, float(gap))

    def _conflicts(self, ego: VehicleState, path: np.ndarray, offsets: np.ndarray, boxes: np.ndarray,
                   vel: np.ndarray, labels: np.ndarray) -> _Conflicts:
        c = self.config
        heading = np.array([math.cos(ego.yaw), math.sin(ego.yaw)])
        reach = offsets[-1] + ego.length + c.prediction_horizon * np.linalg.norm(vel, axis=1) + 10.0
        rel = boxes[:, :2] - ego.xy
        # Objects behind the ego's centre are its followers' business, not its own.
        near = np.flatnonzero((rel @ heading > 0) & (np.linalg.norm(rel, axis=1) < reach))
        if len(near) == 0 or len(path) < 2:
            return _Conflicts([], [], np.zeros(0, np.int64))
        seg = _segment_boxes(path, ego.width)  # (M, 7)
        margin = np.where(np.isin(labels[near], VRU_CLASSES), c.vru_lateral_margin, c.lateral_margin)
        inflated = boxes[near].copy()
        inflated[:, 3:5] += 2 * margin[:, None]
        tau = np.arange(0.0, c.prediction_horizon + c.prediction_step / 2, c.prediction_step)
        moved = np.repeat(inflated[:, None], len(tau), axis=1)
        moved[..., :2] += tau[None, :, None] * vel[near, None, :]
        hit = footprints_overlap(moved[:, :, None], seg[None, None])  # (N, T, M)
        follow, stop, objects = [], [], []
        for k, i in enumerate(near):
            if not hit[k].any():
                continue
            objects.append(i)
            if hit[k, 0].any():
                j = int(np.argmax(hit[k, 0]))
                follow.append((_near_edge(boxes[i], path, offsets, j), float(vel[i] @ _unit(path, j))))
                continue
            t = int(np.argmax(hit[k].any(axis=1)))
            gap = float(offsets[int(np.argmax(hit[k, t]))])
            clear = (gap + ego.length) / max(ego.speed, 0.1)
            if tau[t] <= clear + 0.5:
                stop.append(gap)
        return _Conflicts(follow, stop, np.array(objects, np.int64))

    def _red_lines(self, v: float, s_front: float, signals) -> list[float]:
        if signals is None:
            return []
        sig = np.asarray(signals, dtype=np.float64).reshape(-1, 3)
        gaps = []
        for x, y, red in sig:
            if red < 0.5:
                continue
            s_line, lateral = self.route.project(np.array([x, y]))
            gap = s_line - s_front
            if gap < 0 or lateral > 10.0:
                continue
            needed = v * v / (2 * max(gap - self.config.stop_line_gap, 0.01))
            if needed <= self.config.red_light_max_decel:
                gaps.append(float(gap))
        return gaps


def _unit(path: np.ndarray, j: int) -> np.ndarray:
    d = path[min(j + 1, len(path) - 1)] - path[min(j, len(path) - 2)]
    return d / max(np.linalg.norm(d), 1e-12)


def _segment_boxes(path: np.ndarray, width: float) -> np.ndarray:
    """(M - 1, 7) rectangles covering the path's segments, ``width`` wide, a little overlapping
    so that the outside of a bend has no gaps."""
    a, b = path[:-1], path[1:]
    d = b - a
    length = np.linalg.norm(d, axis=1)
    out = np.zeros((len(a), 7))
    out[:, :2] = (a + b) / 2
    out[:, 3] = length + 0.1
    out[:, 4] = width
    out[:, 5] = 1.0
    out[:, 6] = np.arctan2(d[:, 1], d[:, 0])
    return out


def _near_edge(box: np.ndarray, path: np.ndarray, offsets: np.ndarray, j: int) -> float:
    """Path distance from the front bumper to the object's nearest corner, refined from the first
    overlapped segment ``j`` (exact on straight paths)."""
    c, s = math.cos(box[6]), math.sin(box[6])
    half = np.array([[1, 1], [1, -1], [-1, 1], [-1, -1]]) * box[3:5] / 2
    corners = box[:2] + half @ np.array([[c, s], [-s, c]])
    along = (corners - path[j]) @ _unit(path, j)
    return float(offsets[j] + np.clip(along.min(), 0.0, 2 * (offsets[1] - offsets[0])))
