"""Batching of :class:`~coperception.data.dataset.CooperativeSample` with a variable number of agents.

Agents of all samples are laid end to end (OpenCOOD's ``record_len`` layout): agent ``k`` of
sample ``b`` is row ``sum(agents_per_sample[:b]) + k`` of every per-agent tensor, and the cells
of all clouds form one :class:`Pillars` (or :class:`Voxels`) whose agent index runs over the
batch: either voxelised here in one call over all clouds (the dataset's default, fastest), or
joined from per-sample cells (already sorted by agent, so shifting their agent index keeps the
batch sorted and equal to the one-call result). Loops run over samples only; points and cells
move as whole tensors.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import torch
from torch.nn.utils.rnn import pad_sequence

from coperception.data.cameras import collate_cameras
from coperception.data.pillars import Pillars
from coperception.data.voxelize import Voxels
from coperception.encoders.camera import CameraBatch
from coperception.geometry.boxes import validate_boxes

if TYPE_CHECKING:  # dataset.py imports this module
    from coperception.data.dataset import CooperativeSample, Targets


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


def merge_cells(parts: list[Pillars | Voxels]) -> Pillars | Voxels:
    """Concatenate per-sample cells, shifting each part's agent index by the agents before it."""
    kind = type(parts[0])
    if any(type(p) is not kind for p in parts):
        raise TypeError(f"cannot batch mixed cell types: {sorted({type(p).__name__ for p in parts})}")
    device = parts[0].coords.device
    agents = torch.tensor([p.num_agents for p in parts], device=device)
    offsets = torch.cumsum(agents, 0) - agents
    sizes = torch.tensor([len(p) for p in parts], device=device)
    coords = torch.cat([p.coords for p in parts], dim=0)
    coords[:, 0] += torch.repeat_interleave(offsets, sizes)
    return kind(torch.cat([p.points for p in parts], dim=0), coords,
                torch.cat([p.num_points for p in parts], dim=0), int(agents.sum()))


def _pad_targets(targets: list[Targets], max_objects: int | None, names: list[str] | None = None):
    """Stack (n_i, ...) targets into (len, N, ...) with a mask; N = max n_i, or ``max_objects``.

    The boxes are validated here, on the host, once per batch, so that target assignment on the
    device never has to wait for a check."""
    for t, name in zip(targets, names or [f"targets[{i}]" for i in range(len(targets))]):
        validate_boxes(t.boxes, name)
    boxes = pad_sequence([t.boxes for t in targets], batch_first=True)
    ids = pad_sequence([t.ids for t in targets], batch_first=True, padding_value=-1)
    classes = pad_sequence([t.classes for t in targets], batch_first=True, padding_value=-1)
    counts = torch.tensor([len(t.boxes) for t in targets])
    width = boxes.shape[1]
    if max_objects is not None:
        if width > max_objects:
            raise ValueError(f"a sample has {width} objects, more than max_objects={max_objects}")
        extra = max_objects - width
        boxes = torch.nn.functional.pad(boxes, (0, 0, 0, extra))
        ids = torch.nn.functional.pad(ids, (0, extra), value=-1)
        classes = torch.nn.functional.pad(classes, (0, extra), value=-1)
        width = max_objects
    mask = torch.arange(width)[None] < counts[:, None]
    return boxes, mask, ids, classes


def collate_samples(samples: list[CooperativeSample], max_objects: int | None = None,
                    voxelizer: Callable[[list[torch.Tensor]], Pillars | Voxels] | None = None) -> CooperativeBatch:
    """``collate_fn`` for a DataLoader over :class:`CooperativeDataset` (see its ``collate_fn()``).

    max_objects: pad ground truth to this many objects (OpenCOOD's ``max_num`` = 100) instead of
        the batch maximum.
    voxelizer: ``clouds -> cells`` run once over every cloud of the batch (samples built with
        ``voxelize_in="batch"``); without it, per-sample cells are concatenated when present.
    """
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    fusions = {s.fusion for s in samples}
    if len(fusions) != 1:
        raise ValueError(f"samples mix fusion modes {sorted(fusions)}")
    points = None
    if all(s.points is not None for s in samples):
        points = [p for s in samples for p in s.points]
    cells = None
    if voxelizer is not None:
        if points is None:
            raise ValueError("a voxelizer needs the samples' clouds: build them with voxelize_in='batch'")
        cells = voxelizer(points)
    elif all(s.cells is not None for s in samples):
        cells = merge_cells([s.cells for s in samples])
    gt_boxes, gt_mask, gt_ids, gt_classes = _pad_targets(
        [s.gt for s in samples], max_objects, [f"frame {s.key}: ground truth" for s in samples])
    batch = CooperativeBatch(
        keys=[s.key for s in samples], fusion=samples[0].fusion, agent_ids=[s.agent_ids for s in samples],
        agents_per_sample=torch.tensor([s.num_agents for s in samples], dtype=torch.int64),
        clouds_per_sample=torch.tensor([s.num_clouds for s in samples], dtype=torch.int64),
        ego_from_agent=torch.cat([s.ego_from_agent for s in samples], dim=0),
        ego_from_agent_clean=torch.cat([s.ego_from_agent_clean for s in samples], dim=0),
        is_infrastructure=torch.cat([s.is_infrastructure for s in samples], dim=0),
        cells=cells, points=points, gt_boxes=gt_boxes, gt_mask=gt_mask, gt_ids=gt_ids, gt_classes=gt_classes)
    if all(s.agent_gt is not None for s in samples):
        agent_targets = [t for s in samples for t in s.agent_gt]
        names = [f"frame {s.key}: agent {a} ground truth" for s in samples for a in s.agent_ids]
        (batch.agent_gt_boxes, batch.agent_gt_mask, batch.agent_gt_ids,
         batch.agent_gt_classes) = _pad_targets(agent_targets, max_objects, names)
    if all(s.world_from_agent is not None for s in samples):
        batch.world_from_agent = torch.cat([s.world_from_agent for s in samples], dim=0)
    with_cameras = [s.cameras is not None for s in samples]
    if any(with_cameras):
        if not all(with_cameras):
            raise ValueError("samples mix camera and LiDAR-only layouts: build them with one dataset modality")
        batch.cameras, batch.camera_depth, batch.has_lidar, batch.has_camera = collate_cameras(
            [s.cameras for s in samples])
    return batch
