"""Anchor target assignment by BEV IoU (VoxelNet / SECOND / PointPillars).

Each anchor is compared with every ground-truth box of its map:

* positive if its best IoU exceeds ``pos_threshold`` (0.6), regressing towards that box;
* also positive if it is some box's highest-IoU anchor (first one on ties, IoU > 0), so every
  box that touches any anchor is learned; it then regresses towards the box that chose it
  (the highest-IoU one if several did);
* negative if its IoU with every box is below ``neg_threshold`` (0.45) and it is not positive;
* ignored otherwise.

IoU modes: ``"standup"`` (default, as OpenCOOD's ``VoxelPostprocessor.generate_label``) uses the
axis-aligned BEV hulls of anchors and boxes; with ``standup_plus_one`` it keeps the Fast R-CNN
pixel convention of OpenCOOD's ``bbox_overlaps`` (``+1`` on every width and height although the
unit is metres), which inflates IoU and is needed to reproduce OpenCOOD-trained targets exactly.
``"rotated"`` uses the true rotated BEV IoU (:func:`coperception.geometry.iou.bev_iou`, which
evaluates only pairs whose hulls overlap).

One deliberate difference from OpenCOOD: an anchor above ``pos_threshold`` for several boxes
regresses towards its highest-IoU box (OpenCOOD takes the lowest-indexed one).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence

import torch

from coperception.errors import BoxError, ConfigError
from coperception.geometry.boxes import boxes_to_standup, validate_boxes
from coperception.geometry.iou import bev_iou, standup_iou
from coperception.heads.coder import direction_target, encode_boxes

IoUMode = Literal["standup", "rotated"]


@dataclass
class AnchorTargets:
    """Training targets of A maps with N anchors each (N = H*W*K, flattened in (H, W, K) order).

    labels: (A, N) int64, 1 positive, 0 negative, -1 ignored.
    box_targets: (A, N, 7) encoded residuals (see :mod:`coperception.heads.coder`), 0 unless positive.
    dir_targets: (A, N) int64 direction bin of the matched box, 0 unless positive.
    matched: (A, N) int64 index of the matched box in that map's ground truth, -1 unless positive.
    """

    labels: torch.Tensor
    box_targets: torch.Tensor
    dir_targets: torch.Tensor
    matched: torch.Tensor

    def to(self, device: torch.device | str) -> "AnchorTargets":
        return AnchorTargets(self.labels.to(device), self.box_targets.to(device),
                             self.dir_targets.to(device), self.matched.to(device))


def opencood_standup_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """OpenCOOD's ``bbox_overlaps`` of hulls a (N, 4), b (M, 4) ``[x1, y1, x2, y2]`` -> (N, M).

    Fast R-CNN's pixel convention: 1 is added to every width, height and overlap extent.
    """
    a, b = a[..., :, None, :], b[..., None, :, :]  # (..., N, 1, 4), (..., 1, M, 4): batched too
    iw = (torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0]) + 1).clamp(min=0)
    ih = (torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1]) + 1).clamp(min=0)
    inter = iw * ih
    area_a = (a[..., 2] - a[..., 0] + 1) * (a[..., 3] - a[..., 1] + 1)
    area_b = (b[..., 2] - b[..., 0] + 1) * (b[..., 3] - b[..., 1] + 1)
    return inter / (area_a + area_b - inter)


def match_anchors(iou: torch.Tensor, pos_threshold: float, neg_threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """iou: (..., N anchors, M boxes) -> labels (..., N) in {1, 0, -1} and matched box index
    (..., N) (-1 unless positive). Padding boxes of a batch enter with IoU -1 (never matched).

    Written without boolean-mask indexing so that it never waits for the device (no host sync).
    """
    n, m = iou.shape[-2:]
    if m == 0:
        return (iou.new_zeros(iou.shape[:-1], dtype=torch.int64), iou.new_full(iou.shape[:-1], -1, dtype=torch.int64))
    best_iou, best_box = iou.max(dim=-1)
    minus_one = torch.full((), -1, dtype=torch.int64, device=iou.device)
    labels = torch.where(best_iou < neg_threshold, torch.zeros_like(minus_one), minus_one)
    positive = best_iou > pos_threshold
    best_anchor = iou.argmax(dim=-2, keepdim=True)  # (..., 1, M): first maximum on ties
    forced = torch.zeros_like(iou, dtype=torch.bool)
    # each box's best anchor, if it overlaps at all
    forced.scatter_(-2, best_anchor, iou.gather(-2, best_anchor) > 0)
    is_forced = forced.any(dim=-1)
    forced_box = torch.where(forced, iou, torch.full_like(iou, -1.0)).argmax(dim=-1)
    positive = positive | is_forced
    matched = torch.where(is_forced, forced_box, best_box)
    labels = torch.where(positive, torch.ones_like(minus_one), labels)
    return labels, torch.where(positive, matched, minus_one)


class TargetAssigner:
    """Builds :class:`AnchorTargets` for given anchors (see module doc for the rules).

    Thresholds are on BEV IoU; iou_mode "standup" or "rotated"; num_dir_bins / dir_offset
    define the direction classifier's bins (see coder). Holds configuration only; the anchors
    are passed in so that the device follows the caller's module.
    """

    def __init__(self, pos_threshold: float = 0.6, neg_threshold: float = 0.45, iou_mode: IoUMode = "standup",
                 standup_plus_one: bool = True, num_dir_bins: int = 2, dir_offset: float = math.pi / 4) -> None:
        if not 0 <= neg_threshold <= pos_threshold <= 1:
            raise ConfigError(f"need 0 <= neg_threshold ({neg_threshold}) <= pos_threshold ({pos_threshold}) <= 1")
        if iou_mode not in ("standup", "rotated"):
            raise ConfigError(f"iou_mode must be 'standup' or 'rotated', got {iou_mode!r}")
        if num_dir_bins < 1:
            raise ConfigError(f"num_dir_bins must be >= 1, got {num_dir_bins}")
        self.pos_threshold, self.neg_threshold = float(pos_threshold), float(neg_threshold)
        self.iou_mode, self.standup_plus_one = iou_mode, bool(standup_plus_one)
        self.num_dir_bins, self.dir_offset = int(num_dir_bins), float(dir_offset)

    def iou(self, anchors: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        """anchors (N, 7), boxes (M, 7) -> (N, M) IoU under the configured mode (standup modes also
        take boxes (A, M, 7) -> (A, N, M))."""
        if self.iou_mode == "rotated":
            return bev_iou(anchors, gt)
        hull_a, hull_g = boxes_to_standup(anchors), boxes_to_standup(gt)
        return opencood_standup_iou(hull_a, hull_g) if self.standup_plus_one else standup_iou(hull_a, hull_g)

    def assign_one(self, anchors: torch.Tensor, gt: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """anchors (N, 7), one map's boxes (M, 7) -> labels (N,), box targets (N, 7), dir targets (N,), matched (N,).

        Targets are computed for every anchor against its matched (or, for non-positives, any)
        box and kept where positive: no data-dependent shapes, so no host synchronisation.
        """
        labels, matched = match_anchors(self.iou(anchors, gt), self.pos_threshold, self.neg_threshold)
        if gt.shape[0] == 0:
            return labels, anchors.new_zeros(anchors.shape), torch.zeros_like(labels), matched
        box_targets, dir_targets = self._regression_targets(anchors, gt[matched.clamp(min=0)], labels)
        return labels, box_targets, dir_targets, matched

    def _regression_targets(self, anchors: torch.Tensor, gt_matched: torch.Tensor,
                            labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Box residuals (..., N, 7) and direction bins (..., N) of every anchor against its
        matched box ``gt_matched`` (..., N, 7), kept where ``labels`` is positive (0 elsewhere)."""
        pos = labels == 1
        box_targets = torch.where(pos[..., None], encode_boxes(gt_matched, anchors), anchors.new_zeros(()))
        dirs = direction_target(gt_matched[..., 6], self.num_dir_bins, self.dir_offset)
        return box_targets, torch.where(pos, dirs.to(labels.dtype), torch.zeros_like(labels))

    def assign_padded(self, anchors: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor) -> AnchorTargets:
        """All maps at once from padded ground truth: anchors (H, W, K, 7) or (N, 7); gt (A, M, 7)
        boxes of each map in its frame, valid (A, M) bool (False = padding). The same targets as
        :meth:`__call__` on the unpadded lists, with a fixed number of launches for any number of
        maps and no host synchronisation (the boxes are checked where the batch is made,
        :func:`coperception.data.collate.collate_samples`)."""
        anchors = anchors.reshape(-1, 7)
        if self.iou_mode == "rotated":  # bev_iou is pairwise over the hull-overlapping pairs of one map
            return self(anchors, [g[v] for g, v in zip(gt, valid)])
        gt = gt.to(device=anchors.device, dtype=anchors.dtype)
        valid = valid.to(anchors.device)
        if gt.shape[1] == 0:
            return self(anchors, [g for g in gt])
        # Padding rows become unit boxes (finite hulls), then their IoU column is -1.
        keep = valid[..., None]
        safe = torch.cat([torch.where(keep, gt[..., :3], 0.0), torch.where(keep, gt[..., 3:6], 1.0),
                          torch.where(keep, gt[..., 6:], 0.0)], dim=-1)
        iou = self.iou(anchors, safe).masked_fill(~valid[:, None, :], -1.0)  # (A, N, M)
        labels, matched = match_anchors(iou, self.pos_threshold, self.neg_threshold)
        gt_matched = safe.gather(1, matched.clamp(min=0)[..., None].expand(-1, -1, 7))  # (A, N, 7)
        box_targets, dir_targets = self._regression_targets(anchors[None], gt_matched, labels)
        return AnchorTargets(labels, box_targets, dir_targets, matched)

    def __call__(self, anchors: torch.Tensor, gt_boxes: Sequence[torch.Tensor]) -> AnchorTargets:
        """anchors: (H, W, K, 7) or (N, 7); gt_boxes: one (M_a, 7) ``[x,y,z,l,w,h,yaw]`` per map, in its frame.

        Everything is computed on the anchors' device and dtype.
        """
        anchors = anchors.reshape(-1, 7)
        if len(gt_boxes) == 0:
            raise BoxError("gt_boxes is empty: pass one (M, 7) tensor per map")
        gts = [torch.as_tensor(gt).to(device=anchors.device, dtype=anchors.dtype) for gt in gt_boxes]
        for a, gt in enumerate(gts):
            if gt.ndim != 2 or gt.shape[1] != 7:
                validate_boxes(gt, f"gt_boxes[{a}]")
        everything = torch.cat(gts) if gts else anchors.new_zeros((0, 7))
        if len(everything) and not bool(torch.isfinite(everything).all() & (everything[:, 3:6] > 0).all()):
            for a, gt in enumerate(gts):  # one host sync for the batch; find the culprit only on failure
                validate_boxes(gt, f"gt_boxes[{a}]")
        parts = [self.assign_one(anchors, gt) for gt in gts]
        labels, boxes, dirs, matched = (torch.stack(p) for p in zip(*parts))
        return AnchorTargets(labels, boxes, dirs, matched)
