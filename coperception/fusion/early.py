"""Early fusion: the raw LiDAR points of all agents, moved into the ego frame and concatenated.

The raw-data baseline of cooperative perception (OpenCOOD's ``early`` fusion; "Cooper:
Cooperative Perception for Connected Autonomous Vehicles based on 3D Point Clouds", Chen et al.
2019): every agent sends its point cloud, the ego transforms each cloud with ``ego_from_agent``
(full SE(3)) and detects on the union. Cropping to the detection range is voxelisation's job.
Works on torch tensors (CPU or CUDA) and on numpy arrays, vectorised over all points at once.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


def _check(points: Sequence, ego_from_agent) -> None:
    if len(points) == 0:
        raise ValueError("early fusion needs at least one agent's points")
    if tuple(ego_from_agent.shape) != (len(points), 4, 4):
        raise ValueError(f"ego_from_agent must be ({len(points)}, 4, 4) for {len(points)} point clouds, "
                         f"got shape {tuple(ego_from_agent.shape)}")
    widths = {int(p.shape[1]) if p.ndim == 2 else -1 for p in points}
    if len(widths) != 1 or min(widths) < 3:
        raise ValueError(f"every point cloud must be (P, F) with the same F >= 3, got shapes "
                         f"{[tuple(p.shape) for p in points]}")


def fuse_points(points: Sequence[torch.Tensor] | Sequence[np.ndarray],
                ego_from_agent: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """Concatenate all agents' clouds in the ego frame.

    points: A clouds (P_i, F), columns ``x, y, z`` metres in the agent's frame, then extra
        columns (intensity, ...) that pass through unchanged.
    ego_from_agent: (A, 4, 4) agent -> ego transforms.
    Returns (sum P_i, F) in the ego frame, agents in input order; same array type and dtype as
    the points (torch on the points' device, or numpy).
    """
    _check(points, ego_from_agent)
    if isinstance(points[0], torch.Tensor):
        return _fuse_torch(list(points), torch.as_tensor(ego_from_agent))
    return _fuse_numpy([np.asarray(p) for p in points], np.asarray(ego_from_agent, dtype=np.float64))


def _fuse_torch(points: list[torch.Tensor], ego_from_agent: torch.Tensor) -> torch.Tensor:
    cloud = torch.cat(points, dim=0)
    counts = torch.tensor([len(p) for p in points], device=cloud.device)
    owner = torch.repeat_interleave(torch.arange(len(points), device=cloud.device), counts)
    # float64 matrices keep far-away points (hundreds of metres) exact to float32 precision.
    tfm = ego_from_agent.to(device=cloud.device, dtype=torch.float64)
    xyz = cloud[:, :3].double()
    moved = torch.einsum("pij,pj->pi", tfm[owner, :3, :3], xyz) + tfm[owner, :3, 3]
    return torch.cat([moved.to(cloud.dtype), cloud[:, 3:]], dim=1)


def _fuse_numpy(points: list[np.ndarray], ego_from_agent: np.ndarray) -> np.ndarray:
    cloud = np.concatenate(points, axis=0)
    owner = np.repeat(np.arange(len(points)), [len(p) for p in points])
    xyz = cloud[:, :3].astype(np.float64)
    moved = np.einsum("pij,pj->pi", ego_from_agent[owner, :3, :3], xyz) + ego_from_agent[owner, :3, 3]
    out = cloud.copy()
    out[:, :3] = moved.astype(cloud.dtype, copy=False)
    return out
