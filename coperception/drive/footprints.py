"""Bird's-eye footprints of road users: rectangle overlap (separating axis theorem, vectorised
over any broadcast shape) and time-to-collision under constant-velocity extrapolation. Used by
the planner, the episode metrics and the embedded backend's contact events."""

from __future__ import annotations

import math

import numpy as np

from coperception.drive.records import VehicleState

TTC_HORIZON = 10.0  # s


def _axes(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    c, s = np.cos(boxes[..., 6]), np.sin(boxes[..., 6])
    return np.stack([c, s], -1), np.stack([-s, c], -1)


def footprints_overlap(boxes_a, boxes_b, touching: bool = True) -> np.ndarray:
    """Whether the bird's-eye rectangles of ``boxes_a`` and ``boxes_b`` (``(..., 7)``, broadcast
    against each other) overlap, by the separating axis theorem; ``touching``: whether rectangles
    that only touch count as overlapping (yes for time-to-collision, no for contact events)."""
    a, b = np.asarray(boxes_a, dtype=np.float64), np.asarray(boxes_b, dtype=np.float64)
    if a.shape[-1:] != (7,) or b.shape[-1:] != (7,):
        raise ValueError(f"boxes must be (..., 7), got {a.shape} and {b.shape}")
    ua, va = _axes(a)
    ub, vb = _axes(b)
    d = b[..., :2] - a[..., :2]
    ha, hb = a[..., 3:5] / 2, b[..., 3:5] / 2
    separated = np.zeros(np.broadcast_shapes(a.shape[:-1], b.shape[:-1]), dtype=bool)
    for n in (ua, va, ub, vb):
        ra = ha[..., 0] * np.abs((ua * n).sum(-1)) + ha[..., 1] * np.abs((va * n).sum(-1))
        rb = hb[..., 0] * np.abs((ub * n).sum(-1)) + hb[..., 1] * np.abs((vb * n).sum(-1))
        gap = np.abs((d * n).sum(-1))
        separated |= gap > ra + rb + 1e-9 if touching else gap >= ra + rb
    return ~separated


def time_to_collision(ego: VehicleState, boxes, velocities, horizon: float = TTC_HORIZON,
                      step: float = 0.05) -> float:
    """Seconds until the ego's footprint (driving straight along its heading at its speed) first
    overlaps an object's footprint (each moving at its constant ``velocities`` (N, 2) m/s), sampled
    every ``step`` s (the answer is the first sample in overlap, so up to ``step`` late); ``inf``
    if none within ``horizon``; 0 if already overlapping."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 7)
    vel = np.asarray(velocities, dtype=np.float64).reshape(-1, 2)
    if len(vel) != len(boxes):
        raise ValueError(f"velocities must be ({len(boxes)}, 2), got {vel.shape}")
    if step <= 0 or horizon < 0:
        raise ValueError(f"step must be > 0 and horizon >= 0, got step={step}, horizon={horizon}")
    if len(boxes) == 0:
        return math.inf
    t = np.arange(0.0, horizon + step / 2, step)
    ego_t = np.repeat(ego.box()[None], len(t), axis=0)
    ego_t[:, :2] += t[:, None] * ego.speed * np.array([np.cos(ego.yaw), np.sin(ego.yaw)])
    obj_t = np.repeat(boxes[:, None], len(t), axis=1)
    obj_t[..., :2] += t[None, :, None] * vel[:, None, :]
    hit = footprints_overlap(ego_t[None], obj_t).any(axis=0)  # (T,)
    return float(t[np.argmax(hit)]) if hit.any() else math.inf
