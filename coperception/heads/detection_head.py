"""Anchor-based 3D detection head over BEV maps: predictions, training losses, decoded detections.

The single-stage head of SECOND / PointPillars as configured in OpenCOOD and HEAL: 1x1 convs
predict, per anchor, an objectness logit, 7 box residuals and (optionally) direction-bin logits.
Training targets come from :class:`~coperception.heads.targets.TargetAssigner`, losses from
:class:`~coperception.heads.losses.AnchorLoss`.

Decoding follows OpenCOOD's ``VoxelPostprocessor.post_process`` per map: sigmoid scores above
``score_threshold``; residuals decoded against the anchors (and, with a direction head, the yaw
moved into the predicted bin as HEAL does); boxes removed whose axis-aligned BEV extent exceeds
``max_box_extent`` (OpenCOOD's ``remove_large_pred_bbx``: 6 m along x or y of the hull, which
depends on yaw; its z term is a no-op) or whose vertical extent leaves ``z_range``
(``remove_bbx_abnormal_z``, hard-coded to [-3, 1] m there; here the grid's z range by default,
which is the same for OpenCOOD's configs and also right for a high-mounted road-side LiDAR);
then the top ``pre_nms_max`` (1000) by score go through rotated NMS. OpenCOOD's final range
filter (all corners inside GT_RANGE) is an evaluation choice made in the ego frame, so it is left
to the evaluator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from coperception.errors import ConfigError
from coperception.geometry.boxes import boxes_to_standup
from coperception.geometry.grid import BEVGrid
from coperception.geometry.nms import NMSMode, nms
from coperception.heads.anchors import AnchorSize, make_anchors
from coperception.heads.base import Head
from coperception.heads.coder import apply_direction, decode_boxes
from coperception.heads.losses import AnchorLoss
from coperception.heads.targets import AnchorTargets, TargetAssigner
from coperception.structures.bev import BEVFeatures
from coperception.structures.records import Detections


@dataclass
class HeadPredictions:
    """Raw head outputs for A maps with K anchors per cell.

    cls_logits: (A, K, H, W); box_deltas: (A, K*7, H, W); dir_logits: (A, K*B, H, W) or None.
    """

    cls_logits: torch.Tensor
    box_deltas: torch.Tensor
    dir_logits: torch.Tensor | None = None

    def flat(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Per-anchor views in (H, W, K) order: (A, N), (A, N, 7), (A, N, B) or None."""
        a = self.cls_logits.shape[0]
        cls = self.cls_logits.permute(0, 2, 3, 1).reshape(a, -1)
        box = self.box_deltas.permute(0, 2, 3, 1).reshape(a, cls.shape[1], 7)
        d = None
        if self.dir_logits is not None:
            d = self.dir_logits.permute(0, 2, 3, 1).reshape(a, cls.shape[1], -1)
        return cls, box, d


#: Boxes with a side longer than this (m) are dropped after decoding (OpenCOOD drops > 6 m; the
#: embedded town has trucks and buses): the one default, for the head and the experiment config.
DEFAULT_MAX_BOX_EXTENT = 12.0


@dataclass(frozen=True)
class PostProcess:
    """Box filters before NMS (see module doc). None disables a filter; z_range None = grid's z range."""

    max_box_extent: float | None = DEFAULT_MAX_BOX_EXTENT
    z_range: tuple[float, float] | None = None
    nms_mode: NMSMode = "rotated"
    pre_nms_max: int | None = 1000


class AnchorHead(Head):
    """Anchor head for BEV maps of ``grid`` at ``stride``.

    in_channels: channels of the incoming (A, C, H, W) map. anchor_sizes x anchor_rotations
    (radians) anchors per cell (default one car size, yaw 0 and 90 degrees). use_direction:
    add the direction-bin head (bins and offset taken from ``assigner``). prior_prob: initial
    objectness (RetinaNet's bias init; None keeps PyTorch's default init like OpenCOOD).
    """

    name = "anchor"

    def __init__(self, in_channels: int, grid: BEVGrid, stride: int,
                 anchor_sizes: Sequence[AnchorSize] = (AnchorSize(),),
                 anchor_rotations: Sequence[float] = (0.0, math.pi / 2), use_direction: bool = True,
                 assigner: TargetAssigner | None = None, loss: AnchorLoss | None = None,
                 post: PostProcess | None = None, prior_prob: float | None = 0.01) -> None:
        super().__init__()
        self.grid, self.stride = grid, int(stride)
        self.assigner = assigner or TargetAssigner()
        self.loss_fn = loss or AnchorLoss()
        self.post = post or PostProcess()
        self.register_buffer("anchors", make_anchors(grid, self.stride, anchor_sizes, anchor_rotations),
                             persistent=False)
        k = self.anchors.shape[2]
        self.num_anchors = k
        self.cls_head = nn.Conv2d(in_channels, k, 1)
        self.reg_head = nn.Conv2d(in_channels, k * 7, 1)
        self.num_dir_bins = self.assigner.num_dir_bins if use_direction else 0
        self.dir_head = nn.Conv2d(in_channels, k * self.num_dir_bins, 1) if use_direction else None
        if prior_prob is not None:
            if not 0 < prior_prob < 1:
                raise ConfigError(f"prior_prob must be in (0, 1), got {prior_prob}")
            nn.init.constant_(self.cls_head.bias, -math.log((1 - prior_prob) / prior_prob))

    def forward(self, features: torch.Tensor | BEVFeatures) -> HeadPredictions:
        """(A, C, H, W) features (or BEVFeatures on this head's grid and stride) -> predictions."""
        if isinstance(features, BEVFeatures):
            if features.grid != self.grid or features.stride != self.stride:
                raise ConfigError(f"features on grid {features.grid} at stride {features.stride}, head built for "
                                  f"{self.grid} at stride {self.stride}")
            features = features.features
        if tuple(features.shape[-2:]) != tuple(self.anchors.shape[:2]):
            raise ConfigError(f"feature map {tuple(features.shape[-2:])} does not match the head's anchor grid "
                              f"{tuple(self.anchors.shape[:2])}")
        # The three 1x1 convolutions as one: the (large) feature map is read once forward and its
        # gradient written once backward, instead of once per branch.
        convs = [self.cls_head, self.reg_head] + ([self.dir_head] if self.dir_head is not None else [])
        out = F.conv2d(features, torch.cat([c.weight for c in convs]), torch.cat([c.bias for c in convs]))
        parts = out.split([c.out_channels for c in convs], dim=1)
        return HeadPredictions(parts[0], parts[1], parts[2] if self.dir_head is not None else None)

    def targets(self, gt_boxes: Sequence[torch.Tensor]) -> AnchorTargets:
        """One (M_a, 7) ground-truth tensor per map (in that map's frame) -> anchor targets."""
        with torch.no_grad():
            return self.assigner(self.anchors, gt_boxes)

    def targets_padded(self, gt_boxes: torch.Tensor, valid: torch.Tensor) -> AnchorTargets:
        """Padded (A, M, 7) ground truth + (A, M) bool validity -> anchor targets of all maps at
        once (the batch's layout; see :meth:`TargetAssigner.assign_padded`)."""
        with torch.no_grad():
            return self.assigner.assign_padded(self.anchors, gt_boxes, valid)

    def loss(self, preds: HeadPredictions, targets: AnchorTargets) -> dict[str, torch.Tensor]:
        """Named weighted losses ``loss_cls``, ``loss_reg`` (and ``loss_dir``); their sum is the total."""
        cls, box, d = preds.flat()
        return self.loss_fn(cls, box, d, targets.to(cls.device))

    def decode_all(self, preds: HeadPredictions) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores (A, N) in [0, 1] and decoded boxes (A, N, 7) of every anchor (direction applied)."""
        cls, box, d = preds.flat()
        boxes = decode_boxes(box, self.anchors.reshape(1, -1, 7).to(box.dtype))
        if d is not None:
            yaw = apply_direction(boxes[..., 6], d.argmax(dim=-1), self.num_dir_bins, self.assigner.dir_offset)
            boxes = torch.cat([boxes[..., :6], yaw.unsqueeze(-1)], dim=-1)
        return torch.sigmoid(cls), boxes

    def confidence_map(self, preds: HeadPredictions) -> torch.Tensor:
        """(A, 1, H, W) max objectness over a cell's anchors (Where2comm's confidence map)."""
        return torch.sigmoid(preds.cls_logits).amax(dim=1, keepdim=True)

    def _filter(self, boxes: torch.Tensor) -> torch.Tensor:
        keep = torch.ones(boxes.shape[0], dtype=torch.bool, device=boxes.device)
        if self.post.max_box_extent is not None:
            hull = boxes_to_standup(boxes)
            keep &= (hull[:, 2] - hull[:, 0] <= self.post.max_box_extent)
            keep &= (hull[:, 3] - hull[:, 1] <= self.post.max_box_extent)
        z_lo, z_hi = self.post.z_range or (self.grid.lidar_range[2], self.grid.lidar_range[5])
        keep &= (boxes[:, 2] - boxes[:, 5] / 2 >= z_lo) & (boxes[:, 2] + boxes[:, 5] / 2 <= z_hi)
        return keep

    @torch.no_grad()
    def decode(self, preds: HeadPredictions, score_threshold: float = 0.2, nms_threshold: float = 0.15,
               max_detections: int | None = None) -> list[Detections]:
        """Per-map detections in each map's own frame (see module doc for the steps)."""
        scores, boxes = self.decode_all(preds)
        out = []
        for s, b in zip(scores, boxes):
            hit = s > score_threshold
            s, b = s[hit], b[hit]
            keep = self._filter(b)
            s, b = s[keep], b[keep]
            idx = nms(b, s, nms_threshold, self.post.nms_mode, self.post.pre_nms_max, max_detections)
            out.append(Detections(b[idx].double().cpu().numpy(), s[idx].double().cpu().numpy()))
        return out
