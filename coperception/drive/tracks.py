"""A short track history of perceived objects, so that a one-frame miss does not make the driving
agent forget an obstacle.

Tracking by detection in the simplest form that works at 10 Hz (cf. Weng et al., "AB3DMOT",
IROS 2020, without the Kalman filter): each track is predicted at constant velocity to the new
time, detections are associated greedily nearest-first within a gate and within the same class,
velocities are exponentially smoothed displacement / dt, unmatched tracks coast until
``max_age_s`` without a detection, and unmatched detections start new tracks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Tracks:
    """Tracks at one time (world frame): ids (N,) int64, stable across updates; boxes (N, 7)
    predicted to that time; velocities (N, 2) m/s; labels (N,) class indices; scores (N,) of the
    last detection; ages (N,) seconds since the last detection (0 = detected now)."""

    ids: np.ndarray
    boxes: np.ndarray
    velocities: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    ages: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


class Tracker:
    """Greedy nearest-neighbour tracker with constant-velocity coasting.

    max_age_s: a track without detections is dropped once older than this; gate_m: the farthest a
    detection may lie from a track's prediction to continue it; smoothing: weight of a new
    velocity measurement in the exponential average (1 = no smoothing).
    """

    def __init__(self, max_age_s: float = 0.5, gate_m: float = 3.0, smoothing: float = 0.5) -> None:
        if not max_age_s >= 0:
            raise ValueError(f"max_age_s must be >= 0, got {max_age_s}")
        if not gate_m > 0:
            raise ValueError(f"gate_m must be > 0, got {gate_m}")
        if not 0 < smoothing <= 1:
            raise ValueError(f"smoothing must be in (0, 1], got {smoothing}")
        self.max_age_s, self.gate_m, self.smoothing = float(max_age_s), float(gate_m), float(smoothing)
        self._ids = np.zeros(0, np.int64)
        self._boxes = np.zeros((0, 7))  # as last detected
        self._vel = np.zeros((0, 2))
        self._labels = np.zeros(0, np.int64)
        self._scores = np.zeros(0)
        self._seen = np.zeros(0)  # time of the last detection
        self._hits = np.zeros(0, np.int64)
        self._time: float | None = None
        self._next_id = 0

    def _predicted_xy(self, time: float) -> np.ndarray:
        return self._boxes[:, :2] + self._vel * (time - self._seen)[:, None]

    def _associate(self, pred_xy: np.ndarray, labels: np.ndarray, det_xy: np.ndarray,
                   det_labels: np.ndarray) -> list[tuple[int, int]]:
        dist = np.linalg.norm(pred_xy[:, None] - det_xy[None], axis=-1)
        dist[(labels[:, None] != det_labels[None]) | (dist > self.gate_m)] = np.inf
        pairs, used_t, used_d = [], set(), set()
        for flat in np.argsort(dist, axis=None):
            t, d = divmod(int(flat), dist.shape[1])
            if not np.isfinite(dist[t, d]):
                break
            if t not in used_t and d not in used_d:
                pairs.append((t, d))
                used_t.add(t)
                used_d.add(d)
        return pairs

    def update(self, time: float, boxes, labels, scores=None) -> Tracks:
        """Add the detections of ``time`` (boxes (N, 7) world, labels (N,), scores (N,), default 1)
        and return the tracks at that time. Times must not decrease."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 7)
        n = len(boxes)
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        scores = np.ones(n) if scores is None else np.asarray(scores, dtype=np.float64).reshape(-1)
        if len(labels) != n or len(scores) != n:
            raise ValueError(f"labels and scores must have {n} entries, got {len(labels)} and {len(scores)}")
        if not np.isfinite(boxes).all() or not np.isfinite(time):
            raise ValueError("tracker input boxes and time must be finite")
        if self._time is not None and time < self._time:
            raise ValueError(f"time must not decrease: {time} after {self._time}")
        self._time = float(time)
        pairs = self._associate(self._predicted_xy(time), self._labels, boxes[:, :2], labels)
        matched_t = np.array([p[0] for p in pairs], np.int64)
        matched_d = np.array([p[1] for p in pairs], np.int64)
        self._refresh(matched_t, matched_d, time, boxes, scores)
        alive = (time - self._seen) <= self.max_age_s + 1e-9
        alive[matched_t] = True
        self._keep(alive)
        new = np.setdiff1d(np.arange(n), matched_d)
        self._start(new, time, boxes, labels, scores)
        return self.tracks()

    def _refresh(self, t: np.ndarray, d: np.ndarray, time: float, boxes: np.ndarray, scores: np.ndarray) -> None:
        if len(t) == 0:
            return
        dt = time - self._seen[t]
        moving = dt > 1e-9
        measured = (boxes[d, :2] - self._boxes[t, :2]) / np.where(moving, dt, 1.0)[:, None]
        # A track's first velocity is its first measurement; later ones are smoothed.
        w = np.where(self._hits[t] == 1, 1.0, self.smoothing)[:, None]
        self._vel[t] = np.where(moving[:, None], w * measured + (1 - w) * self._vel[t], self._vel[t])
        self._boxes[t], self._scores[t], self._seen[t] = boxes[d], scores[d], time
        self._hits[t] += 1

    def _keep(self, mask: np.ndarray) -> None:
        for name in ("_ids", "_boxes", "_vel", "_labels", "_scores", "_seen", "_hits"):
            setattr(self, name, getattr(self, name)[mask])

    def _start(self, idx: np.ndarray, time: float, boxes: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> None:
        k = len(idx)
        self._ids = np.concatenate([self._ids, np.arange(self._next_id, self._next_id + k)])
        self._next_id += k
        self._boxes = np.concatenate([self._boxes, boxes[idx]])
        self._vel = np.concatenate([self._vel, np.zeros((k, 2))])
        self._labels = np.concatenate([self._labels, labels[idx]])
        self._scores = np.concatenate([self._scores, scores[idx]])
        self._seen = np.concatenate([self._seen, np.full(k, time)])
        self._hits = np.concatenate([self._hits, np.ones(k, np.int64)])

    def tracks(self) -> Tracks:
        """The tracks at the last update's time (coasting ones moved at constant velocity)."""
        time = self._time if self._time is not None else 0.0
        boxes = self._boxes.copy()
        boxes[:, :2] = self._predicted_xy(time)
        return Tracks(self._ids.copy(), boxes, self._vel.copy(), self._labels.copy(), self._scores.copy(),
                      time - self._seen)
