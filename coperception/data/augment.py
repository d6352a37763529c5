"""Train-time global augmentation, applied consistently to points, boxes and agent poses.

The world augmentations of SECOND (Yan et al., "SECOND: Sparsely Embedded Convolutional
Detection") as OpenPCDet / OpenCOOD configure them (``random_world_flip`` along x,
``random_world_rotation``, ``random_world_scaling``, applied in that order) are one similarity
transform ``G = s * Rz(yaw) * F`` of the ego frame, where ``F`` mirrors y when flipping.

Cooperative data has one frame per agent. Applying the same ``G`` to the content of every
frame (the ego frame's boxes, each agent's points in its own frame) and conjugating the poses,
``ego_from_agent' = G @ ego_from_agent @ inv(G)``, keeps everything consistent: a point ``p`` of
agent ``a`` lands at ``G @ ego_from_agent @ p`` in the augmented ego frame either way. The
conjugated transform is still rigid (``F`` is applied twice and the scale cancels in the
rotation), so fusion code needs no special case.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from coperception.errors import ConfigError
from coperception.geometry.pose import wrap_angle


@dataclass(frozen=True)
class AugmentConfig:
    """flip_prob: chance of mirroring y (OpenCOOD's flip 'along x'); rot_range: radians; scale_range: factors."""

    flip_prob: float = 0.5
    rot_range: tuple[float, float] = (-math.pi / 4, math.pi / 4)
    scale_range: tuple[float, float] = (0.95, 1.05)

    def __post_init__(self) -> None:
        if not 0.0 <= self.flip_prob <= 1.0:
            raise ConfigError(f"AugmentConfig.flip_prob must be in [0, 1], got {self.flip_prob}")
        if not self.rot_range[0] <= self.rot_range[1]:
            raise ConfigError(f"AugmentConfig.rot_range must be (low, high), got {self.rot_range}")
        if not 0 < self.scale_range[0] <= self.scale_range[1]:
            raise ConfigError(f"AugmentConfig.scale_range must be 0 < low <= high, got {self.scale_range}")


@dataclass(frozen=True)
class Augmentation:
    """One drawn transform: ``flip`` (mirror y), then turn by ``yaw`` (radians), then ``scale``."""

    flip: bool
    yaw: float
    scale: float

    @property
    def matrix(self) -> np.ndarray:
        """(4, 4) float64 ``G = s * Rz(yaw) * F``."""
        c, s = math.cos(self.yaw), math.sin(self.yaw)
        g = np.eye(4)
        g[:3, :3] = self.scale * np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
        if self.flip:
            g[:3, 1] *= -1.0
        return g

    def apply_points(self, points: torch.Tensor) -> torch.Tensor:
        """(P, 4) ``x, y, z, intensity`` -> augmented copy (same dtype and device)."""
        lin = torch.as_tensor(self.matrix[:3, :3], dtype=points.dtype, device=points.device)
        return torch.cat([points[:, :3] @ lin.T, points[:, 3:]], dim=1)

    def apply_boxes(self, boxes: np.ndarray) -> np.ndarray:
        """(N, 7) ``[x, y, z, l, w, h, yaw]`` -> augmented copy: centre by G, yaw mirrored/turned, sizes scaled."""
        boxes = np.asarray(boxes, dtype=np.float64)
        out = boxes.copy()
        out[:, :3] = boxes[:, :3] @ self.matrix[:3, :3].T
        out[:, 3:6] = boxes[:, 3:6] * self.scale
        heading = -boxes[:, 6] if self.flip else boxes[:, 6]
        out[:, 6] = wrap_angle(heading + self.yaw)
        return out

    def conjugate(self, transforms: np.ndarray) -> np.ndarray:
        """(A, 4, 4) ``ego_from_agent`` -> ``G @ T @ inv(G)``, still rigid."""
        g = self.matrix
        return g @ np.asarray(transforms, dtype=np.float64) @ np.linalg.inv(g)


def sample_augmentation(config: AugmentConfig, rng: np.random.Generator) -> Augmentation:
    """Draw flip, yaw and scale from ``config``."""
    flip = bool(rng.random() < config.flip_prob)
    yaw = float(rng.uniform(*config.rot_range))
    scale = float(rng.uniform(*config.scale_range))
    return Augmentation(flip, yaw, scale)
