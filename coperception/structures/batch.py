"""A batch of cooperative samples, the record every model stage reads.

Agents of all samples are laid end to end (OpenCOOD's ``record_len`` layout): agent ``k`` of
sample ``b`` is row ``sum(agents_per_sample[:b]) + k`` of every per-agent tensor. Built by
:func:`coperception.data.collate.collate_samples` (and by the closed loop from live frames).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from coperception.structures.camera import CameraBatch
from coperception.structures.cells import Pillars, Voxels


@dataclass
class CooperativeBatch:
    """B samples, A = sum(agents_per_sample) agents, C = sum(clouds_per_sample) clouds.

    agents_per_sample: (B,) int64; clouds_per_sample: (B,) int64 (equal to agents except early
        fusion, where each sample has one fused cloud).
    ego_from_agent, ego_from_agent_clean: (A, 4, 4) float32, noisy and true.
    is_infrastructure: (A,) bool.
    cells: pillars / voxels of the C clouds (agent index 0..C-1), or None.
    points: the C clouds, or None.
    gt_boxes: (B, N, 7) float32 ego frame, zero padded; gt_mask: (B, N) bool;
        gt_ids, gt_classes: (B, N) int64, -1 where padded.
    agent_gt_boxes / _mask / _ids / _classes: late fusion, (A, K, ...) per agent in its own frame.
    cameras: the A agents' cameras (rows in agent order, ``camera_mask`` False for agents that do
        not use cameras), or None when every agent is LiDAR-only.
    camera_depth: (A, N, H, W) float32 sparse LiDAR depth targets of the cameras (metres, 0: none).
    has_lidar / has_camera: (A,) bool modality of each agent; None means LiDAR-only agents.
    """

    keys: list[tuple[str, int]]
    fusion: str
    agent_ids: list[tuple[str, ...]]
    agents_per_sample: torch.Tensor
    clouds_per_sample: torch.Tensor
    ego_from_agent: torch.Tensor
    ego_from_agent_clean: torch.Tensor
    is_infrastructure: torch.Tensor
    cells: Pillars | Voxels | None
    points: list[torch.Tensor] | None
    gt_boxes: torch.Tensor
    gt_mask: torch.Tensor
    gt_ids: torch.Tensor
    gt_classes: torch.Tensor
    agent_gt_boxes: torch.Tensor | None = None
    agent_gt_mask: torch.Tensor | None = None
    agent_gt_ids: torch.Tensor | None = None
    agent_gt_classes: torch.Tensor | None = None
    world_from_agent: torch.Tensor | None = None
    cameras: CameraBatch | None = None
    camera_depth: torch.Tensor | None = None
    has_lidar: torch.Tensor | None = None
    has_camera: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.keys)

    #: Small per-sample counts that code reads on the host (``.tolist()``): ``to()`` and
    #: :func:`~coperception.train.device.move_to_device` leave them on the CPU, so reading them
    #: never waits for the GPU.
    HOST_FIELDS = ("agents_per_sample", "clouds_per_sample")

    def _map(self, fn, host_too: bool = False) -> "CooperativeBatch":
        """A copy with ``fn`` applied to every tensor (those in the cells and the points too;
        :attr:`HOST_FIELDS` only with ``host_too``)."""
        moved = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in self.HOST_FIELDS and not host_too:
                pass
            elif isinstance(value, torch.Tensor):
                value = fn(value)
            elif isinstance(value, Pillars):  # Voxels too
                value = type(value)(fn(value.points), fn(value.coords), fn(value.num_points), value.num_agents)
            elif f.name == "points" and value is not None:
                value = [fn(p) for p in value]
            elif isinstance(value, CameraBatch):
                value = CameraBatch(fn(value.images), fn(value.intrinsics), fn(value.lidar_from_camera),
                                    fn(value.image_scale), fn(value.camera_mask))
            moved[f.name] = value
        return CooperativeBatch(**moved)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "CooperativeBatch":
        """A copy on ``device``."""
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> "CooperativeBatch":
        """Page-locked copy; a DataLoader with ``pin_memory=True`` calls this."""
        return self._map(lambda t: t.pin_memory(), host_too=True)

    def padded_transforms(self, clean: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L, 4, 4) ``ego_from_agent`` padded with identity, and (B, L) bool mask; L = max agents."""
        source = self.ego_from_agent_clean if clean else self.ego_from_agent
        counts = self.agents_per_sample.tolist()
        eye = torch.eye(4, dtype=source.dtype, device=source.device)
        out = eye.expand(len(counts), max(counts), 4, 4).clone()
        mask = torch.arange(max(counts), device=source.device)[None] < self.agents_per_sample.to(source.device)[:, None]
        out[mask] = source
        return out, mask
