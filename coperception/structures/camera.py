"""The camera part of a batch: every agent's images, intrinsics and mounts, padded and normalised.

Built by :func:`camera_batch` from :class:`~coperception.structures.records.Camera` records (the
dataset and the closed loop) and read by the camera encoders (lift-splat).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from coperception.errors import ConfigError
from coperception.structures.records import AgentObservation


def scale_intrinsics(intrinsics: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) K of the original images and (..., 2) resize factors (s_x, s_y) -> K of the resized ones."""
    s = torch.cat([scale, torch.ones_like(scale[..., :1])], dim=-1)
    return intrinsics * s.unsqueeze(-1)


#: Per-channel RGB mean and std used to normalise images (the usual ImageNet statistics).
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)


@dataclass
class CameraBatch:
    """The cameras of A agents, padded to N cameras each.

    images: (A, N, 3, H, W) float, RGB in [0, 1] normalised by :data:`IMAGE_MEAN` / :data:`IMAGE_STD`.
    intrinsics: (A, N, 3, 3) K of the **original** images (as in ``Camera.intrinsic``).
    lidar_from_camera: (A, N, 4, 4) camera (OpenCV axes) -> agent LiDAR frame.
    image_scale: (A, N, 2) resize factors ``(W / W0, H / H0)`` from the original images to (H, W);
        a float or a pair is broadcast.
    camera_mask: (A, N) bool, False for padding; None means every camera is real.
    """

    images: torch.Tensor
    intrinsics: torch.Tensor
    lidar_from_camera: torch.Tensor
    image_scale: torch.Tensor | float | tuple[float, float] = 1.0
    camera_mask: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.images.ndim != 5 or self.images.shape[2] != 3:
            raise ConfigError(f"CameraBatch.images must be (A, N, 3, H, W), got {tuple(self.images.shape)}")
        a, n = self.images.shape[:2]
        if self.intrinsics.shape != (a, n, 3, 3) or self.lidar_from_camera.shape != (a, n, 4, 4):
            raise ConfigError(f"CameraBatch needs intrinsics (A, N, 3, 3) and lidar_from_camera (A, N, 4, 4) for "
                              f"images {tuple(self.images.shape)}, got {tuple(self.intrinsics.shape)} and "
                              f"{tuple(self.lidar_from_camera.shape)}")
        device = self.images.device
        scale = torch.as_tensor(self.image_scale, dtype=torch.float32, device=device)
        try:
            self.image_scale = scale.expand(a, n, 2).contiguous()
        except RuntimeError:
            raise ConfigError(f"CameraBatch.image_scale must broadcast to (A, N, 2) = {(a, n, 2)}, "
                              f"got shape {tuple(scale.shape)}") from None
        if self.camera_mask is None:
            self.camera_mask = torch.ones(a, n, dtype=torch.bool, device=device)
        elif self.camera_mask.shape != (a, n):
            raise ConfigError(f"CameraBatch.camera_mask must be (A, N) = {(a, n)}, got {tuple(self.camera_mask.shape)}")

    @property
    def num_agents(self) -> int:
        return int(self.images.shape[0])

    @property
    def image_hw(self) -> tuple[int, int]:
        return int(self.images.shape[-2]), int(self.images.shape[-1])

    def to(self, device: torch.device | str) -> "CameraBatch":
        return CameraBatch(self.images.to(device), self.intrinsics.to(device), self.lidar_from_camera.to(device),
                           self.image_scale.to(device), self.camera_mask.to(device))

    def flat_cameras(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The M real cameras: images (M, 3, H, W), resized K (M, 3, 3), lidar_from_camera (M, 4, 4), agent (M,)."""
        mask = self.camera_mask.to(self.images.device)
        k = scale_intrinsics(self.intrinsics.float(), self.image_scale)
        agent = mask.nonzero()[:, 0]
        return self.images[mask], k[mask], self.lidar_from_camera.float()[mask], agent


def camera_batch(observations: Sequence[AgentObservation], image_hw: tuple[int, int],
                 device: torch.device | str = "cpu") -> CameraBatch:
    """Stack the agents' cameras, resized to ``image_hw`` (bilinear, antialiased) and normalised.

    Agents with fewer cameras are padded; each camera needs an image.
    """
    n = max((len(o.cameras) for o in observations), default=0)
    a, (H, W) = len(observations), image_hw
    images = torch.zeros(a, max(n, 1), 3, H, W)
    intr = torch.eye(3).repeat(a, max(n, 1), 1, 1)
    pose = torch.eye(4).repeat(a, max(n, 1), 1, 1)
    scale = torch.ones(a, max(n, 1), 2)
    mask = torch.zeros(a, max(n, 1), dtype=torch.bool)
    mean, std = torch.tensor(IMAGE_MEAN).view(3, 1, 1), torch.tensor(IMAGE_STD).view(3, 1, 1)
    for i, obs in enumerate(observations):  # a handful of cameras: per-image resize is the natural unit
        for j, cam in enumerate(obs.cameras):
            if cam.image is None:
                raise ConfigError(f"agent {obs.agent_id} camera {cam.name} has no image")
            img = torch.as_tensor(cam.image).permute(2, 0, 1).float().div(255.0)
            h0, w0 = img.shape[-2:]
            img = F.interpolate(img[None], size=(H, W), mode="bilinear", align_corners=False, antialias=True)[0]
            images[i, j] = (img - mean) / std
            intr[i, j] = torch.as_tensor(cam.intrinsic, dtype=torch.float32)
            pose[i, j] = torch.as_tensor(cam.lidar_from_camera, dtype=torch.float32)
            scale[i, j] = torch.tensor([W / w0, H / h0])
            mask[i, j] = True
    return CameraBatch(images, intr, pose, scale, mask).to(device)


@dataclass
class CameraSample:
    """The camera side of one sample of A agents, padded to N cameras each.

    images: (A, N, 3, H, W) uint8 RGB resized to ``image_hw``; intrinsics: (A, N, 3, 3) float32
    K of the original images; lidar_from_camera: (A, N, 4, 4) float32; image_scale: (A, N, 2)
    ``(W / W0, H / H0)``; camera_mask: (A, N) bool (False: padding, or an agent that does not use
    cameras); depth: (A, N, H, W) float32 metres, 0 = no target, or None; has_lidar, has_camera:
    (A,) bool, the agents' modalities.
    """

    images: torch.Tensor
    intrinsics: torch.Tensor
    lidar_from_camera: torch.Tensor
    image_scale: torch.Tensor
    camera_mask: torch.Tensor
    depth: torch.Tensor | None
    has_lidar: torch.Tensor
    has_camera: torch.Tensor

    def augmented(self, matrix: np.ndarray) -> "CameraSample":
        """Extrinsics moved by a (4, 4) global augmentation ``G`` (or one (A, 4, 4) change of
        frame per agent): ``G @ lidar_from_camera``."""
        g = torch.as_tensor(matrix, dtype=torch.float64)
        g = g[:, None] if g.ndim == 3 else g
        return replace(self, lidar_from_camera=(g @ self.lidar_from_camera.double()).float())
