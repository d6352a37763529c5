"""The encoder output contract: a bird's-eye-view feature map with a known grid.

Every encoder (PointPillars, SECOND, lift-splat camera) turns one batch of agents' sensor data
into a :class:`BEVFeatures`: one feature map per agent, in that agent's own LiDAR frame, on the
cells of a :class:`~coperception.geometry.grid.BEVGrid` at a stated ``stride``. Selection, the
wire format, fusion and the detection head all read the map's geometry from here, never from a
config dict.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from coperception.errors import ConfigError
from coperception.geometry.grid import BEVGrid


@dataclass
class BEVFeatures:
    """A BEV map in each agent's frame with known resolution and range.

    features: (A, C, H, W) float, one map per agent; row ``r`` covers y in
        ``[ymin + r*s*vy, ymin + (r+1)*s*vy)``, column ``c`` the same along x (see BEVGrid).
    grid: the grid the encoder was built on (range in metres, voxel size in metres).
    stride: cells of the grid per map cell; ``(H, W) == grid.feature_shape(stride)``.
    aux_losses: named auxiliary training losses of the encoder (e.g. a camera branch's
        ``loss_depth``), added to the detector's.
    """

    features: torch.Tensor
    grid: BEVGrid
    stride: int
    aux_losses: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.features.ndim != 4:
            raise ConfigError(f"BEVFeatures.features must be (A, C, H, W), got shape {tuple(self.features.shape)}")
        if int(self.stride) < 1:
            raise ConfigError(f"BEVFeatures.stride must be >= 1, got {self.stride}")
        expected = self.grid.feature_shape(self.stride)
        if tuple(self.features.shape[-2:]) != expected:
            raise ConfigError(
                f"BEVFeatures map of spatial shape {tuple(self.features.shape[-2:])} does not match "
                f"grid {self.grid.lidar_range} / voxel {self.grid.voxel_size} at stride {self.stride}: "
                f"expected {expected}")

    @property
    def num_maps(self) -> int:
        """A, the number of agents' maps."""
        return int(self.features.shape[0])

    @property
    def channels(self) -> int:
        return int(self.features.shape[1])

    @property
    def cell_size(self) -> tuple[float, float]:
        """(x, y) size of one map cell in metres."""
        return self.grid.cell_size(self.stride)

    def with_features(self, features: torch.Tensor) -> "BEVFeatures":
        """The same geometry around new (A', C', H, W) features (e.g. after fusion or compression)."""
        return BEVFeatures(features, self.grid, self.stride)
