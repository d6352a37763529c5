"""The driving agent of the closed loop: perceived objects in, a control out.

Per tick: keep detections above a score threshold, drop the ego itself, update the track history
(:mod:`~coperception.drive.tracks`), plan the allowed acceleration along the route
(:mod:`~coperception.drive.planner`), then steer by pure pursuit and track the speed with a PID
(:mod:`~coperception.drive.control`). The same agent drives on oracle ground truth, ego-only or
collaborative detections, so that differences in driving come from perception alone (the
V2Xverse comparison, Liu et al. 2024).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields

import numpy as np

from coperception.drive.control import DEFAULT_LIMITS, PurePursuit, SpeedPID
from coperception.drive.dynamics import VehicleLimits
from coperception.drive.planner import Plan, PlannerConfig, SpeedPlanner
from coperception.drive.records import Control, Route, Tick, VehicleState
from coperception.drive.tracks import Tracker, Tracks
from coperception.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PerceivedObjects:
    """What perception hands the agent: boxes (N, 7) in the world frame, labels (N,) indices into
    ``OBJECT_CLASSES``, scores (N,) in [0, 1] (1 for ground truth)."""

    boxes: np.ndarray
    labels: np.ndarray
    scores: np.ndarray

    def __post_init__(self) -> None:
        boxes = np.asarray(self.boxes, dtype=np.float64).reshape(-1, 7)
        labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
        if len(labels) != len(boxes) or len(scores) != len(boxes):
            raise ValueError(f"perceived labels and scores must have {len(boxes)} entries, "
                             f"got {len(labels)} and {len(scores)}")
        if not np.isfinite(boxes).all():
            raise ValueError("perceived boxes must be finite")
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "scores", scores)

    @staticmethod
    def empty() -> PerceivedObjects:
        return PerceivedObjects(np.zeros((0, 7)), np.zeros(0, np.int64), np.zeros(0))


@dataclass(frozen=True)
class AgentConfig:
    """The agent's settings (units: m, s, m/s, m/s^2). Planner fields are those of
    :class:`~coperception.drive.planner.PlannerConfig`; lookahead_* of pure pursuit; speed_k* the
    PID gains; score_threshold keeps detections at or above it; track_* the tracker's."""

    cruise_speed: float = 8.0
    time_gap: float = 1.5
    min_gap: float = 4.0
    idm_accel: float = 2.0
    comfortable_decel: float = 3.0
    lateral_margin: float = 0.5
    vru_lateral_margin: float = 1.0
    prediction_horizon: float = 3.0
    red_light_max_decel: float = 4.0
    emergency_ttc: float = 1.5
    lookahead_gain: float = 1.0
    min_lookahead: float = 4.0
    max_lookahead: float = 15.0
    speed_kp: float = 1.0
    speed_ki: float = 0.1
    speed_kd: float = 0.0
    score_threshold: float = 0.3
    track_max_age: float = 0.5
    track_gate: float = 3.0
    track_smoothing: float = 0.5
    rate_hz: float = 10.0

    _NON_NEGATIVE = ("speed_ki", "speed_kd", "score_threshold", "track_max_age", "lookahead_gain")

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"agent {f.name} must be a finite number, got {value!r}")
            if value < 0 or (value == 0 and f.name not in self._NON_NEGATIVE):
                bound = ">= 0" if f.name in self._NON_NEGATIVE else "> 0"
                raise ConfigError(f"agent {f.name} must be {bound}, got {value!r}")
        if self.score_threshold > 1:
            raise ConfigError(f"agent score_threshold must be in [0, 1], got {self.score_threshold}")
        if self.min_lookahead > self.max_lookahead:
            raise ConfigError(f"agent min_lookahead ({self.min_lookahead}) > max_lookahead ({self.max_lookahead})")
        if self.track_smoothing > 1:
            raise ConfigError(f"agent track_smoothing must be in (0, 1], got {self.track_smoothing}")

    @staticmethod
    def from_dict(values: Mapping[str, float]) -> AgentConfig:
        known = {f.name for f in fields(AgentConfig)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown agent config keys {unknown}; known: {sorted(known)}")
        return AgentConfig(**values)

    def to_dict(self) -> dict:
        return asdict(self)

    def planner_config(self) -> PlannerConfig:
        names = {f.name for f in fields(PlannerConfig)}
        return PlannerConfig(**{k: v for k, v in asdict(self).items() if k in names})


def _outside_ego(ego: VehicleState, boxes: np.ndarray) -> np.ndarray:
    """Mask of boxes whose centre lies outside the ego's footprint: the ego appears in ground
    truth and may detect itself in a collaborator's view; nothing else can be centred inside it."""
    rel = boxes[:, :2] - ego.xy
    c, s = math.cos(ego.yaw), math.sin(ego.yaw)
    along, across = rel @ np.array([c, s]), rel @ np.array([-s, c])
    return (np.abs(along) > ego.length / 2) | (np.abs(across) > ego.width / 2)


class DrivingAgent:
    """Drives ``route`` from perceived objects: ``act(tick, perceived) -> Control``."""

    def __init__(self, route: Route, config: AgentConfig = AgentConfig(),
                 limits: VehicleLimits = DEFAULT_LIMITS) -> None:
        self.route, self.config, self.limits = route, config, limits
        self.planner = SpeedPlanner(route, config.planner_config(), limits)
        self.steering = PurePursuit(config.lookahead_gain, config.min_lookahead, config.max_lookahead)
        self.pid = SpeedPID(config.speed_kp, config.speed_ki, config.speed_kd, limits)
        self.tracker = Tracker(config.track_max_age, config.track_gate, config.track_smoothing)
        self.last_plan: Plan | None = None
        self.last_tracks: Tracks | None = None
        self._last_time: float | None = None

    def act(self, tick: Tick, perceived: PerceivedObjects) -> Control:
        ego = tick.ego
        dt = 1.0 / self.config.rate_hz
        if self._last_time is not None and tick.time > self._last_time:
            dt = tick.time - self._last_time
        self._last_time = tick.time
        keep = (perceived.scores >= self.config.score_threshold) & _outside_ego(ego, perceived.boxes)
        tracks = self.tracker.update(tick.time, perceived.boxes[keep], perceived.labels[keep], perceived.scores[keep])
        plan = self.planner.plan(ego, tracks.boxes, tracks.velocities, tracks.labels, tick.signals)
        if plan.reason == "emergency":
            accel = plan.accel
            self.pid.reset()
            log.debug("t=%.2f emergency brake", tick.time)
        else:
            accel = self.pid.accel(plan.target_speed, ego.speed, dt, upper=plan.accel)
        self.last_plan, self.last_tracks = plan, tracks
        return self.limits.clamp(Control(accel, self.steering.steer(self.route, ego, self.limits)))
