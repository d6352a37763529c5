"""Greedy non-maximum suppression of BEV boxes, rotated or axis-aligned, in plain torch.

Greedy NMS (as in OpenCOOD's ``box_utils.nms_rotated``): visit boxes by decreasing score, keep a
box unless a kept higher-scoring box overlaps it with IoU > threshold. Here the pairwise overlap
test is one tensor operation: rotated IoU (:func:`coperception.geometry.iou.bev_iou_aligned`) is
evaluated only on pairs whose axis-aligned hulls intersect. The greedy pass is then solved as a
fixed point, ``keep[j] = not any(keep[i] and overlap[i, j] for i < j)``, iterated with one
matrix reduction per step; the equation has a unique solution (induction over the score order),
so the fixed point is the greedy result. A long chain of suppressions needs as many steps as
its length, so after ``_MAX_FIXED_POINT_STEPS`` the remaining work falls back to the sequential
pass on the CPU (exact as well).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from coperception.errors import BoxError, ConfigError
from coperception.geometry.boxes import boxes_to_standup
from coperception.geometry.iou import bev_iou_aligned, standup_iou

NMSMode = Literal["rotated", "standup"]
_MAX_FIXED_POINT_STEPS = 32


def pairwise_overlap(boxes: torch.Tensor, iou_threshold: float, mode: NMSMode = "rotated") -> torch.Tensor:
    """(N, 7) boxes -> (N, N) bool, True where i < j and BEV IoU(i, j) > iou_threshold."""
    n = boxes.shape[0]
    hulls = boxes_to_standup(boxes)
    hull_iou = standup_iou(hulls, hulls)
    upper = torch.ones(n, n, dtype=torch.bool, device=boxes.device).triu(1)
    if mode == "standup":
        return (hull_iou > iou_threshold) & upper
    i, j = ((hull_iou > 0) & upper).nonzero(as_tuple=True)
    overlap = torch.zeros(n, n, dtype=torch.bool, device=boxes.device)
    if len(i):
        overlap[i, j] = bev_iou_aligned(boxes[i], boxes[j]) > iou_threshold
    return overlap


def greedy_keep(overlap: torch.Tensor) -> torch.Tensor:
    """overlap: (N, N) bool, True where a higher-ranked i < j suppresses j -> (N,) bool kept."""
    n = overlap.shape[0]
    keep = torch.ones(n, dtype=torch.bool, device=overlap.device)
    for _ in range(_MAX_FIXED_POINT_STEPS):
        new = ~(overlap & keep.unsqueeze(1)).any(dim=0)
        if torch.equal(new, keep):
            return keep
        keep = new
    return _sequential_keep(overlap).to(overlap.device)


def _sequential_keep(overlap: torch.Tensor) -> torch.Tensor:
    """Reference greedy pass: one vectorised row update per kept box (CPU)."""
    rows = overlap.cpu().numpy()
    keep = np.ones(rows.shape[0], dtype=bool)
    for i in range(rows.shape[0]):
        if keep[i]:
            keep &= ~rows[i]
    return torch.from_numpy(keep)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, mode: NMSMode = "rotated",
        pre_max_size: int | None = 1000, post_max_size: int | None = None) -> torch.Tensor:
    """Greedy NMS of BEV boxes.

    boxes: (N, 7) ``[x, y, z, l, w, h, yaw]`` (only x, y, l, w, yaw matter); scores: (N,).
    iou_threshold: a box is suppressed by a kept box with IoU strictly above it.
    mode: "rotated" (true BEV IoU) or "standup" (IoU of axis-aligned hulls, the fast path).
    pre_max_size: only the top-scoring boxes take part (OpenCOOD: 1000); None for all.
    post_max_size: at most this many are returned; None for all.
    Returns int64 indices into ``boxes`` of the kept boxes, by decreasing score (ties by index).
    """
    if boxes.ndim != 2 or boxes.shape[1] != 7 or scores.shape != boxes.shape[:1]:
        raise BoxError(f"nms needs boxes (N, 7) and scores (N,), got {tuple(boxes.shape)} and {tuple(scores.shape)}")
    if mode not in ("rotated", "standup"):
        raise ConfigError(f"nms mode must be 'rotated' or 'standup', got {mode!r}")
    order = torch.sort(scores, descending=True, stable=True).indices
    if pre_max_size is not None:
        order = order[:pre_max_size]
    if order.numel() == 0:
        return order
    keep = greedy_keep(pairwise_overlap(boxes[order], iou_threshold, mode))
    kept = order[keep]
    return kept if post_max_size is None else kept[:post_max_size]
