"""The bird's-eye-view grid shared by voxelisation, encoders, fusion and heads.

A :class:`BEVGrid` is a LiDAR-frame box ``[xmin, ymin, zmin, xmax, ymax, zmax]`` cut into
cells of ``voxel_size`` (metres). Rows index y, columns index x: cell ``(row, col)`` covers
``x in [xmin + col*vx, xmin + (col+1)*vx)`` and ``y in [ymin + row*vy, ...)``. A feature map
with ``stride`` s has ``H = ny // s`` rows and ``W = nx // s`` columns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from coperception.errors import ConfigError


@dataclass(frozen=True)
class BEVGrid:
    """lidar_range: (xmin, ymin, zmin, xmax, ymax, zmax) metres; voxel_size: (vx, vy, vz) metres."""

    lidar_range: tuple[float, float, float, float, float, float]
    voxel_size: tuple[float, float, float]

    def __post_init__(self) -> None:
        r, v = tuple(map(float, self.lidar_range)), tuple(map(float, self.voxel_size))
        if len(r) != 6 or len(v) != 3:
            raise ConfigError(f"lidar_range needs 6 values and voxel_size 3, got {r} and {v}")
        if not all(math.isfinite(x) for x in r + v):
            raise ConfigError(f"non-finite grid values: lidar_range={r}, voxel_size={v}")
        if any(x <= 0 for x in v):
            raise ConfigError(f"voxel_size must be positive, got {v}")
        if not (r[3] > r[0] and r[4] > r[1] and r[5] > r[2]):
            raise ConfigError(f"lidar_range must have max > min on each axis, got {r}")
        object.__setattr__(self, "lidar_range", r)
        object.__setattr__(self, "voxel_size", v)

    @property
    def shape_xyz(self) -> tuple[int, int, int]:
        """Number of voxels along x, y, z (rounded as OpenCOOD does)."""
        r, v = self.lidar_range, self.voxel_size
        return tuple(int(round((r[i + 3] - r[i]) / v[i])) for i in range(3))  # type: ignore[return-value]

    @property
    def nx(self) -> int:
        return self.shape_xyz[0]

    @property
    def ny(self) -> int:
        return self.shape_xyz[1]

    def feature_shape(self, stride: int = 1) -> tuple[int, int]:
        """(H, W) of a BEV map at ``stride``."""
        return self.ny // stride, self.nx // stride

    def cell_size(self, stride: int = 1) -> tuple[float, float]:
        """(cell size along x, along y) in metres of a map at ``stride``."""
        return self.voxel_size[0] * stride, self.voxel_size[1] * stride

    def cell_centers(self, stride: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """x (W,) and y (H,) coordinates of cell centres at ``stride``."""
        h, w = self.feature_shape(stride)
        cx, cy = self.cell_size(stride)
        xs = self.lidar_range[0] + (np.arange(w) + 0.5) * cx
        ys = self.lidar_range[1] + (np.arange(h) + 0.5) * cy
        return xs, ys
