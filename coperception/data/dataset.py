"""One torch Dataset for early, late and intermediate cooperative fusion over any reader.

A *reader* is any object with ``keys() -> list[(scenario, timestamp)]`` and
``read(key) -> Frame`` (``coperception.data.formats.opv2v.OPV2VReader``, ``DairV2XReader``, or an
in-memory list in tests). The fusion mode is a strategy of this one dataset, as in OpenCOOD's
Early/Late/IntermediateFusionDataset (Xu et al., "OPV2V: An Open Benchmark Dataset and Fusion
Pipeline for Perception with Vehicle-to-Vehicle Communication") but without three forks.

``__getitem__`` runs named steps: load -> pick agents -> poses (clean, noisy) -> clouds in the
frame the fusion mode needs -> cameras (with a ``modality`` that uses them: see
:mod:`coperception.data.cameras`) -> ground truth in the ego frame -> augment (train) -> voxelise
(here or per batch, below) -> pack.

* **early**: all agents' points moved to the ego frame (with the noisy poses) as ONE cloud.
* **intermediate**: each agent's points stay in a frame of its own (its LiDAR frame, or that
  frame turned to the ego's heading: ``agent_frame`` below); ``ego_from_agent`` (noisy, what
  fusion uses) and ``ego_from_agent_clean`` (truth) tell where each agent's map goes.
* **late**: as intermediate, plus each agent's own ground truth in that frame.

Which frame a collaborator's cloud is encoded in (``agent_frame``: ``"own"``, ``"ego_heading"``,
``"ego"``; intermediate and late) is :mod:`coperception.data.agent_frames`.

Ground truth follows OpenCOOD: world boxes to the ego frame, kept when all 8 corners lie inside
``grid.lidar_range`` (z included). When the ego is a road-side unit, z is not tested: its LiDAR
sits metres above the road, and OpenCOOD's z test would drop every object.
When the frame says which agent sees which object (``Frame.visibility``), only objects seen by
at least one chosen agent are kept (OpenCOOD's union of the agents' labels).

Where voxelisation runs (``voxelize_in``):

* ``"batch"`` (default, fastest): samples carry their clouds and ``collate_fn()`` pillarises all
  clouds of the batch in one call. A DataLoader runs the collate function in its worker
  processes too, so this is as parallel as per-sample work, and it allocates the big zero-padded
  (P, M, 4) tensor once per batch instead of once per sample plus a concatenation (20-25% less
  time per frame at batch sizes 1-2 on one CPU thread). The result is the same: cells are sorted
  by agent and the pillar cap is per agent.
* ``"sample"``: each sample carries its own cells (handy for direct indexing).
* For voxelisation on the GPU pass ``voxelization="none"`` and call
  :func:`coperception.data.voxelize.pillarize` on ``batch.points`` after moving them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial

import numpy as np
import torch
from torch.utils.data import Dataset

from coperception.data.agent_frames import AGENT_FRAMES, DEFAULT_AGENT_FRAME, move_points, reframe
from coperception.data.augment import AugmentConfig, Augmentation, sample_augmentation
from coperception.data.cameras import ModalityConfig, load_cameras, sample_depth
from coperception.data.collate import collate_samples
from coperception.data.noise import PoseNoise
from coperception.structures.records import VEHICLE_CLASSES, AgentObservation, Frame, ObjectSet
from coperception.structures.cells import Voxels
from coperception.data.voxelize import pillarize, voxelize
from coperception.errors import ConfigError, FormatError
from coperception.geometry.boxes import boxes_in_range_mask, transform_boxes
from coperception.geometry.grid import BEVGrid
from coperception.geometry.pose import relative_transform
from coperception.structures.camera import CameraSample
from coperception.structures.sample import CooperativeSample, Targets

logger = logging.getLogger(__name__)

FUSION_MODES = ("early", "intermediate", "late")
VOXELIZATIONS = ("pillars", "voxels", "none")
#: OpenCOOD's ``mask_ego_points`` box (xmin, ymin, xmax, ymax), metres in the LiDAR frame.
SELF_HIT_BOX = (-1.95, -1.1, 2.95, 1.1)


def select_agents(frame: Frame, comm_range: float | None, max_agents: int) -> list[AgentObservation]:
    """Ego first, then the others in frame order within ``comm_range`` of it, at most ``max_agents`` in all.

    The range is the 2D distance between LiDAR positions (metres), OpenCOOD's COM_RANGE test;
    None keeps every agent.
    """
    ego = frame.ego
    others = [obs for aid, obs in frame.observations.items() if aid != frame.ego_id]
    if comm_range is not None and others:
        xy = np.stack([o.world_from_lidar[:2, 3] for o in others])
        near = np.hypot(*(xy - ego.world_from_lidar[:2, 3]).T) <= comm_range
        others = [o for o, keep in zip(others, near) if keep]
    return [ego] + others[: max_agents - 1]


def remove_self_hits(points: np.ndarray, box: tuple[float, float, float, float] | None) -> np.ndarray:
    """Drop (P, 4) points inside the agent's own body box (xmin, ymin, xmax, ymax), like OpenCOOD's mask_ego_points."""
    if box is None:
        return points
    x, y = points[:, 0], points[:, 1]
    hit = (x >= box[0]) & (x <= box[2]) & (y >= box[1]) & (y <= box[3])
    return points[~hit]


class CooperativeDataset(Dataset):
    """Frames of ``reader`` as :class:`CooperativeSample` (see the module docstring for the steps).

    grid: the BEV grid (its ``lidar_range`` bounds points and ground truth in each cloud's frame).
    fusion: "early" | "intermediate" | "late".
    max_agents / comm_range: agents kept (ego included) and their 2D range to the ego (metres,
        None: unlimited), as OpenCOOD's max_cav / COM_RANGE.
    train: enables ``augment`` and draws pose noise at random; evaluation draws it per frame
        from ``pose_noise.seed`` (reproducible).
    voxelization: "pillars" (PointPillars), "voxels" (SECOND, 3D) or "none".
    voxelize_in: "batch" (in ``collate_fn()``) or "sample" (in ``__getitem__``).
    max_points_per_pillar / max_pillars: per-cell point cap and per-cloud cell cap.
    self_hit_box: OpenCOOD's ego-body point mask, None to keep every point.
    classes: object classes kept as ground truth (indices into OBJECT_CLASSES; default the
        vehicle classes, as OPV2V / OpenCOOD evaluate), None keeps all.
    agent_targets: also give each agent's own ground truth in its own frame (``agent_gt``);
        default: only for late fusion. Intermediate training uses it for the per-agent loss.
    on_error: "raise" fails on a frame whose read raises FormatError; "skip" logs a warning,
        records its key in ``self.skipped`` (per process: each DataLoader worker has its own
        list) and serves the next readable frame instead.
    modality: which agents use LiDAR and / or cameras, and the camera image size
        (:class:`~coperception.data.cameras.ModalityConfig`); None: every agent is LiDAR-only and
        no image is touched. With cameras, the reader must load images (``load_cameras=True``);
        a camera-only agent's cloud is emptied after its depth targets are made; augmentation
        moves the camera extrinsics with the points; early fusion is refused.
    agent_frame: "own" | "ego_heading" | "ego", the frame each collaborator's cloud is encoded
        in (module docstring); ignored by early fusion.
    """

    def __init__(self, reader, grid: BEVGrid, *, fusion: str = "intermediate", max_agents: int = 5,
                 comm_range: float | None = 70.0, train: bool = False, pose_noise: PoseNoise | None = None,
                 augment: AugmentConfig | None = None, voxelization: str = "pillars", voxelize_in: str = "batch",
                 max_points_per_pillar: int = 32, max_pillars: int | None = None, return_points: bool = False,
                 self_hit_box: tuple[float, float, float, float] | None = SELF_HIT_BOX,
                 gt_visible_only: bool = True, on_error: str = "raise", agent_targets: bool | None = None,
                 classes: tuple[int, ...] | None = VEHICLE_CLASSES, modality: ModalityConfig | None = None,
                 agent_frame: str = DEFAULT_AGENT_FRAME) -> None:
        if fusion not in FUSION_MODES:
            raise ConfigError(f"fusion must be one of {FUSION_MODES}, got {fusion!r}")
        if voxelization not in VOXELIZATIONS:
            raise ConfigError(f"voxelization must be one of {VOXELIZATIONS}, got {voxelization!r}")
        if voxelize_in not in ("batch", "sample"):
            raise ConfigError(f"voxelize_in must be 'batch' or 'sample', got {voxelize_in!r}")
        if on_error not in ("raise", "skip"):
            raise ConfigError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        if max_agents < 1:
            raise ConfigError(f"max_agents must be >= 1, got {max_agents}")
        if agent_frame not in AGENT_FRAMES:
            raise ConfigError(f"agent_frame must be one of {AGENT_FRAMES}, got {agent_frame!r}")
        self.agent_frame = agent_frame
        if comm_range is not None and not comm_range > 0:
            raise ConfigError(f"comm_range must be > 0 or None, got {comm_range}")
        self.reader, self.grid, self.fusion = reader, grid, fusion
        self.max_agents, self.comm_range, self.train = max_agents, comm_range, train
        self.pose_noise, self.augment = pose_noise, augment
        self.voxelization, self.voxelize_in, self.return_points = voxelization, voxelize_in, return_points
        self.self_hit_box, self.gt_visible_only, self.on_error = self_hit_box, gt_visible_only, on_error
        self.max_points_per_pillar, self.max_pillars = max_points_per_pillar, max_pillars
        self.agent_targets = (fusion == "late") if agent_targets is None else bool(agent_targets)
        self.classes = None if classes is None else np.asarray(sorted(classes), dtype=np.int64)
        if self.agent_targets and fusion == "early":
            raise ConfigError("agent_targets needs per-agent clouds: not available with fusion='early'")
        self.modality = modality if modality is not None and modality.uses_cameras else None
        if self.modality is not None and fusion == "early":
            raise ConfigError("camera agents need per-agent BEV maps: modality with cameras is not available with "
                              "fusion='early'")
        self.keys: list[tuple[str, int]] = [tuple(k) for k in reader.keys()]
        self.skipped: list[tuple[str, int]] = []
        self._bad: set[tuple[str, int]] = set()

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int) -> CooperativeSample:
        key, frame = self._load(index)
        frame = self._select_classes(frame)
        agents = select_agents(frame, self.comm_range, self.max_agents)
        rng = self._rng(key)
        clean, noisy = self._poses(agents, rng)
        clouds = self._clouds(agents, noisy)
        cams = None
        if self.modality is not None:
            cams, clouds = self._camera_inputs(key, agents, clouds)
        gt = self._ego_objects(frame, agents)
        agent_gt = self._agent_objects(frame, agents) if self.agent_targets else None
        if self.agent_frame != "own" and self.fusion != "early":
            clouds, cams, agent_gt, clean, noisy = reframe(self.agent_frame, clouds, cams, agent_gt, clean, noisy)
        world = agents[0].world_from_lidar @ noisy  # announced world poses (the ego is never noised)
        if self.train and self.augment is not None:
            aug = sample_augmentation(self.augment, rng)
            clouds, gt, agent_gt, clean, noisy = self._augment(aug, clouds, gt, agent_gt, clean, noisy)
            cams = cams.augmented(aug.matrix) if cams is not None else None
        gt = self._in_range(gt, use_z=not agents[0].is_infrastructure)
        if agent_gt is not None:
            agent_gt = [self._in_range(g, use_z=not a.is_infrastructure) for g, a in zip(agent_gt, agents)]
        cells = self.voxelizer(clouds) if self.voxelizer is not None and self.voxelize_in == "sample" else None
        return self._pack(key, agents, clean, noisy, gt, agent_gt, cells, clouds, cams, world)

    @property
    def voxelizer(self) -> Callable[[list[torch.Tensor]], Pillars | Voxels] | None:
        """``clouds -> cells`` with this dataset's grid and caps (picklable), None for "none"."""
        if self.voxelization == "pillars":
            return partial(pillarize, grid=self.grid, max_points_per_pillar=self.max_points_per_pillar,
                           max_pillars=self.max_pillars)
        if self.voxelization == "voxels":
            return partial(voxelize, grid=self.grid, max_points_per_voxel=self.max_points_per_pillar,
                           max_voxels=self.max_pillars)
        return None

    def collate_fn(self, max_objects: int | None = None) -> Callable:
        """The DataLoader ``collate_fn`` for this dataset (voxelises the batch when ``voxelize_in="batch"``).

        max_objects: pad ground truth to this many boxes (OpenCOOD's max_num, 100), None: batch max.
        """
        voxelizer = self.voxelizer if self.voxelize_in == "batch" else None
        return partial(collate_samples, max_objects=max_objects, voxelizer=voxelizer)

    # -- steps ---------------------------------------------------------------------------------

    def _load(self, index: int) -> tuple[tuple[str, int], Frame]:
        """Read the frame at ``index``; with on_error="skip", the next readable one."""
        if not 0 <= index < len(self.keys):
            raise IndexError(f"index {index} out of range for {len(self.keys)} frames")
        if self.on_error == "raise":
            return self.keys[index], self.reader.read(self.keys[index])
        for step in range(len(self.keys)):
            key = self.keys[(index + step) % len(self.keys)]
            if key in self._bad:
                continue
            try:
                return key, self.reader.read(key)
            except FormatError as err:
                self._bad.add(key)
                self.skipped.append(key)
                logger.warning("skipping frame %s/%s: %s", key[0], key[1], err)
        raise FormatError(f"no readable frame: all {len(self.keys)} frames failed to load, e.g. {self.skipped[:3]}")

    def _select_classes(self, frame: Frame) -> Frame:
        """Keep the ground truth of the evaluated classes only (vehicles by default, as OPV2V)."""
        if self.classes is None:
            return frame
        keep = np.isin(frame.objects.classes, self.classes)
        if keep.all():
            return frame
        visibility = {a: np.asarray(v)[keep] for a, v in frame.visibility.items()}
        return replace(frame, objects=frame.objects.subset(keep), visibility=visibility)

    def _rng(self, key: tuple[str, int]) -> np.random.Generator | None:
        """Training: a generator seeded from torch's (so torch.manual_seed and worker seeding govern it).

        Evaluation: pose noise seeded per frame; None when nothing random happens.
        """
        if self.train and (self.pose_noise is not None or self.augment is not None):
            return np.random.default_rng(int(torch.randint(0, 2**62, ())))
        if self.pose_noise is not None:
            return self.pose_noise.frame_rng(key)
        return None

    def _poses(self, agents: list[AgentObservation],
               rng: np.random.Generator | None) -> tuple[np.ndarray, np.ndarray]:
        """(A, 4, 4) ``ego_from_agent``: clean, and noisy (the ego pose itself is never noised)."""
        world_from_lidar = np.stack([a.world_from_lidar for a in agents])
        clean = relative_transform(world_from_lidar, world_from_lidar[0])
        if self.pose_noise is None:
            return clean, clean.copy()
        noisy_world = self.pose_noise.apply(world_from_lidar, rng)
        return clean, relative_transform(noisy_world, noisy_world[0])

    def _clouds(self, agents: list[AgentObservation], ego_from_agent: np.ndarray) -> list[torch.Tensor]:
        """Per-agent clouds in their own frames, or (early) one cloud in the ego frame."""
        clouds = [torch.from_numpy(remove_self_hits(np.asarray(a.points, dtype=np.float32), self.self_hit_box))
                  for a in agents]
        if self.fusion != "early":
            return clouds
        return [torch.cat([move_points(c, m) for c, m in zip(clouds, ego_from_agent)], dim=0)]

    def _visible(self, frame: Frame, agents: list[AgentObservation]) -> np.ndarray | None:
        """(N,) bool objects seen by any of ``agents``, or None when the frame has no visibility data."""
        if not self.gt_visible_only or not frame.visibility:
            return None
        seen = np.zeros(len(frame.objects), dtype=bool)
        for a in agents:
            if a.agent_id in frame.visibility:
                seen |= np.asarray(frame.visibility[a.agent_id]) > 0
        return seen

    def _ego_objects(self, frame: Frame, agents: list[AgentObservation]) -> ObjectSet:
        """Objects (seen by the chosen agents) in the clean ego frame, not yet range-filtered."""
        seen = self._visible(frame, agents)
        objects = frame.objects if seen is None else frame.objects.subset(seen)
        ego_from_world = np.linalg.inv(agents[0].world_from_lidar)
        return ObjectSet(transform_boxes(ego_from_world, objects.boxes), objects.ids, objects.classes, objects.speeds)

    def _agent_objects(self, frame: Frame, agents: list[AgentObservation]) -> list[ObjectSet]:
        """Late fusion: each agent's own objects in its own frame, not yet range-filtered."""
        out = []
        for agent in agents:
            seen = self._visible(frame, [agent])
            objects = frame.objects if seen is None else frame.objects.subset(seen)
            boxes = transform_boxes(np.linalg.inv(agent.world_from_lidar), objects.boxes)
            out.append(ObjectSet(boxes, objects.ids, objects.classes, objects.speeds))
        return out

    @staticmethod
    def _augment(aug: Augmentation, clouds, gt: ObjectSet, agent_gt, clean, noisy):
        """Apply one global augmentation to every frame's content and conjugate the poses."""
        clouds = [aug.apply_points(c) for c in clouds]
        gt = ObjectSet(aug.apply_boxes(gt.boxes), gt.ids, gt.classes, gt.speeds)
        if agent_gt is not None:
            agent_gt = [ObjectSet(aug.apply_boxes(g.boxes), g.ids, g.classes, g.speeds) for g in agent_gt]
        return clouds, gt, agent_gt, aug.conjugate(clean), aug.conjugate(noisy)

    def _camera_inputs(self, key, agents: list[AgentObservation],
                       clouds: list[torch.Tensor]) -> tuple[CameraSample, list[torch.Tensor]]:
        """Modalities, resized images, calibrations and depth targets; camera-only agents' clouds emptied."""
        m = self.modality
        has_lidar, has_camera = m.assign(key[0], agents)
        split_dir = getattr(self.reader, "split_dir", None)
        where = [f"{split_dir}/{key[0]}/{a.agent_id} (frame {key[1]})" if split_dir is not None
                 else f"frame {key[0]}/{key[1]}" for a in agents]
        cams = load_cameras(agents, has_camera, m.image_hw, where)
        depth = sample_depth(clouds, cams, m.image_hw) if m.depth_targets else None
        clouds = [c if lidar else c[:0] for c, lidar in zip(clouds, has_lidar)]
        return CameraSample(**cams, depth=depth, has_lidar=torch.from_numpy(has_lidar),
                            has_camera=torch.from_numpy(has_camera)), clouds

    def _in_range(self, objects: ObjectSet, use_z: bool) -> ObjectSet:
        """Keep boxes with all 8 corners inside the grid's range (OpenCOOD's rule)."""
        if len(objects) == 0:
            return objects
        return objects.subset(boxes_in_range_mask(objects.boxes, self.grid.lidar_range, 8, use_z))

    def _pack(self, key, agents, clean, noisy, gt, agent_gt, cells, clouds, cams=None, world=None) -> CooperativeSample:
        keep_points = self.return_points or cells is None
        return CooperativeSample(
            key=key, fusion=self.fusion, agent_ids=tuple(a.agent_id for a in agents),
            is_infrastructure=torch.tensor([a.is_infrastructure for a in agents], dtype=torch.bool),
            ego_from_agent=torch.from_numpy(noisy.astype(np.float32)),
            ego_from_agent_clean=torch.from_numpy(clean.astype(np.float32)),
            gt=Targets.from_objects(gt), cells=cells, points=clouds if keep_points else None,
            agent_gt=None if agent_gt is None else [Targets.from_objects(g) for g in agent_gt], cameras=cams,
            world_from_agent=None if world is None else torch.from_numpy(np.asarray(world, dtype=np.float64)))
