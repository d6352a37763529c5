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

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from coperception.encoders.backbone import BEVBackbone
from coperception.encoders.base import Encoder
from coperception.encoders.lss import DepthBins, feature_pixels, lift_points, splat_frustum
from coperception.errors import ConfigError
from coperception.geometry.grid import BEVGrid
from coperception.structures.bev import BEVFeatures
from coperception.structures.camera import CameraBatch


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


class CameraEncoder(Encoder):
    """Camera images of A agents -> :class:`BEVFeatures` (A, C, H, W) at ``splat_stride * backbone stride``.

    grid: the BEV grid (its z range bounds the frustum points kept); image_channels / neck_channels:
    :class:`ImageBackbone`; context_channels: C of the lifted features; depth_bins: (start, stop,
    step) metres (LSS: 4-45 m, here 1-60 m); splat_stride: grid cells per pooled cell. The
    remaining arguments go to :class:`BEVBackbone` (defaults = PointPillars', hence the same
    stride 2 and 384 channels on the same grid).
    """

    name = "camera"
    input_kind = "cameras"

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
