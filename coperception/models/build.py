"""Builders: an :class:`ExperimentConfig` -> detector, datasets and loaders.

The only place where configs are read into constructor calls (configs are read in one
place); derived values (grid, stride, channels) are computed here, never in YAML.
"""

from __future__ import annotations

import math
from functools import partial

import torch

from coperception.comm.strategies import build_strategy
from coperception.data.dataset import CooperativeDataset
from coperception.data.formats import open_reader
from coperception.data.voxelize import pillarize, voxelize
from coperception.encoders import ENCODERS
from coperception.errors import ConfigError
from coperception.fusion import FUSIONS
from coperception.heads import HEADS
from coperception.heads.anchors import AnchorSize
from coperception.heads.detection_head import PostProcess
from coperception.heads.targets import TargetAssigner
from coperception.models.config import ExperimentConfig, HeadConfig
from coperception.models.detector import CooperativeDetector, PostFusion


def build_detector(cfg: ExperimentConfig) -> CooperativeDetector:
    grid = cfg.data.grid
    m = cfg.model
    encoder = ENCODERS[m.encoder.name](grid, **m.encoder.args)
    head = HEADS[m.head.name](encoder.out_channels, grid, encoder.stride, **_head_args(m.head))
    fusion = None
    if m.fusion is not None:
        fusion = FUSIONS[m.fusion.name](grid, encoder.stride, **m.fusion.args)
    comm = None
    if m.comm is not None:
        comm = build_strategy(m.comm.name, encoder.out_channels, grid, encoder.stride, **m.comm.args)
    late = build_strategy(m.late_comm.name, encoder.out_channels, grid, encoder.stride, **m.late_comm.args)
    if m.post_fusion_layers < 0:
        raise ConfigError(f"model.post_fusion_layers must be >= 0, got {m.post_fusion_layers}")
    post = PostFusion(encoder.out_channels, m.post_fusion_layers) if m.post_fusion_layers and fusion else None
    return CooperativeDetector(encoder, head, fusion, mode=cfg.fusion_mode,
                               single_loss_weight=m.single_loss_weight, comm=comm, late_comm=late,
                               voxelizer=cell_maker(cfg), post_fusion=post)


def _head_args(h: HeadConfig) -> dict:
    """The anchor head's constructor arguments from its config (sizes in metres, angles in degrees)."""
    return dict(anchor_sizes=tuple(AnchorSize(length, width, height, h.anchor_z)
                                   for length, width, height in h.anchor_sizes),
                anchor_rotations=tuple(math.radians(r) for r in h.anchor_rotations_deg),
                use_direction=h.use_direction,
                assigner=TargetAssigner(h.pos_threshold, h.neg_threshold, standup_plus_one=False),
                post=PostProcess(max_box_extent=h.max_box_extent))


def cells_kind(cfg: ExperimentConfig) -> str | None:
    """The LiDAR cells the experiment's encoder reads ("pillars" / "voxels"), None for no LiDAR."""
    enc = cfg.model.encoder
    return ENCODERS[enc.name].cells_for(enc.args)


def cell_maker(cfg: ExperimentConfig):
    """``clouds -> cells`` for the experiment's encoder (pillars or 3D voxels), picklable."""
    if cells_kind(cfg) == "voxels":
        return partial(voxelize, grid=cfg.data.grid, max_points_per_voxel=cfg.data.max_points_per_pillar)
    return partial(pillarize, grid=cfg.data.grid, max_points_per_pillar=cfg.data.max_points_per_pillar)


def voxelize_on_device(cfg: ExperimentConfig) -> bool:
    """Whether batches carry raw clouds for the detector to voxelise (``data.voxelize_on``)."""
    where = cfg.data.voxelize_on
    return where == "device" or (where == "auto" and torch.cuda.is_available())


def build_dataset(cfg: ExperimentConfig, split: str, *, train: bool, fusion_mode: str | None = None,
                  return_points: bool = False) -> CooperativeDataset:
    """The dataset of ``split`` (library split name) for ``fusion_mode`` (default: the experiment's).

    Evaluation of single / late / intermediate inference uses the intermediate layout (every
    agent's cloud in its own frame); early fusion needs its own fused-cloud samples.
    """
    d = cfg.data
    mode = fusion_mode or cfg.fusion_mode
    cameras = d.modality is not None and d.modality.uses_cameras
    reader = open_reader(d.format, d.root, split, **({"load_cameras": True} if cameras else {}))
    voxelization = "voxels" if cells_kind(cfg) == "voxels" else "pillars"
    if voxelize_on_device(cfg):
        voxelization = "none"  # the detector groups the clouds on its device (CooperativeDetector.voxelizer)
    return CooperativeDataset(
        reader, d.grid, fusion=mode, max_agents=d.max_agents, comm_range=d.comm_range, train=train,
        pose_noise=d.pose_noise, augment=d.augment if train else None, voxelization=voxelization,
        max_points_per_pillar=d.max_points_per_pillar, return_points=return_points, on_error=d.on_error,
        agent_targets=(mode != "early"), modality=d.modality, agent_frame=d.agent_frame)


def build_loader(dataset: CooperativeDataset, batch_size: int, *, num_workers: int = 0,
                 shuffle: bool = False) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                                       collate_fn=dataset.collate_fn())
