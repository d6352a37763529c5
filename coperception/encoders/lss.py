"""Lift-splat geometry: frustum points from camera calibrations, BEV pooling, depth targets.

Philion & Fidler, "Lift, Splat, Shoot: Encoding Images from Arbitrary Camera Rigs by Implicitly
Unprojecting to 3D" (ECCV 2020). Every image-feature cell is lifted to ``D`` points along its
pixel ray, one per depth bin; each point carries the cell's context vector weighted by the
predicted probability of its bin; points are summed into the BEV cells they fall in.

Conventions. Cameras are flattened over agents to ``M`` cameras with ``camera_agent (M,)``
giving each camera's agent. Camera frames use OpenCV axes (x right, y down, z forward);
``lidar_from_camera`` maps them to the agent's LiDAR frame (x forward, y left, z up). Pixel
coordinates are continuous: pixel (row v, col u) covers ``[u, u+1) x [v, v+1)`` (the embedded
simulator's intrinsics, principal point at ``W/2, H/2``), so resizing an image by ``s`` maps
``u -> s u`` and the intrinsics by ``diag(s_x, s_y, 1) K`` exactly. Depth is the camera-frame z.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from coperception.errors import ConfigError
from coperception.geometry.grid import BEVGrid


@dataclass(frozen=True)
class DepthBins:
    """``num`` depth bins ``[start + k step, start + (k+1) step)`` metres; a point sits at its bin centre."""

    start: float = 1.0
    stop: float = 60.0
    step: float = 1.0

    def __post_init__(self) -> None:
        if not (0 < self.start < self.stop) or self.step <= 0 or self.num < 1:
            raise ConfigError(f"depth bins need 0 < start < stop and step > 0, got "
                              f"({self.start}, {self.stop}, {self.step})")

    @property
    def num(self) -> int:
        return int(round((self.stop - self.start) / self.step))

    def centres(self, device: torch.device | str | None = None) -> torch.Tensor:
        """(D,) bin-centre depths in metres."""
        return self.start + (torch.arange(self.num, device=device, dtype=torch.float32) + 0.5) * self.step

    def index(self, depth: torch.Tensor) -> torch.Tensor:
        """Bin of each depth (int64), -1 outside ``[start, start + num * step)`` or non-finite."""
        k = torch.floor((depth - self.start) / self.step)
        ok = torch.isfinite(k) & (k >= 0) & (k < self.num)
        return torch.where(ok, k, torch.full_like(k, -1)).to(torch.int64)


def feature_pixels(feature_hw: tuple[int, int], image_hw: tuple[int, int],
                   device: torch.device | str | None = None) -> torch.Tensor:
    """(h, w, 2) pixel coordinates ``(u, v)`` of the centres of an (h, w) feature map's cells."""
    (h, w), (H, W) = feature_hw, image_hw
    v = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) * (H / h)
    u = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) * (W / w)
    vv, uu = torch.meshgrid(v, u, indexing="ij")
    return torch.stack([uu, vv], dim=-1)


def lift_points(intrinsics: torch.Tensor, lidar_from_camera: torch.Tensor, pixels: torch.Tensor,
                depths: torch.Tensor) -> torch.Tensor:
    """Frustum points in each camera's agent LiDAR frame.

    intrinsics: (M, 3, 3) of the images the pixels refer to; lidar_from_camera: (M, 4, 4);
    pixels: (h, w, 2) ``(u, v)``; depths: (D,) camera-frame z in metres. Returns (M, D, h, w, 3).
    """
    k_inv = torch.linalg.inv(intrinsics.double()).to(intrinsics.dtype)
    uv1 = torch.cat([pixels, torch.ones_like(pixels[..., :1])], dim=-1)  # (h, w, 3)
    rays = torch.einsum("mij,hwj->mhwi", k_inv, uv1)  # z component is 1: rays scale with depth
    cam = rays[:, None] * depths.view(1, -1, 1, 1, 1)  # (M, D, h, w, 3)
    rot, trans = lidar_from_camera[:, :3, :3], lidar_from_camera[:, :3, 3]
    return torch.einsum("mij,mdhwj->mdhwi", rot, cam) + trans.view(-1, 1, 1, 1, 3)


def bev_cells(points: torch.Tensor, agent: torch.Tensor, grid: BEVGrid, stride: int,
              num_agents: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat BEV cell ``(agent * H + row) * W + col`` of (P, 3) points at ``stride``, and (P,) in-range mask.

    A point counts if its x, y fall in the map's cells and ``zmin <= z < zmax``.
    """
    h, w = grid.feature_shape(stride)
    cx, cy = grid.cell_size(stride)
    r = grid.lidar_range
    col = torch.floor((points[:, 0] - r[0]) / cx).to(torch.int64)
    row = torch.floor((points[:, 1] - r[1]) / cy).to(torch.int64)
    ok = (col >= 0) & (col < w) & (row >= 0) & (row < h) & (points[:, 2] >= r[2]) & (points[:, 2] < r[5])
    ok &= (agent >= 0) & (agent < num_agents)
    return (agent * h + row) * w + col, ok


def splat(features: torch.Tensor, points: torch.Tensor, agent: torch.Tensor, grid: BEVGrid, stride: int,
          num_agents: int) -> torch.Tensor:
    """Sum-pool (P, C) point features into (A, C, H, W) BEV maps; points out of range are dropped."""
    cell, ok = bev_cells(points, agent, grid, stride, num_agents)
    h, w = grid.feature_shape(stride)
    canvas = features.new_zeros(num_agents * h * w, features.shape[1])
    canvas.index_add_(0, cell[ok], features[ok])
    return canvas.view(num_agents, h, w, -1).permute(0, 3, 1, 2).contiguous()


def splat_frustum(depth: torch.Tensor, context: torch.Tensor, points: torch.Tensor, camera_agent: torch.Tensor,
                  grid: BEVGrid, stride: int, num_agents: int) -> torch.Tensor:
    """Lift-splat of M cameras into their agents' BEV maps.

    depth: (M, D, h, w) bin probabilities; context: (M, C, h, w); points: (M, D, h, w, 3) frustum
    points; camera_agent: (M,) agent of each camera. Returns (A, C, H, W) with
    ``sum over frustum points in a cell of depth * context``. The outer product is formed only for
    the points that land in the grid, which is most of the memory saving over LSS's dense version.
    """
    m, d, h, w = depth.shape
    agent = camera_agent.view(m, 1, 1, 1).expand(m, d, h, w).reshape(-1)
    cell, ok = bev_cells(points.reshape(-1, 3), agent, grid, stride, num_agents)
    keep = ok.nonzero().squeeze(1)
    cam, rest = keep // (d * h * w), keep % (h * w)
    ctx = context.permute(0, 2, 3, 1).reshape(m * h * w, -1)
    lifted = depth.reshape(-1)[keep].unsqueeze(1) * ctx[cam * (h * w) + rest]
    H, W = grid.feature_shape(stride)
    canvas = context.new_zeros(num_agents * H * W, context.shape[1], dtype=lifted.dtype)
    canvas.index_add_(0, cell[keep], lifted)
    return canvas.view(num_agents, H, W, -1).permute(0, 3, 1, 2).contiguous()


def _camera_point_pairs(counts: torch.Tensor, camera_agent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All (camera, point) pairs where the point belongs to the camera's agent.

    counts: (A,) points per agent, points concatenated in agent order. Returns (Q,) camera and
    (Q,) point indices.
    """
    starts = torch.cumsum(counts, 0) - counts
    per_cam = counts[camera_agent]
    cam = torch.repeat_interleave(torch.arange(len(camera_agent), device=counts.device), per_cam)
    first_pair = torch.cumsum(per_cam, 0) - per_cam
    point = starts[camera_agent][cam] + torch.arange(len(cam), device=counts.device) - first_pair[cam]
    return cam, point


def depth_bin_targets(points_list: list[torch.Tensor], intrinsics: torch.Tensor, lidar_from_camera: torch.Tensor,
                      camera_agent: torch.Tensor, image_hw: tuple[int, int], feature_hw: tuple[int, int],
                      bins: DepthBins) -> torch.Tensor:
    """Depth-bin targets for depth supervision from LiDAR points.

    points_list: one (P_a, >=3) LiDAR-frame cloud per agent; intrinsics: (M, 3, 3) of the
    (resized) images of size ``image_hw``; lidar_from_camera: (M, 4, 4); camera_agent: (M,).
    Returns (M, h, w) int64: the bin of the nearest point projecting into each feature cell,
    -1 where none does (or its depth is outside the bins).
    """
    device = intrinsics.device
    counts = torch.tensor([len(p) for p in points_list], device=device)
    xyz = torch.cat([p[:, :3].to(device=device, dtype=torch.float32) for p in points_list])
    cam, point = _camera_point_pairs(counts, camera_agent.to(device))
    cam_from_lidar = torch.linalg.inv(lidar_from_camera.double()).float()
    p_cam = torch.einsum("qij,qj->qi", cam_from_lidar[cam, :3, :3], xyz[point]) + cam_from_lidar[cam, :3, 3]
    z = p_cam[:, 2]
    uvw = torch.einsum("qij,qj->qi", intrinsics[cam].float(), p_cam)
    front = z > 1e-3
    u = torch.where(front, uvw[:, 0] / z.clamp(min=1e-3), torch.full_like(z, -1.0))
    v = torch.where(front, uvw[:, 1] / z.clamp(min=1e-3), torch.full_like(z, -1.0))
    (H, W), (h, w) = image_hw, feature_hw
    ok = front & (u >= 0) & (u < W) & (v >= 0) & (v < H)
    row = torch.floor(v * (h / H)).to(torch.int64).clamp_(0, h - 1)
    col = torch.floor(u * (w / W)).to(torch.int64).clamp_(0, w - 1)
    flat = (cam * h + row) * w + col
    nearest = torch.full((len(camera_agent) * h * w,), float("inf"), device=device)
    nearest.scatter_reduce_(0, flat[ok], z[ok], "amin")
    return bins.index(nearest).view(len(camera_agent), h, w)


def depth_loss(depth_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of (M, D, h, w) depth logits against (M, h, w) bin targets, ignoring -1 (0 if none)."""
    if not bool((targets >= 0).any()):
        return depth_logits.sum() * 0.0
    return F.cross_entropy(depth_logits.float(), targets, ignore_index=-1)
