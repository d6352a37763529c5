"""Late fusion: every agent's detections, moved into the ego frame, merged by NMS.

The object-level baseline of cooperative perception (OpenCOOD's ``late`` fusion, as in "OPV2V: An
Open Benchmark Dataset and Fusion Pipeline for Perception with Vehicle-to-Vehicle
Communication"): each agent detects on its own data and sends its boxes; the ego projects them
with ``ego_from_agent`` (:func:`coperception.geometry.boxes.transform_boxes`: rigid centre,
``yaw += yaw of the transform``), concatenates all agents' boxes and runs greedy rotated BEV NMS
(:func:`coperception.geometry.nms.nms`, IoU threshold 0.15 and the top 1000 boxes as in OpenCOOD).
NMS is class-aware by default: boxes of different labels are moved apart before NMS so that they
never suppress each other. An optional range filter keeps boxes whose 8 corners lie inside the
ego's range, as OpenCOOD does after NMS.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from coperception.errors import ConfigError
from coperception.geometry.boxes import boxes_in_range_mask, transform_boxes
from coperception.geometry.nms import nms
from coperception.structures.records import Detections


def _separate_labels(boxes: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Shift boxes along x by label * (a span wider than all boxes) so labels cannot overlap."""
    reach = np.abs(boxes[:, :2]).max() + np.hypot(boxes[:, 3], boxes[:, 4]).max()
    moved = boxes.copy()
    moved[:, 0] += labels * (4.0 * reach + 1.0)
    return moved


def fuse_detections(detections: Sequence[Detections], ego_from_agent: np.ndarray, iou_threshold: float = 0.15,
                    class_aware: bool = True, pre_max_size: int | None = 1000,
                    lidar_range: Sequence[float] | None = None, range_use_z: bool = False) -> Detections:
    """Merge per-agent detections into one ego-frame set.

    detections: A per-agent :class:`Detections`, each in its agent's LiDAR frame.
    ego_from_agent: (A, 4, 4) agent -> ego transforms (the ego's own is the identity).
    iou_threshold: NMS suppresses a box overlapping a kept, higher-scoring one with BEV IoU above it.
    class_aware: NMS per label (True) or across labels (False, OpenCOOD's single-class setting).
    pre_max_size: only the top-scoring boxes of all agents enter NMS (None: all).
    lidar_range: if given, keep only boxes with all 8 corners inside (x, y only unless range_use_z).
    Returns :class:`Detections` in the ego frame, by decreasing score.
    """
    tfm = np.asarray(ego_from_agent, dtype=np.float64)
    if tfm.shape != (len(detections), 4, 4):
        raise ValueError(f"ego_from_agent must be ({len(detections)}, 4, 4) for {len(detections)} detection sets, "
                         f"got shape {tfm.shape}")
    counts = [len(d) for d in detections]
    if sum(counts) == 0:
        return Detections(np.zeros((0, 7)), np.zeros(0), np.zeros(0, np.int64))
    owner = np.repeat(np.arange(len(detections)), counts)
    local = np.concatenate([d.boxes for d in detections])
    boxes = transform_boxes(tfm[owner], local[:, None, :])[:, 0]
    scores = np.concatenate([d.scores for d in detections])
    labels = np.concatenate([d.labels for d in detections])

    nms_boxes = _separate_labels(boxes, labels) if class_aware else boxes
    kept = nms(torch.from_numpy(nms_boxes), torch.from_numpy(scores), iou_threshold,
               pre_max_size=pre_max_size).numpy()
    fused = Detections(boxes[kept], scores[kept], labels[kept])
    if lidar_range is None or len(fused) == 0:
        return fused
    inside = boxes_in_range_mask(fused.boxes, lidar_range, min_corners=8, use_z=range_use_z)
    return Detections(fused.boxes[inside], fused.scores[inside], fused.labels[inside])


def fuse_received_boxes(own: Detections, received: Sequence[tuple[Detections, np.ndarray]], beta: float = 1.0,
                        iou_threshold: float = 0.15) -> Detections:
    """The ego's detections plus boxes that collaborators sent, merged by NMS in the ego frame.

    own: the ego's (or its intermediate-fused) detections, ego frame.
    received: (detections in the sender's frame, (4, 4) ego_from_sender) per message.
    beta: received scores are multiplied by it before NMS -- CoSDH's confidence-aware hybrid
        (``confidence_beta`` 0.8 on DAIR-V2X, 0.9 on OPV2V) trusts the ego's fused boxes more;
        1.0 is plain late fusion.
    """
    if not received:
        return own
    sets = [own] + [Detections(d.boxes, d.scores * beta, d.labels) for d, _ in received]
    poses = np.stack([np.eye(4)] + [np.asarray(pose, dtype=np.float64) for _, pose in received])
    return fuse_detections(sets, poses, iou_threshold=iou_threshold)


class LateFusion:
    """:func:`fuse_detections` with its settings fixed at construction (see there for the meaning)."""

    def __init__(self, iou_threshold: float = 0.15, class_aware: bool = True, pre_max_size: int | None = 1000,
                 lidar_range: Sequence[float] | None = None, range_use_z: bool = False) -> None:
        if not 0.0 <= float(iou_threshold) <= 1.0:
            raise ConfigError(f"late fusion iou_threshold must be in [0, 1], got {iou_threshold}")
        if pre_max_size is not None and int(pre_max_size) < 1:
            raise ConfigError(f"late fusion pre_max_size must be >= 1 or None, got {pre_max_size}")
        if lidar_range is not None and len(lidar_range) != 6:
            raise ConfigError(f"late fusion lidar_range needs 6 values, got {list(lidar_range)}")
        self.iou_threshold = float(iou_threshold)
        self.class_aware = bool(class_aware)
        self.pre_max_size = None if pre_max_size is None else int(pre_max_size)
        self.lidar_range = None if lidar_range is None else tuple(float(v) for v in lidar_range)
        self.range_use_z = bool(range_use_z)

    def __call__(self, detections: Sequence[Detections], ego_from_agent: np.ndarray) -> Detections:
        return fuse_detections(detections, ego_from_agent, self.iou_threshold, self.class_aware,
                               self.pre_max_size, self.lidar_range, self.range_use_z)
