"""The pillar batch: the contract between voxelisation and the LiDAR encoders.

PointPillars (Lang et al., "PointPillars: Fast Encoders for Object Detection from Point Clouds")
groups points into vertical columns on the :class:`~coperception.geometry.grid.BEVGrid`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Pillars:
    """Non-empty pillars of a batch of agents' point clouds.

    points: (P, M, 4) float32 raw ``x, y, z, intensity`` of up to M points per pillar, zero padded.
    coords: (P, 3) int64 ``[agent_index, row, col]``: ``agent_index`` counts agents over the whole
        batch (0..A-1), ``row`` indexes y and ``col`` indexes x on the grid (see BEVGrid).
    num_points: (P,) int32 number of valid points in each pillar (1..M).
    num_agents: A, the number of point clouds in the batch (agents with no points still count).
    """

    points: torch.Tensor
    coords: torch.Tensor
    num_points: torch.Tensor
    num_agents: int

    def to(self, device: torch.device | str) -> "Pillars":
        return type(self)(self.points.to(device), self.coords.to(device), self.num_points.to(device),
                          self.num_agents)

    def __len__(self) -> int:
        return int(self.coords.shape[0])


@dataclass
class Voxels(Pillars):
    """Non-empty 3D voxels of a batch of agents' point clouds (SECOND-style encoders).

    The same fields as :class:`Pillars`, except ``coords``: (V, 4) int64
    ``[agent_index, z, row, col]`` (spconv's batch, z, y, x order).
    """
