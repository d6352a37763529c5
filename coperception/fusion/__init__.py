"""Fusion: combine the ego's perception with what other agents sent.

* intermediate (BEV maps): :data:`FUSIONS` maps a method name to a :class:`BEVFusion` class,
  built as ``FUSIONS[name](grid, stride, **options)`` and called as
  ``forward(features (sum_A, C, H, W), agents_per_sample (B,), ego_from_agent (sum_A, 4, 4),
  mask (sum_A, 1, H, W) | None, scores (sum_A, 1, H, W) | None) -> (B, C, H, W)`` (agents of a
  sample contiguous, ego first; ``scores``, the per-agent detection logits, only for a module
  whose ``needs_scores`` is true).
  :class:`MultiScaleFusion` runs one of them per backbone level.
* early (points): :func:`fuse_points`.
* late (boxes): :func:`fuse_detections` / :class:`LateFusion`.
"""

from coperception.fusion.early import fuse_points
from coperception.fusion.intermediate import (
                                              AttentionFusion,
                                              BEVFusion,
                                              ConfidenceFusion,
                                              FCooperFusion,
                                              MaxFusion,
                                              MultiScaleFusion,
                                              Where2commFusion,
                                              stack_agents,
)
from coperception.fusion.late import LateFusion, fuse_detections, fuse_received_boxes
from coperception.geometry.warp import warp_to_ego, warp_with_valid

#: Intermediate (BEV-map) fusion methods by name.
FUSIONS: dict[str, type[BEVFusion]] = {
    "max": MaxFusion,
    "fcooper": FCooperFusion,
    "attention": AttentionFusion,
    "where2comm": Where2commFusion,
    "confidence": ConfidenceFusion,
}

__all__ = ["FUSIONS", "AttentionFusion", "BEVFusion", "ConfidenceFusion", "FCooperFusion", "LateFusion", "MaxFusion",
           "MultiScaleFusion", "Where2commFusion", "fuse_detections", "fuse_points", "fuse_received_boxes", "stack_agents", "warp_to_ego",
           "warp_with_valid"]
