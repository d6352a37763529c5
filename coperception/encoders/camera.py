"""Camera encoder: lift-splat-shoot from an agent's cameras to a BEV feature map.

Philion & Fidler, "Lift, Splat, Shoot: Encoding Images from Arbitrary Camera Rigs by Implicitly
Unprojecting to 3D" (ECCV 2020), the m2/m4 modality of HEAL. A small ResNet-style image backbone
(written here, trained from scratch) gives features at 1/8 of the image; a 1x1 head predicts a
distribution over ``D`` depth bins and a context vector per cell; :mod:`coperception.encoders.lss`
lifts cells to frustum points in the agent's LiDAR frame and sum-pools them into the BEV grid;
:class:`~coperception.encoders.backbone.BEVBackbone` turns the pooled map into the output.

Heterogeneous agents. Each agent is encoded by the encoder of its own sensor (cameras here,
LiDAR by PointPillars or SECOND). Built on the same :class:`BEVGrid` with the same 2D backbone
settings, a camera encoder's :class:`BEVFeatures` has the stride, channels and cells of
PointPillars' (defaults: stride 2, 384 channels), so the per-modality maps can be concatenated
along A in the frame's agent order and fused. Within a :class:`CameraBatch`, agents with fewer
cameras are padded (``camera_mask`` False): padded cameras are skipped, and an agent with no
camera at all gets an empty (all-zero) pooled map.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from coperception.data.records import AgentObservation
from coperception.encoders.backbone import BEVBackbone
from coperception.encoders.base import BEVFeatures
from coperception.encoders.lss import DepthBins, feature_pixels, lift_points, scale_intrinsics, splat_frustum
from coperception.errors import ConfigError
from coperception.geometry.grid import BEVGrid

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


def _conv_bn(c_in: int, c_out: int, k: int = 3, stride: int = 1, relu: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, k, stride, k // 2, bias=False), nn.BatchNorm2d(c_out)]
    return nn.Sequential(*layers, nn.ReLU(inplace=True)) if relu else nn.Sequential(*layers)


class BasicBlock(nn.Module):
    """ResNet basic block (He et al., "Deep Residual Learning for Image Recognition")."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv_bn(c_in, c_out, 3, stride), _conv_bn(c_out, c_out, 3, 1, relu=False))
        self.skip = (nn.Identity() if stride == 1 and c_in == c_out else _conv_bn(c_in, c_out, 1, stride, relu=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.skip(x))


class ImageBackbone(nn.Module):
    """Stem (stride 2) and one stride-2 stage per further entry of ``channels``; the last stage is
    upsampled x2 and merged with the one before (LSS's "up" block).

    ``forward``: (M, 3, H, W) -> (M, out_channels, H / stride, W / stride), ``stride = 2 ** (len(channels) - 1)``.
    """

    def __init__(self, channels: Sequence[int] = (32, 64, 128, 256), out_channels: int = 128) -> None:
        super().__init__()
        if len(channels) < 2:
            raise ConfigError(f"image backbone needs at least 2 stages, got channels {list(channels)}")
        c = [int(x) for x in channels]
        self.stem = nn.Sequential(_conv_bn(3, c[0], 3, 2), BasicBlock(c[0], c[0]))
        self.stages = nn.ModuleList(nn.Sequential(BasicBlock(c[i - 1], c[i], 2), BasicBlock(c[i], c[i]))
                                    for i in range(1, len(c)))
        self.merge = nn.Sequential(_conv_bn(c[-1] + c[-2], out_channels), _conv_bn(out_channels, out_channels))
        self.stride = 2 ** (len(c) - 1)
        self.out_channels = int(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [self.stem(x)]
        for stage in self.stages:
            feats.append(stage(feats[-1]))
        up = F.interpolate(feats[-1], size=feats[-2].shape[-2:], mode="bilinear", align_corners=False)
        return self.merge(torch.cat([up, feats[-2]], dim=1))


class CameraEncoder(nn.Module):
    """Camera images of A agents -> :class:`BEVFeatures` (A, C, H, W) at ``splat_stride * backbone stride``.

    grid: the BEV grid (its z range bounds the frustum points kept); image_channels / neck_channels:
    :class:`ImageBackbone`; context_channels: C of the lifted features; depth_bins: (start, stop,
    step) metres (LSS: 4-45 m, here 1-60 m); splat_stride: grid cells per pooled cell. The
    remaining arguments go to :class:`BEVBackbone` (defaults = PointPillars', hence the same
    stride 2 and 384 channels on the same grid).
    """

    def __init__(self, grid: BEVGrid, image_channels: Sequence[int] = (32, 64, 128, 256), neck_channels: int = 128,
                 context_channels: int = 64, depth_bins: Sequence[float] = (1.0, 60.0, 1.0), splat_stride: int = 1,
                 layer_nums: Sequence[int] = (3, 5, 8), layer_strides: Sequence[int] = (2, 2, 2),
                 num_filters: Sequence[int] = (64, 128, 256), upsample_strides: Sequence[float] = (1, 2, 4),
                 num_upsample_filters: Sequence[int] = (128, 128, 128),
                 shrink_channels: int | None = None, shrink_stride: int = 1) -> None:
        super().__init__()
        if len(depth_bins) != 3:
            raise ConfigError(f"depth_bins must be (start, stop, step) metres, got {list(depth_bins)}")
        if int(splat_stride) < 1:
            raise ConfigError(f"splat_stride must be >= 1, got {splat_stride}")
        self.grid, self.splat_stride = grid, int(splat_stride)
        self.bins = DepthBins(*map(float, depth_bins))
        self.context_channels = int(context_channels)
        self.image_net = ImageBackbone(image_channels, neck_channels)
        self.depth_head = nn.Conv2d(neck_channels, self.bins.num + self.context_channels, 1)
        self.backbone = BEVBackbone(self.context_channels, layer_nums, layer_strides, num_filters, upsample_strides,
                                    num_upsample_filters, shrink_channels, shrink_stride)
        h, w = grid.feature_shape(self.splat_stride)
        k = self.backbone.input_multiple
        if grid.ny % self.splat_stride or grid.nx % self.splat_stride or h % k or w % k:
            raise ConfigError(f"grid of {grid.ny}x{grid.nx} cells (range {grid.lidar_range}, voxel {grid.voxel_size}) "
                              f"must be a multiple of splat_stride {self.splat_stride} x backbone stride {k}")
        self.stride: int = self.splat_stride * self.backbone.stride
        self.out_channels: int = self.backbone.out_channels

    @property
    def feature_stride(self) -> int:
        """Image pixels per image-feature cell."""
        return self.image_net.stride

    def feature_hw(self, image_hw: tuple[int, int]) -> tuple[int, int]:
        s = self.feature_stride
        if image_hw[0] % s or image_hw[1] % s:
            raise ConfigError(f"image size {image_hw} must be a multiple of the image backbone stride {s}")
        return image_hw[0] // s, image_hw[1] // s

    def lift_splat(self, batch: CameraBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """-> pooled BEV (A, context_channels, ny/s, nx/s) and depth logits (M, D, h, w) of the M real cameras."""
        images, k, lidar_from_cam, agent = batch.flat_cameras()
        fh, fw = self.feature_hw(batch.image_hw)
        out = self.depth_head(self.image_net(images)) if len(images) else images.new_zeros(
            0, self.bins.num + self.context_channels, fh, fw)
        logits, context = out[:, :self.bins.num], out[:, self.bins.num:]
        with torch.no_grad():  # pure geometry of the calibrations
            pix = feature_pixels((fh, fw), batch.image_hw, images.device)
            points = lift_points(k, lidar_from_cam, pix, self.bins.centres(images.device))
        bev = splat_frustum(logits.softmax(dim=1), context, points, agent, self.grid, self.splat_stride,
                            batch.num_agents)
        return bev, logits

    def forward_with_depth(self, batch: CameraBatch) -> tuple[BEVFeatures, torch.Tensor]:
        """BEV features and the (M, D, h, w) depth logits (for :func:`~coperception.encoders.lss.depth_loss`)."""
        bev, logits = self.lift_splat(batch)
        return BEVFeatures(self.backbone(bev), self.grid, self.stride), logits

    def forward(self, batch: CameraBatch) -> BEVFeatures:
        return self.forward_with_depth(batch)[0]
