"""PointPillars LiDAR encoder: pillar feature net, scatter to a pseudo-image, 2D BEV backbone.

Lang et al., "PointPillars: Fast Encoders for Object Detection from Point Clouds" (CVPR 2019).
Each point of a pillar is decorated with its offset to the pillar's point mean (x_c, y_c, z_c)
and to the pillar's geometric centre (x_p, y_p, z_p); a shared linear+BN+ReLU layer and a max
over the pillar's points give one feature vector per pillar (the "PillarVFE" of OpenPCDet and
OpenCOOD). Pillars are scattered to their (row, col) cell of each agent's BEV canvas, and
:class:`~coperception.encoders.backbone.BEVBackbone` turns the canvas into the BEV feature map.

Two deliberate departures from OpenCOOD's PillarVFE: BatchNorm statistics and the max are taken
over **valid points only** (OpenCOOD also normalises and max-pools the zero padding, so a
pillar's feature depends on how many pad rows the voxeliser allotted), and the pillar centre's
z is the middle of the grid's z range (equal to OpenCOOD's ``zmin + vz/2`` whenever the voxel
height spans the range, as in every PointPillars config).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from coperception.encoders.backbone import BEVBackbone
from coperception.encoders.base import Encoder
from coperception.errors import ConfigError
from coperception.geometry.grid import BEVGrid
from coperception.structures.bev import BEVFeatures
from coperception.structures.cells import Pillars


class PFNLayer(nn.Module):
    """One pillar-feature layer: linear + BN + ReLU on valid points, then max over the pillar.

    A non-final layer outputs ``out_channels // 2`` per-point features concatenated with the
    pillar max (PointPillars' stacked PFN); the final layer outputs the max only.
    """

    def __init__(self, in_channels: int, out_channels: int, use_norm: bool = True, last: bool = True) -> None:
        super().__init__()
        self.last = last
        c = out_channels if last else out_channels // 2
        self.linear = nn.Linear(in_channels, c, bias=not use_norm)
        self.norm = nn.BatchNorm1d(c, eps=1e-3, momentum=0.01) if use_norm else nn.Identity()

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """x: (P, M, C_in) point features; valid: (P, M) bool -> (P, C) if last else (P, M, C)."""
        rows, cols = valid.nonzero(as_tuple=True)
        h = self.linear(x[rows, cols])
        if h.shape[0] > 1 or not self.training:  # batch statistics need two or more points
            h = self.norm(h)
        h = torch.relu(h)
        # Max over each pillar's valid points, straight from the (N, C) point rows: a zero-padded
        # (P, M, C) copy and its max would touch M / (mean points per pillar) times the memory,
        # forward and backward. ReLU >= 0, so the zero start never beats a point (ties at 0 get
        # no gradient through ReLU anyway).
        index = rows.unsqueeze(1).expand(-1, h.shape[1])
        pooled = h.new_zeros(valid.shape[0], h.shape[1]).scatter_reduce(0, index, h, "amax", include_self=True)
        if self.last:
            return pooled
        dense = h.new_zeros(*valid.shape, h.shape[-1])
        dense[rows, cols] = h
        return torch.cat([dense, pooled.unsqueeze(1).expand_as(dense)], dim=-1) * valid.unsqueeze(-1)


class PillarFeatureNet(nn.Module):
    """Decorated-point PointNet over pillars.

    Input per point: ``x, y, z, i`` (if ``use_absolute_xyz``; else ``i`` only), ``x_c, y_c, z_c``
    (offset to the pillar's point mean), ``x_p, y_p, z_p`` (offset to the pillar centre) and
    optionally the range ``|xyz|`` (``with_distance``). Output: (P, num_filters[-1]).
    """

    def __init__(self, grid: BEVGrid, num_filters: Sequence[int] = (64,), use_norm: bool = True,
                 use_absolute_xyz: bool = True, with_distance: bool = False, num_point_features: int = 4) -> None:
        super().__init__()
        if not num_filters:
            raise ConfigError("PillarFeatureNet needs at least one entry in num_filters")
        self.use_absolute_xyz, self.with_distance = use_absolute_xyz, with_distance
        c_in = num_point_features + 6 if use_absolute_xyz else num_point_features - 3 + 6
        c_in += int(with_distance)
        chans = [c_in, *map(int, num_filters)]
        self.layers = nn.ModuleList(PFNLayer(chans[i], chans[i + 1], use_norm, last=i == len(chans) - 2)
                                    for i in range(len(chans) - 1))
        r, v = grid.lidar_range, grid.voxel_size
        # Pillar centre of cell (row, col) = origin + (col, row) * voxel.
        self.register_buffer("origin", torch.tensor([r[0] + v[0] / 2, r[1] + v[1] / 2, (r[2] + r[5]) / 2]),
                             persistent=False)
        self.register_buffer("voxel", torch.tensor(v[:2]), persistent=False)
        self.out_channels = chans[-1]

    def decorate(self, pillars: Pillars) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (P, M, C_in) decorated point features (zero on pads) and the (P, M) valid mask."""
        pts = pillars.points
        m = pts.shape[1]
        valid = torch.arange(m, device=pts.device) < pillars.num_points.to(pts.device).unsqueeze(1)
        xyz = pts[..., :3] * valid.unsqueeze(-1)
        count = pillars.num_points.to(pts.dtype).clamp(min=1).view(-1, 1, 1)
        f_cluster = xyz - xyz.sum(dim=1, keepdim=True) / count
        cell = torch.stack([pillars.coords[:, 2], pillars.coords[:, 1]], dim=1).to(pts.dtype)  # (col, row) -> (x, y)
        centre_xy = self.origin[:2].to(pts.dtype) + cell * self.voxel.to(pts.dtype)
        centre = torch.cat([centre_xy, self.origin[2:].to(pts.dtype).expand(len(cell), 1)], dim=1)
        f_center = xyz - centre.unsqueeze(1)
        feats = [pts if self.use_absolute_xyz else pts[..., 3:], f_cluster, f_center]
        if self.with_distance:
            feats.append(xyz.norm(dim=-1, keepdim=True))
        return torch.cat(feats, dim=-1) * valid.unsqueeze(-1), valid

    def forward(self, pillars: Pillars) -> torch.Tensor:
        """Pillars -> (P, out_channels) pillar features."""
        x, valid = self.decorate(pillars)
        for layer in self.layers:
            x = layer(x, valid)
        return x


_CHECKED_ON_DEVICE: dict[str, bool] = {}


def _check_coords(coords: torch.Tensor, num_agents: int, h: int, w: int) -> None:
    """Pillar coords must lie on ``num_agents`` canvases of h x w (a clear error, not an index fault)."""
    if not len(coords):
        return
    lo = coords.amin(dim=0)
    hi = coords.amax(dim=0)
    outside = (lo < 0).any() | (hi[0] >= num_agents) | (hi[1] >= h) | (hi[2] >= w)
    message = (f"pillar coords [agent,row,col] outside {num_agents} agents x {h} rows x {w} cols: "
               f"voxeliser and encoder grids differ?")
    if coords.device.type == "cpu" or not _CHECKED_ON_DEVICE.get(str(coords.device), False):
        if bool(outside):  # a host sync: always on the CPU, on an accelerator for its first batch
            raise ConfigError(f"{message} (span {lo.tolist()}..{hi.tolist()})")
        _CHECKED_ON_DEVICE[str(coords.device)] = coords.device.type != "cpu"
    else:  # later batches: checked on the device, without stalling the host
        torch._assert_async(~outside, message)


def scatter_to_bev(features: torch.Tensor, coords: torch.Tensor, num_agents: int, shape: tuple[int, int]) -> torch.Tensor:
    """Place pillar features on per-agent canvases.

    features: (P, C); coords: (P, 3) int ``[agent_index, row, col]``; shape: (H, W) = (ny, nx).
    Returns (A, C, H, W) with ``out[a, :, row, col] = features[p]`` and zeros in empty cells.
    Coordinates must be unique (the voxeliser's contract).
    """
    h, w = shape
    c = features.shape[1]
    coords = coords.to(features.device).long()
    _check_coords(coords, num_agents, h, w)
    # Written straight into the channel-first layout: a (A*H*W, C) canvas would need a full
    # permute-copy of the largest tensor of the step (forward and backward).
    canvas = features.new_zeros(num_agents, c, h * w)
    canvas[coords[:, 0], :, coords[:, 1] * w + coords[:, 2]] = features
    return canvas.view(num_agents, c, h, w)


def scatter_conv2d(features: torch.Tensor, coords: torch.Tensor, num_agents: int, shape: tuple[int, int],
                   conv: nn.Conv2d) -> torch.Tensor:
    """``conv(scatter_to_bev(features, coords, num_agents, shape))`` without the canvas.

    The pseudo-image is mostly empty (a few percent to ~30% of the cells hold a pillar) and is the
    largest tensor of the step; a dense convolution spends its forward, its weight gradient and a
    full-size input gradient on zeros. Here each kernel tap ``(i, j)`` is one matmul of the
    pillars that reach an output cell through that tap with ``weight[:, :, i, j]``, added into
    the output rows: exactly the dense result (up to float summation order), and autograd's
    backward touches only pillar rows. ``conv`` must be a zero-padded, ungrouped ``nn.Conv2d``
    with integer padding. Returns (A, C_out, H_out, W_out), channel-first contiguous.
    """
    if conv.groups != 1 or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        raise ConfigError(f"scatter_conv2d needs an ungrouped, zero-padded conv with integer padding, got {conv}")
    h, w = shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = conv.kernel_size, conv.stride, conv.padding, conv.dilation
    ho, wo = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    coords = coords.to(features.device).long()
    _check_coords(coords, num_agents, h, w)
    agent, row, col = coords.unbind(dim=1)
    out = features.new_zeros(num_agents * ho * wo, conv.out_channels)
    # Output row o reads input row o * sh - ph + i * dh through tap i: a pillar in row r reaches
    # o = (r + ph - i * dh) / sh when that is a whole number in [0, ho).
    rows = [(r % sh == 0) & (r >= 0) & (r < ho * sh) for r in (row + ph - i * dh for i in range(kh))]
    cols = [(c % sw == 0) & (c >= 0) & (c < wo * sw) for c in (col + pw - j * dw for j in range(kw))]
    for i in range(kh):
        for j in range(kw):
            hit = (rows[i] & cols[j]).nonzero().squeeze(1)
            if not len(hit):
                continue
            target = (agent[hit] * ho + (row[hit] + ph - i * dh) // sh) * wo + (col[hit] + pw - j * dw) // sw
            out.index_add_(0, target, features[hit] @ conv.weight[:, :, i, j].t())
    if conv.bias is not None:
        out = out + conv.bias
    return out.view(num_agents, ho, wo, conv.out_channels).permute(0, 3, 1, 2).contiguous()


class PointPillarsEncoder(Encoder):
    """Pillars of A agents -> :class:`BEVFeatures` (A, C, H, W) at the backbone's stride.

    grid: the BEV grid (must equal the voxeliser's); vfe_filters: PillarFeatureNet widths
    (OpenCOOD: [64]); the remaining arguments go to :class:`BEVBackbone` unchanged. With the
    defaults a 0.4 m grid gives 384 channels at stride 2 (0.8 m cells).
    """

    name = "pointpillars"
    input_kind = "pillars"

    def __init__(self, grid: BEVGrid, vfe_filters: Sequence[int] = (64,), use_norm: bool = True,
                 use_absolute_xyz: bool = True, with_distance: bool = False,
                 layer_nums: Sequence[int] = (3, 5, 8), layer_strides: Sequence[int] = (2, 2, 2),
                 num_filters: Sequence[int] = (64, 128, 256), upsample_strides: Sequence[float] = (1, 2, 4),
                 num_upsample_filters: Sequence[int] = (128, 128, 128),
                 shrink_channels: int | None = None, shrink_stride: int = 1) -> None:
        super().__init__()
        self.grid = grid
        self.vfe = PillarFeatureNet(grid, vfe_filters, use_norm, use_absolute_xyz, with_distance)
        self.backbone = BEVBackbone(self.vfe.out_channels, layer_nums, layer_strides, num_filters,
                                    upsample_strides, num_upsample_filters, shrink_channels, shrink_stride)
        ny, nx = grid.feature_shape(1)
        k = self.backbone.input_multiple
        if ny % k or nx % k:
            raise ConfigError(f"grid of {ny}x{nx} cells (range {grid.lidar_range}, voxel {grid.voxel_size}) "
                              f"must be a multiple of the backbone's total stride {k}")
        self.stride: int = self.backbone.stride
        self.out_channels: int = self.backbone.out_channels

    def pseudo_image(self, pillars: Pillars) -> torch.Tensor:
        """Pillars -> (A, vfe_filters[-1], ny, nx) scattered pillar features (stride 1)."""
        return scatter_to_bev(self.vfe(pillars), pillars.coords, pillars.num_agents, self.grid.feature_shape(1))

    def forward(self, pillars: Pillars) -> BEVFeatures:
        feats = self.vfe(pillars)
        if feats.device.type == "cpu":
            # The first convolution straight from the pillars (same result, no dense canvas): on
            # the CPU the canvas' zeros cost ~1 s of a training step; accelerators keep cuDNN.
            stem = self.backbone.blocks[0][0]
            x = scatter_conv2d(feats, pillars.coords, pillars.num_agents, self.grid.feature_shape(1), stem)
            return BEVFeatures(self.backbone(x, stem_done=True), self.grid, self.stride)
        canvas = scatter_to_bev(feats, pillars.coords, pillars.num_agents, self.grid.feature_shape(1))
        return BEVFeatures(self.backbone(canvas), self.grid, self.stride)
