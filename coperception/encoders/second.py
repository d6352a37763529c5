"""SECOND LiDAR encoder: mean VFE, sparse 3D conv backbone, height-to-channels, 2D BEV backbone.

Yan, Mao & Li, "SECOND: Sparsely Embedded Convolutional Detection" (Sensors 2018), in the form of
OpenPCDet's ``MeanVFE`` + ``VoxelBackBone8x`` + ``HeightCompression`` that HEAL uses for its m3
modality. Each voxel's feature is the mean of its points (x, y, z, intensity); a submanifold
input conv and four stages (each a strided sparse conv, except the first, followed by
submanifold blocks) reduce x, y by 8 and z by about 16; a last sparse conv with a z-only kernel
squeezes the remaining height. The sparse result is made dense, its height folded into the
channels, and :class:`~coperception.encoders.backbone.BEVBackbone` produces the BEV map.

Two interchangeable sparse-conv backends run the same weights (see
:mod:`coperception.encoders.sparse_conv`): spconv (``spconv.pytorch``) and a pure-torch one that
also runs on CUDA machines without spconv's CUDA wheels. Choose with ``backend``.
"""

from __future__ import annotations

import functools
import logging
from typing import Sequence

import torch
from torch import nn

from coperception.encoders.backbone import BEVBackbone
from coperception.encoders.base import Encoder
from coperception.encoders.sparse_conv import (
    SparseBNReLU,
    SparseConv3d,
    SparseConvBlock,
    SparseTensor,
    conv_output_shape,
    sparse_to_dense,
)
from coperception.errors import ConfigError
from coperception.geometry.grid import BEVGrid
from coperception.structures.bev import BEVFeatures
from coperception.structures.cells import Voxels

log = logging.getLogger(__name__)

BACKENDS = ("auto", "spconv", "torch")


@functools.lru_cache(maxsize=None)
def spconv_usable(device_type: str) -> bool:
    """True if ``spconv.pytorch`` imports and its build supports ``device_type`` ("cpu"/"cuda")."""
    try:
        import spconv.pytorch  # noqa: F401
        from spconv.cppconstants import CPU_ONLY_BUILD
    except Exception as exc:  # an absent or broken install (ImportError, OSError from its .so, ...)
        log.debug("spconv unavailable: %s", exc)
        return False
    return device_type == "cpu" or (device_type == "cuda" and not CPU_ONLY_BUILD)


def resolve_backend(backend: str, device: torch.device) -> str:
    """"spconv" or "torch" for ``backend`` in :data:`BACKENDS` on ``device``.

    "auto" takes spconv only on CUDA with a CUDA build of spconv, and the torch backend otherwise.
    On CPU spconv 2.3.8 is not fit for training: its backward calls ``torch.cuda.current_stream()``
    (fails under CPU-only torch) and its CPU kernels lose updates when torch runs several threads.
    "spconv" forces it where it imports (on CPU for inference and for cross-checks).
    """
    if backend not in BACKENDS:
        raise ConfigError(f"SECOND backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        return "torch"
    if backend == "spconv":
        if not spconv_usable(device.type):
            raise ConfigError(f"SECOND backend 'spconv' requested but spconv is not importable or has no "
                              f"{device.type} support; use backend 'torch' or 'auto'")
        return "spconv"
    return "spconv" if device.type == "cuda" and spconv_usable("cuda") else "torch"


def mean_vfe(voxels: Voxels) -> torch.Tensor:
    """(V, 4) mean of each voxel's valid points (pads are zero, so a sum over M suffices)."""
    count = voxels.num_points.to(voxels.points.dtype).clamp(min=1).unsqueeze(1)
    return voxels.points.sum(dim=1) / count


class VoxelBackbone3D(nn.Module):
    """Sparse 3D backbone (OpenPCDet ``VoxelBackBone8x``, channels configurable).

    channels: per stage (16, 32, 64, 64); stage 0 is the submanifold input conv plus
        ``blocks[0]`` submanifold blocks, stage i > 0 a 3x3x3 stride-2 sparse conv (z padding 0 in
        the last of >= 3 stages when its input depth is >= 3, as in OpenPCDet) plus ``blocks[i]`` submanifold blocks.
    out_channels: channels of the final z-squeezing conv (128): kernel (min(3, D), 1, 1), stride
        (2 if D >= 3 else 1, 1, 1), no padding, where D is the depth reaching it.
    The input depth is ``nz + 1`` (OpenPCDet's padding so 40 z voxels give 41 -> 21 -> 11 -> 5 -> 2).
    """

    def __init__(self, in_channels: int, grid_shape_zyx: Sequence[int], channels: Sequence[int] = (16, 32, 64, 64),
                 blocks: Sequence[int] = (1, 2, 2, 2), out_channels: int = 128) -> None:
        super().__init__()
        if len(channels) != len(blocks) or not channels:
            raise ConfigError(f"sparse channels {list(channels)} and blocks {list(blocks)} must be non-empty "
                              f"and of equal length")
        nz, ny, nx = (int(s) for s in grid_shape_zyx)
        self.input_shape = (nz + 1, ny, nx)
        shape = self.input_shape
        self.stages = nn.ModuleList()
        c_prev = int(in_channels)
        for i, (c, n) in enumerate(zip(map(int, channels), map(int, blocks))):
            key = f"subm{i + 1}"
            if i == 0:
                layers = [SparseConvBlock(c_prev, c, 3, subm=True, indice_key=key)]
            else:
                last = i == len(channels) - 1 and i > 1
                pad = (0, 1, 1) if last and shape[0] >= 3 else 1
                layers = [SparseConvBlock(c_prev, c, 3, stride=2, padding=pad, indice_key=f"spconv{i + 1}")]
                shape = conv_output_shape(shape, (3, 3, 3), (2, 2, 2), _pad3(pad), (1, 1, 1))
            layers += [SparseConvBlock(c, c, 3, subm=True, indice_key=key) for _ in range(n)]
            self.stages.append(nn.Sequential(*layers))
            c_prev = c
        kz = min(3, shape[0])
        sz = 2 if shape[0] >= 3 else 1
        self.conv_out = nn.Sequential(
            SparseConv3d(c_prev, int(out_channels), (kz, 1, 1), (sz, 1, 1), 0, indice_key="spconv_down"),
            SparseBNReLU(int(out_channels)))
        self.output_shape = conv_output_shape(shape, (kz, 1, 1), (sz, 1, 1), (0, 0, 0), (1, 1, 1))
        self.stride = 2 ** (len(channels) - 1)
        self.out_channels = int(out_channels)
        self.bev_channels = self.out_channels * self.output_shape[0]

    def forward(self, x):
        """Sparse tensor of either backend -> sparse tensor at ``output_shape``."""
        for stage in self.stages:
            x = stage(x)
        return self.conv_out(x)


def _pad3(p: int | tuple[int, int, int]) -> tuple[int, int, int]:
    return (p, p, p) if isinstance(p, int) else p


class SECONDEncoder(Encoder):
    """Voxels of A agents -> :class:`BEVFeatures` (A, C, H, W) at stride ``8 * backbone stride``.

    grid: the voxel grid (must equal the voxeliser's; HEAL m3: 0.1 m voxels). sparse_channels /
        sparse_blocks / sparse_out_channels: :class:`VoxelBackbone3D`. backend: "auto" (spconv on
        CUDA when a CUDA build imports, else torch; see :func:`resolve_backend`), "spconv" or "torch".
    The remaining arguments go to :class:`BEVBackbone`, whose input has
    ``sparse_out_channels * D_out`` channels. The defaults give 384 channels at stride 8, i.e.
    0.8 m cells on a 0.1 m grid: the same map geometry as PointPillars' defaults on a 0.4 m grid.
    """

    name = "second"
    input_kind = "voxels"

    def __init__(self, grid: BEVGrid, sparse_channels: Sequence[int] = (16, 32, 64, 64),
                 sparse_blocks: Sequence[int] = (1, 2, 2, 2), sparse_out_channels: int = 128,
                 num_point_features: int = 4, backend: str = "auto",
                 layer_nums: Sequence[int] = (5, 5), layer_strides: Sequence[int] = (1, 2),
                 num_filters: Sequence[int] = (128, 256), upsample_strides: Sequence[float] = (1, 2),
                 num_upsample_filters: Sequence[int] = (192, 192),
                 shrink_channels: int | None = None, shrink_stride: int = 1) -> None:
        super().__init__()
        if backend not in BACKENDS:
            raise ConfigError(f"SECOND backend must be one of {BACKENDS}, got {backend!r}")
        self.grid, self.backend = grid, backend
        nx, ny, nz = grid.shape_xyz
        self.sparse = VoxelBackbone3D(num_point_features, (nz, ny, nx), sparse_channels, sparse_blocks,
                                      sparse_out_channels)
        s3 = self.sparse.stride
        if ny % s3 or nx % s3:
            raise ConfigError(f"grid of {ny}x{nx} cells (range {grid.lidar_range}, voxel {grid.voxel_size}) must be "
                              f"a multiple of the sparse backbone's stride {s3}")
        self.backbone = BEVBackbone(self.sparse.bev_channels, layer_nums, layer_strides, num_filters,
                                    upsample_strides, num_upsample_filters, shrink_channels, shrink_stride)
        k = self.backbone.input_multiple
        if (ny // s3) % k or (nx // s3) % k:
            raise ConfigError(f"BEV map of {ny // s3}x{nx // s3} after the sparse backbone must be a multiple of "
                              f"the 2D backbone's total stride {k}")
        self.stride: int = s3 * self.backbone.stride
        self.out_channels: int = self.backbone.out_channels
        self._announced: set[tuple[str, str]] = set()

    def _input_tensor(self, features: torch.Tensor, coords: torch.Tensor, num_agents: int, backend: str):
        shape = self.sparse.input_shape
        if backend == "torch":
            return SparseTensor(features, coords, shape, num_agents)
        import spconv.pytorch as spconv

        return spconv.SparseConvTensor(features, coords.to(torch.int32).contiguous(), list(shape), num_agents)

    def _check_coords(self, coords: torch.Tensor, num_agents: int) -> None:
        if not len(coords):
            return
        lo, hi = coords.amin(dim=0), coords.amax(dim=0)
        nz, ny, nx = self.sparse.input_shape
        if bool((lo < 0).any()) or hi[0] >= num_agents or hi[1] >= nz or hi[2] >= ny or hi[3] >= nx:
            raise ConfigError(f"voxel coords [agent,z,row,col] span {lo.tolist()}..{hi.tolist()}, outside "
                              f"{num_agents} agents x {nz} x {ny} x {nx}: voxeliser and encoder grids differ?")

    def bev_input(self, voxels: Voxels) -> torch.Tensor:
        """Voxels -> (A, sparse_out_channels * D_out, ny/8, nx/8) dense BEV input of the 2D backbone."""
        device = voxels.points.device
        # spconv cannot run on an empty batch; the torch backend can.
        backend = resolve_backend(self.backend, device) if len(voxels) else "torch"
        if (backend, device.type) not in self._announced:
            self._announced.add((backend, device.type))
            log.info("SECOND encoder: %s sparse-conv backend on %s (requested %r)", backend, device.type, self.backend)
        coords = voxels.coords.to(device=device, dtype=torch.int64)
        self._check_coords(coords, voxels.num_agents)
        x = self.sparse(self._input_tensor(mean_vfe(voxels), coords, voxels.num_agents, backend))
        dense = sparse_to_dense(x.features, x.indices, self.sparse.output_shape, voxels.num_agents)
        a, c, d, h, w = dense.shape
        return dense.view(a, c * d, h, w)

    def forward(self, voxels: Voxels) -> BEVFeatures:
        return BEVFeatures(self.backbone(self.bev_input(voxels)), self.grid, self.stride)
