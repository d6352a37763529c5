"""Typed records at the seams between stages: observations, frames, objects, detections.

Everything here is in the library convention (see :mod:`coperception.geometry`): right-handed,
metres, radians, boxes ``[x, y, z, l, w, h, yaw]`` with z at the box centre. Dataset formats
convert into these records in :mod:`coperception.data.formats` and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import numpy as np

from coperception.structures.boxes import Boxes3D

#: Object classes known to the library; ``ObjectSet.classes`` indexes this tuple.
OBJECT_CLASSES: tuple[str, ...] = ("car", "van", "truck", "bus", "pedestrian", "cyclist")
#: Indices of the classes that OPV2V-style vehicle detection evaluates.
VEHICLE_CLASSES: tuple[int, ...] = (0, 1, 2, 3)


class AgentKind(str, Enum):
    """What an agent is: a connected vehicle or a road-side (infrastructure) unit."""

    VEHICLE = "vehicle"
    INFRASTRUCTURE = "infrastructure"


@dataclass(frozen=True)
class Camera:
    """One pinhole camera of an agent.

    image: (H, W, 3) uint8 RGB, or None when only geometry is known.
    intrinsic: (3, 3) pixel intrinsics K.
    lidar_from_camera: (4, 4) maps points in the camera frame (OpenCV axes: x right, y down,
        z forward) to the agent's LiDAR frame.
    depth: optional (H, W) float32 metric depth along the optical axis (0 = no hit).
    """

    name: str
    intrinsic: np.ndarray
    lidar_from_camera: np.ndarray
    image: np.ndarray | None = None
    depth: np.ndarray | None = None


@dataclass
class AgentObservation:
    """What one agent senses in one frame.

    points: (P, 4) float32 ``x, y, z, intensity`` in the agent's LiDAR frame (metres, intensity 0..1).
    world_from_lidar: (4, 4) float64 pose of the LiDAR in the world.
    speed: ego speed in m/s.
    lidar_channels: beam count of the LiDAR that produced ``points`` (None if unknown).
    extra_points: other LiDAR models of the same agent keyed by beam count (OPV2V-H's 32/16-beam
        clouds), same layout as ``points``.
    """

    agent_id: str
    kind: AgentKind
    world_from_lidar: np.ndarray
    points: np.ndarray
    cameras: tuple[Camera, ...] = ()
    speed: float = 0.0
    lidar_channels: int | None = None
    extra_points: dict[int, np.ndarray] = field(default_factory=dict)

    @property
    def is_infrastructure(self) -> bool:
        return self.kind is AgentKind.INFRASTRUCTURE


@dataclass
class ObjectSet:
    """Ground-truth objects of one frame.

    boxes: (N, 7) float64 ``[x, y, z, l, w, h, yaw]`` in the frame named by the holder
        (world frame inside :class:`Frame`).
    ids: (N,) int64 object ids, stable across frames of a scenario when the source has them.
    classes: (N,) int64 indices into :data:`OBJECT_CLASSES`.
    speeds: (N,) float64 m/s (0 when unknown).
    """

    boxes: np.ndarray
    ids: np.ndarray
    classes: np.ndarray
    speeds: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float64).reshape(-1, 7)
        n = len(self.boxes)
        self.ids = np.asarray(self.ids, dtype=np.int64).reshape(n)
        self.classes = np.asarray(self.classes, dtype=np.int64).reshape(n)
        self.speeds = np.zeros(n) if self.speeds is None else np.asarray(self.speeds, dtype=np.float64).reshape(n)

    def __len__(self) -> int:
        return len(self.boxes)

    def subset(self, mask_or_index) -> "ObjectSet":
        return ObjectSet(self.boxes[mask_or_index], self.ids[mask_or_index],
                         self.classes[mask_or_index], self.speeds[mask_or_index])

    @staticmethod
    def empty() -> "ObjectSet":
        return ObjectSet(np.zeros((0, 7)), np.zeros(0, np.int64), np.zeros(0, np.int64))


@dataclass
class Frame:
    """One time step of a cooperative scene.

    observations: agent id -> observation, ego first (insertion order is the agent order).
    objects: ground truth in the **world** frame (union over agents, de-duplicated by id).
    visibility: agent id -> (N,) int32 number of that agent's LiDAR points on each object of
        ``objects`` (0 = the agent does not see it). Empty when the source has no such data.
    """

    scenario: str
    timestamp: int
    ego_id: str
    observations: dict[str, AgentObservation]
    objects: ObjectSet
    visibility: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def ego(self) -> AgentObservation:
        return self.observations[self.ego_id]

    @property
    def agent_ids(self) -> list[str]:
        return list(self.observations)


@dataclass
class Detections:
    """Detector output for one frame.

    boxes: (N, 7) ``[x, y, z, l, w, h, yaw]``; scores: (N,) in [0, 1]; labels: (N,) class indices;
    frame: the frame of the boxes -- ``"ego"`` (the ego's LiDAR frame, what inference returns) or
    ``"agent:<id>"`` (an agent's own detections before they are sent / moved).
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray | None = None
    frame: str = "ego"

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float64).reshape(-1, 7)
        self.scores = np.asarray(self.scores, dtype=np.float64).reshape(len(self.boxes))
        if self.labels is None:
            self.labels = np.zeros(len(self.boxes), dtype=np.int64)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(len(self.boxes))

    def __len__(self) -> int:
        return len(self.boxes)

    @property
    def boxes3d(self) -> "Boxes3D":
        """The boxes with their frame (:class:`~coperception.structures.boxes.Boxes3D`)."""
        return Boxes3D(self.boxes, self.frame)
