"""Anchor boxes on a BEV feature map (SECOND / PointPillars style).

Yan et al., "SECOND: Sparsely Embedded Convolutional Detection" and Lang et al.,
"PointPillars": every map cell carries one anchor per (size, rotation) pair, centred on the
cell at a fixed height. OpenCOOD's defaults for cars: l 3.9-4.5, w 1.6-2, h 1.56, yaw 0 and 90
degrees, z centre -1.0 m in the LiDAR frame (hard-coded in its ``generate_anchor_box`` for every
dataset). OpenCOOD places anchor centres with ``linspace(xmin + vx, xmax - vx, W // stride)``,
which lands on the cell centres at stride 2 (its only configuration); here they are the cell
centres at any stride.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from coperception.errors import ConfigError
from coperception.geometry.grid import BEVGrid


@dataclass(frozen=True)
class AnchorSize:
    """One anchor shape: length, width, height (metres) and centre height z in the LiDAR frame."""

    length: float = 4.5
    width: float = 2.0
    height: float = 1.56
    z: float = -1.0

    def __post_init__(self) -> None:
        if not all(math.isfinite(v) for v in (self.length, self.width, self.height, self.z)):
            raise ConfigError(f"anchor size has non-finite values: {self}")
        if min(self.length, self.width, self.height) <= 0:
            raise ConfigError(f"anchor sizes must be positive, got {self}")


def make_anchors(grid: BEVGrid, stride: int, sizes: Sequence[AnchorSize] = (AnchorSize(),),
                 rotations: Sequence[float] = (0.0, math.pi / 2), device: torch.device | str | None = None,
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Anchors of a map at ``stride`` on ``grid``.

    rotations: yaw angles in radians. Returns (H, W, K, 7) ``[x, y, z, l, w, h, yaw]`` with
    K = len(sizes) * len(rotations), ordered size-major (all rotations of size 0 first). The
    flattening order (H, W, K) matches the head's ``(A, K*code, H, W)`` channel layout.
    """
    if not sizes or not rotations:
        raise ConfigError(f"need at least one anchor size and rotation, got {list(sizes)} and {list(rotations)}")
    xs, ys = grid.cell_centers(stride)
    h, w = len(ys), len(xs)
    per_cell = torch.tensor([[s.z, s.length, s.width, s.height, float(r)] for s in sizes for r in rotations],
                            dtype=torch.float64)
    k = per_cell.shape[0]
    anchors = torch.empty(h, w, k, 7, dtype=torch.float64)
    anchors[..., 0] = torch.as_tensor(xs).view(1, w, 1)
    anchors[..., 1] = torch.as_tensor(ys).view(h, 1, 1)
    anchors[..., 2:] = per_cell.view(1, 1, k, 5)
    return anchors.to(device=device, dtype=dtype)
