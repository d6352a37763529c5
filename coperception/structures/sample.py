"""One frame ready for a detector (a sample) and its ground truth as tensors.

Made by :class:`coperception.data.dataset.CooperativeDataset` and batched by
:func:`coperception.data.collate.collate_samples` into a
:class:`~coperception.structures.batch.CooperativeBatch`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from coperception.structures.camera import CameraSample
from coperception.structures.cells import Pillars, Voxels
from coperception.structures.records import ObjectSet


@dataclass
class Targets:
    """Ground-truth objects as tensors. boxes: (N, 7) float32; ids, classes: (N,) int64."""

    boxes: torch.Tensor
    ids: torch.Tensor
    classes: torch.Tensor

    @staticmethod
    def from_objects(objects: ObjectSet) -> "Targets":
        return Targets(torch.from_numpy(objects.boxes.astype(np.float32)), torch.from_numpy(objects.ids),
                       torch.from_numpy(objects.classes))


@dataclass
class CooperativeSample:
    """One frame ready for a detector.

    agent_ids: the A agents used, ego first.
    is_infrastructure: (A,) bool.
    ego_from_agent: (A, 4, 4) float32, noisy poses (what fusion must use).
    ego_from_agent_clean: (A, 4, 4) float32, true poses.
    gt: ground truth in the ego frame.
    cells: pillars / voxels of the clouds (only with ``voxelize_in="sample"``): one cloud per agent
        (intermediate, late) or one fused ego-frame cloud (early); cell agent index = cloud index.
    points: the clouds, (P_c, 4) each, when asked for (``return_points``) or not voxelised.
    agent_gt: late fusion: each agent's ground truth in its own frame; else None.
    cameras: the agents' modalities, images and calibrations when the dataset's ``modality`` uses
        cameras (see :mod:`coperception.data.cameras`); None: every agent is LiDAR-only.
    world_from_agent: (A, 4, 4) float64 world poses as the agents announce them (pose noise
        included, the ego's exact; not augmented): what messages carry, so that a stale message
        can be warped with the pose it was captured at.
    """

    key: tuple[str, int]
    fusion: str
    agent_ids: tuple[str, ...]
    is_infrastructure: torch.Tensor
    ego_from_agent: torch.Tensor
    ego_from_agent_clean: torch.Tensor
    gt: Targets
    cells: Pillars | Voxels | None
    points: list[torch.Tensor] | None
    agent_gt: list[Targets] | None
    cameras: CameraSample | None = None
    world_from_agent: torch.Tensor | None = None

    @property
    def num_agents(self) -> int:
        return len(self.agent_ids)

    @property
    def num_clouds(self) -> int:
        return 1 if self.fusion == "early" else len(self.agent_ids)
