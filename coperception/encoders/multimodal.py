"""Heterogeneous-agent encoder: each agent encoded by its own sensors, one BEV map per agent.

HEAL (Lu et al., "An Extensible Framework for Open Heterogeneous Collaborative Perception", ICLR
2024) lets LiDAR agents and camera agents collaborate in one BEV space: each modality has its own
encoder onto the shared grid and a light aligner into a common feature space. Here the LiDAR
branch is PointPillars (Lang et al., CVPR 2019) or SECOND (Yan et al., 2018) and the camera branch
lift-splat-shoot (Philion & Fidler, ECCV 2020, :class:`CameraEncoder`). Both run on the shared
:class:`BEVGrid` at the same stride; a 1x1 conv + BN + ReLU per branch (``combine="sum"``) or
after concatenation (``combine="concat"``) maps them to ``out_channels``. An agent with both
sensors gets the sum (or the concatenation) of its two maps; an agent with one sensor gets that
branch alone (zeros in the other half when concatenating).

The encoder reads the whole :class:`~coperception.data.collate.CooperativeBatch`
(``consumes_batch = True``): its ``has_lidar`` / ``has_camera`` say which rows each branch encodes,
``cells`` the LiDAR input (cells of other agents are dropped), ``cameras`` the images. In training
the camera branch's depth loss (cross-entropy of the depth bins against the batch's LiDAR depth
images, HEAL / BEVDepth-style depth supervision) comes back in ``aux_losses`` of the output.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from coperception.encoders.base import Encoder
from coperception.encoders.camera import CameraEncoder
from coperception.encoders.lss import DepthBins, depth_loss
from coperception.encoders.pointpillars import PointPillarsEncoder
from coperception.encoders.second import SECONDEncoder
from coperception.errors import ConfigError
from coperception.geometry.grid import BEVGrid
from coperception.structures.batch import CooperativeBatch
from coperception.structures.bev import BEVFeatures
from coperception.structures.camera import CameraBatch
from coperception.structures.cells import Pillars

#: the LiDAR encoders a multimodal encoder can use, by their registry names.
LIDAR_ENCODERS: dict[str, type[Encoder]] = {cls.name: cls for cls in (PointPillarsEncoder, SECONDEncoder)}


@dataclass
class MultiModalFeatures(BEVFeatures):
    """:class:`BEVFeatures` plus named auxiliary training losses (``loss_depth``) to add to the detector's."""

    aux_losses: dict[str, torch.Tensor] = field(default_factory=dict)


def select_cells(cells: Pillars, keep_agent: torch.Tensor) -> Pillars:
    """Cells (Pillars or Voxels) of the agents where ``keep_agent`` (A,) bool, agent index renumbered 0..K-1."""
    keep_agent = keep_agent.to(cells.coords.device)
    if bool(keep_agent.all()):
        return cells
    new_index = torch.cumsum(keep_agent.long(), 0) - 1
    keep = keep_agent[cells.coords[:, 0].long()]
    coords = cells.coords[keep].clone()
    coords[:, 0] = new_index[coords[:, 0].long()].to(coords.dtype)
    return type(cells)(cells.points[keep], coords, cells.num_points[keep], int(keep_agent.sum()))


def select_cameras(cameras: CameraBatch, rows: torch.Tensor) -> CameraBatch:
    """The agents ``rows`` (K,) int64 of a CameraBatch."""
    return CameraBatch(cameras.images[rows], cameras.intrinsics[rows], cameras.lidar_from_camera[rows],
                       cameras.image_scale[rows], cameras.camera_mask[rows])


def depth_targets_from_images(depth: torch.Tensor, stride: int, bins: DepthBins) -> torch.Tensor:
    """(M, H, W) sparse depth images (metres, 0 = none) -> (M, H/stride, W/stride) int64 bin targets.

    A feature cell's target is the bin of the nearest depth among its ``stride x stride`` pixels
    (the rule of :func:`~coperception.encoders.lss.depth_bin_targets`), -1 where none.
    """
    d = torch.where(depth > 0, depth.float(), torch.full_like(depth, float("inf"), dtype=torch.float32))
    nearest = -F.max_pool2d(-d.unsqueeze(1), kernel_size=stride, stride=stride).squeeze(1)
    return bins.index(nearest)


def _aligner(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class MultiModalEncoder(Encoder):
    """LiDAR and / or camera agents of a batch -> :class:`MultiModalFeatures` (A, C, H, W), rows in batch order.

    grid: the shared BEV grid. lidar / camera: constructor arguments of the LiDAR encoder
    (``lidar_encoder``: "pointpillars" or "second") and of :class:`CameraEncoder`; None leaves the
    branch out (a batch whose agents need it then fails). out_channels: output width; None
    keeps the branch width (``sum`` needs equal widths; ``concat`` gives their sum) with no
    aligner. depth_weight: weight of ``loss_depth`` (0: no depth supervision).
    """

    name = "multimodal"
    input_kind = "batch"
    #: a batch may hold no camera (or no LiDAR) agent, leaving that branch's parameters without
    #: gradients: DDP must be told (the trainer reads this flag).
    may_leave_parameters_unused = True

    @classmethod
    def nested_components(cls, args: dict[str, Any]) -> dict[str, type[Encoder]]:
        """The classes the ``lidar`` / ``camera`` argument dicts are given to (checked at load)."""
        name = args.get("lidar_encoder", "pointpillars")
        if name not in LIDAR_ENCODERS:
            raise ConfigError(f"lidar_encoder {name!r} unknown; known: {sorted(LIDAR_ENCODERS)}")
        return {"lidar": LIDAR_ENCODERS[name], "camera": CameraEncoder}

    @classmethod
    def cells_for(cls, args: dict[str, Any]) -> str | None:
        name = args.get("lidar_encoder", "pointpillars")
        if args.get("lidar") is None or name not in LIDAR_ENCODERS:
            return None
        return LIDAR_ENCODERS[name].input_kind

    def __init__(self, grid: BEVGrid, lidar: dict[str, Any] | None = None, camera: dict[str, Any] | None = None,
                 lidar_encoder: str = "pointpillars", out_channels: int | None = None,
                 combine: Literal["sum", "concat"] = "sum", depth_weight: float = 1.0) -> None:
        super().__init__()
        if lidar is None and camera is None:
            raise ConfigError("multimodal encoder needs a lidar and / or a camera branch; both are None")
        if combine not in ("sum", "concat"):
            raise ConfigError(f"multimodal combine must be 'sum' or 'concat', got {combine!r}")
        if lidar_encoder not in LIDAR_ENCODERS:
            raise ConfigError(f"multimodal lidar_encoder {lidar_encoder!r} unknown; known: {sorted(LIDAR_ENCODERS)}")
        self.grid, self.combine, self.depth_weight = grid, combine, float(depth_weight)
        self.lidar = LIDAR_ENCODERS[lidar_encoder](grid, **lidar) if lidar is not None else None
        self.camera = CameraEncoder(grid, **camera) if camera is not None else None
        branches = [b for b in (self.lidar, self.camera) if b is not None]
        strides = {b.stride for b in branches}
        if len(strides) != 1:
            raise ConfigError(f"multimodal branches must share one BEV stride; lidar stride {self.lidar.stride}, "
                              f"camera stride {self.camera.stride} (match their backbone layer_strides / "
                              f"upsample_strides, or the camera's splat_stride)")
        self.stride: int = strides.pop()
        widths = [b.out_channels for b in branches]
        self.lidar_align = self.camera_align = self.concat_align = None
        if combine == "sum":
            if out_channels is None and len(set(widths)) != 1:
                raise ConfigError(f"multimodal combine='sum' with out_channels=None needs equal branch widths, got "
                                  f"lidar {self.lidar.out_channels} and camera {self.camera.out_channels}")
            self.out_channels: int = int(out_channels) if out_channels is not None else widths[0]
            if out_channels is not None:
                self.lidar_align = _aligner(self.lidar.out_channels, self.out_channels) if self.lidar else None
                self.camera_align = _aligner(self.camera.out_channels, self.out_channels) if self.camera else None
        else:
            self.out_channels = int(out_channels) if out_channels is not None else sum(widths)
            if out_channels is not None:
                self.concat_align = _aligner(sum(widths), self.out_channels)

    def forward(self, batch: CooperativeBatch) -> MultiModalFeatures:
        rows = int(batch.agents_per_sample.sum())
        has_lidar, has_camera = self._modalities(batch, rows)
        lidar = self._encode_lidar(batch, has_lidar)
        camera, aux = self._encode_camera(batch, has_camera)
        maps = [m for m in (lidar, camera) if m is not None]
        dtype = maps[0][1].dtype if len(maps) == 1 else torch.promote_types(maps[0][1].dtype, maps[1][1].dtype)
        h, w = self.grid.feature_shape(self.stride)

        def place(index: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
            canvas = feats.new_zeros(rows, feats.shape[1], h, w, dtype=dtype)
            return canvas.index_add(0, index, feats.to(dtype))

        if self.combine == "sum":
            out = sum(place(*m) for m in maps)
        else:
            parts = [place(*m) if m is not None else self._zeros(branch, rows, h, w, dtype, batch)
                     for m, branch in ((lidar, self.lidar), (camera, self.camera)) if branch is not None]
            out = torch.cat(parts, dim=1)
            out = self.concat_align(out) if self.concat_align is not None else out
        return MultiModalFeatures(out, self.grid, self.stride, aux)

    # -- branches ------------------------------------------------------------------------------
    @staticmethod
    def _modalities(batch: CooperativeBatch, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(A,) bool has_lidar / has_camera on the batch's device (no modality: LiDAR-only agents)."""
        device = batch.ego_from_agent.device
        has_lidar = batch.has_lidar if batch.has_lidar is not None else torch.ones(rows, dtype=torch.bool)
        has_camera = batch.has_camera if batch.has_camera is not None else torch.zeros(rows, dtype=torch.bool)
        if len(has_lidar) != rows or len(has_camera) != rows:
            raise ConfigError(f"batch modality masks have {len(has_lidar)} / {len(has_camera)} rows for {rows} agents")
        return has_lidar.to(device), has_camera.to(device)

    def _encode_lidar(self, batch: CooperativeBatch, has_lidar: torch.Tensor):
        """(rows, features) of the LiDAR agents, or None when there are none."""
        if not bool(has_lidar.any()):
            return None
        if self.lidar is None:
            raise ConfigError(f"batch {batch.keys}: agents use LiDAR but this multimodal encoder has no lidar branch")
        if batch.cells is None or batch.cells.num_agents != len(has_lidar):
            raise ConfigError("multimodal encoder needs per-agent voxelised cells (intermediate or late layout), "
                              f"got {None if batch.cells is None else batch.cells.num_agents} clouds for "
                              f"{len(has_lidar)} agents")
        feats = self.lidar(select_cells(batch.cells, has_lidar)).features
        feats = self.lidar_align(feats) if self.lidar_align is not None else feats
        return has_lidar.nonzero()[:, 0], feats

    def _encode_camera(self, batch: CooperativeBatch, has_camera: torch.Tensor):
        """(rows, features) of the camera agents or None, and the auxiliary losses."""
        if not bool(has_camera.any()):
            return None, {}
        if self.camera is None or batch.cameras is None:
            what = "this multimodal encoder has no camera branch" if self.camera is None else "the batch has no cameras"
            raise ConfigError(f"batch {batch.keys}: agents use cameras but {what}")
        rows = has_camera.nonzero()[:, 0]
        cams = select_cameras(batch.cameras, rows.to(batch.cameras.images.device))
        out, logits = self.camera.forward_with_depth(cams)
        feats = self.camera_align(out.features) if self.camera_align is not None else out.features
        aux = {}
        if self.training and self.depth_weight > 0 and batch.camera_depth is not None:
            depth = batch.camera_depth[rows.to(batch.camera_depth.device)][cams.camera_mask.to(
                batch.camera_depth.device)].to(logits.device)
            targets = depth_targets_from_images(depth, self.camera.feature_stride, self.camera.bins)
            aux["loss_depth"] = self.depth_weight * depth_loss(logits, targets)
        return (rows, feats), aux

    def _zeros(self, branch: nn.Module, rows: int, h: int, w: int, dtype, batch) -> torch.Tensor:
        return torch.zeros(rows, branch.out_channels, h, w, dtype=dtype, device=batch.ego_from_agent.device)
