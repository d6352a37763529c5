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

import torch
from torch.nn.utils.rnn import pad_sequence

from coperception.data.cameras import collate_cameras
from coperception.geometry.boxes import validate_boxes
from coperception.structures.batch import CooperativeBatch
from coperception.structures.cells import Pillars, Voxels
from coperception.structures.sample import CooperativeSample, Targets


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
