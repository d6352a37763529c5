"""OPV2V per-agent YAML <-> library records: schema checks and the handedness conversions.

OPV2V (Xu et al., "OPV2V: An Open Benchmark Dataset and Fusion Pipeline for Perception with
Vehicle-to-Vehicle Communication", ICRA 2022) stores, per agent and frame, a YAML in CARLA's
left-handed world (x forward, y right, z up; poses ``[x, y, z, roll, yaw, pitch]`` in degrees).
The library is right-handed: a point or box in the CARLA frame has y and yaw negated relative to
ours (:mod:`coperception.geometry.pose`).

Facts mirrored from OpenCOOD / HEAL (read, not copied):

* object box (``box_utils.project_world_objects``): pose ``[location + center, angle]`` — the
  ``center`` offset is added in the *world* frame, unrotated (HEAL: ``center`` optional, default 0);
  corners ``(+-extent)`` so sizes are ``2 * extent``; yaw is ``angle[1]`` (degrees).
* camera extrinsic (HEAL): ``camera_to_lidar = x1_to_x2(cords, lidar_pose) @ UE4_FROM_OPENCV``; the
  YAML ``extrinsic`` (OpenCDA: lidar->camera in UE4 axes) is written for completeness, never read.
* speeds (``ego_speed``, vehicle ``speed``) are km/h.
* ``obj_type`` (optional, V2V4Real style) names the class; OpenCOOD/HEAL ignore it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from coperception.structures.records import OBJECT_CLASSES, AgentKind
from coperception.errors import FormatError
from coperception.geometry.pose import (
    carla_pose_to_matrix,
    right_to_left_handed,
    matrix_to_carla_pose,
    wrap_angle,
)

#: Maps OpenCV camera axes (x right, y down, z forward) to UE4 camera axes (x forward, y right, z up).
UE4_FROM_OPENCV = np.array([[0.0, 0.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, -1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
KMH_PER_MS = 3.6
_FLIP_Y = np.diag([1.0, -1.0, 1.0, 1.0])
_CLASS_NAMES = {"car": "Car", "van": "Van", "truck": "Truck", "bus": "Bus", "pedestrian": "Pedestrian",
                "cyclist": "Cyclist"}
_CLASS_ALIASES = {"suv": "car", "pickup": "car", "sedan": "car", "concretetruck": "truck",
                  "bicycle": "cyclist", "motorcycle": "cyclist", "scooter": "cyclist"}


@dataclass
class CameraGeometry:
    """One ``camera{i}`` entry. cords: (6,) CARLA pose of the camera; intrinsic: (3, 3)."""

    index: int
    cords: np.ndarray
    intrinsic: np.ndarray


@dataclass
class AgentParams:
    """One agent's YAML, validated and converted.

    lidar_pose: (6,) CARLA ``[x, y, z, roll, yaw, pitch]`` (degrees), as stored.
    object_ids: (N,) int64; boxes: (N, 7) right-handed world ``[x, y, z, l, w, h, yaw]``;
    speeds: (N,) m/s; classes: (N,) indices into OBJECT_CLASSES. ego_speed: m/s.
    """

    lidar_pose: np.ndarray
    ego_speed: float
    object_ids: np.ndarray
    boxes: np.ndarray
    speeds: np.ndarray
    classes: np.ndarray
    cameras: list[CameraGeometry]


def parse_agent_id(name: str, source) -> int:
    """Agent folder name -> int id (negative = road-side unit); FormatError otherwise."""
    try:
        return int(name)
    except (TypeError, ValueError):
        raise FormatError(f"{source}: agent id {name!r} is not an integer string "
                          "(OPV2V agent folders are CARLA ids; road-side units use negative ids)") from None


def agent_kind(agent_id: str) -> AgentKind:
    """V2XSet convention: negative ids are road-side units."""
    return AgentKind.INFRASTRUCTURE if int(agent_id) < 0 else AgentKind.VEHICLE


def _array(value, shape: tuple[int, ...], field: str, source) -> np.ndarray:
    """Numbers (or numeric strings) of the given shape, finite."""
    if isinstance(value, (str, bytes)):
        raise FormatError(f"{source}: field {field} must be numbers of shape {shape}, got {value!r:.120}")
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError, RecursionError):
        raise FormatError(f"{source}: field {field} must be numbers of shape {shape}, got {value!r:.120}") from None
    if arr.shape != shape:
        raise FormatError(f"{source}: field {field} must have shape {shape}, got {arr.shape}: {value!r:.120}")
    if not np.all(np.isfinite(arr)):
        raise FormatError(f"{source}: field {field} has non-finite values: {value!r:.120}")
    return arr


def _number(value, field: str, source) -> float:
    """A finite number; strings are parsed (YAML read without tag resolution keeps scalars as str)."""
    try:
        number = float(value) if isinstance(value, (int, float, str)) and not isinstance(value, bool) else None
    except ValueError:
        number = None
    if number is None or not np.isfinite(number):
        raise FormatError(f"{source}: field {field} must be a finite number, got {value!r:.80}")
    return number


def parse_agent_params(params, source) -> AgentParams:
    """Validate one OPV2V per-agent YAML dict and convert it (see :class:`AgentParams`)."""
    if not isinstance(params, dict):
        raise FormatError(f"{source}: expected a mapping at the top level, got {type(params).__name__}")
    if "lidar_pose" not in params:
        raise FormatError(f"{source}: missing field lidar_pose")
    lidar_pose = _array(params["lidar_pose"], (6,), "lidar_pose", source)
    ego_speed = _number(params.get("ego_speed", 0.0), "ego_speed", source) / KMH_PER_MS
    ids, boxes, speeds, classes = parse_vehicles(params.get("vehicles") or {}, source)
    cameras = []
    while f"camera{len(cameras)}" in params:
        i = len(cameras)
        cam = params[f"camera{i}"]
        if not isinstance(cam, dict) or "cords" not in cam or "intrinsic" not in cam:
            raise FormatError(f"{source}: field camera{i} must be a mapping with cords and intrinsic")
        cameras.append(CameraGeometry(i, _array(cam["cords"], (6,), f"camera{i}.cords", source),
                                      _array(cam["intrinsic"], (3, 3), f"camera{i}.intrinsic", source)))
    return AgentParams(lidar_pose, ego_speed, ids, boxes, speeds, classes, cameras)


def _object_id(key, source) -> int:
    if isinstance(key, bool):
        raise FormatError(f"{source}: vehicles key {key!r} is not an integer object id")
    try:
        return int(key)
    except (TypeError, ValueError):
        raise FormatError(f"{source}: vehicles key {key!r} is not an integer object id") from None


def _class_index(name, field: str, source) -> int:
    key = str(name).strip().lower().replace(" ", "")
    key = _CLASS_ALIASES.get(key, key)
    if key not in OBJECT_CLASSES:
        raise FormatError(f"{source}: field {field} has unknown class {name!r} (known: {', '.join(OBJECT_CLASSES)})")
    return OBJECT_CLASSES.index(key)


def _vehicle_column(entries: list, ids: list[int], field: str, source, default=None) -> np.ndarray:
    """Stack ``entry[field]`` (3 numbers) of every vehicle; precise FormatError on the first bad one."""
    try:
        values = [e[field] if default is None else e.get(field, default) for e in entries]
        arr = np.asarray(values, dtype=np.float64)
        if arr.shape == (len(entries), 3) and np.all(np.isfinite(arr)):
            return arr
    except (KeyError, TypeError, ValueError, AttributeError, RecursionError):
        pass
    for oid, entry in zip(ids, entries):
        if not isinstance(entry, dict):
            raise FormatError(f"{source}: field vehicles.{oid} must be a mapping, got {entry!r:.80}")
        if field not in entry and default is None:
            raise FormatError(f"{source}: missing field vehicles.{oid}.{field}")
        _array(entry.get(field, default), (3,), f"vehicles.{oid}.{field}", source)
    raise FormatError(f"{source}: field vehicles.*.{field} is malformed")  # unreachable in practice


def parse_vehicles(vehicles, source) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """OPV2V ``vehicles`` mapping -> ids (N,), right-handed world boxes (N, 7), speeds m/s, classes."""
    if not isinstance(vehicles, dict):
        raise FormatError(f"{source}: field vehicles must be a mapping of object id -> object, "
                          f"got {type(vehicles).__name__}")
    ids = [_object_id(k, source) for k in vehicles]
    entries = list(vehicles.values())
    n = len(entries)
    if n == 0:
        return np.zeros(0, np.int64), np.zeros((0, 7)), np.zeros(0), np.zeros(0, np.int64)
    location = _vehicle_column(entries, ids, "location", source)
    center = _vehicle_column(entries, ids, "center", source, default=(0.0, 0.0, 0.0))
    angle = _vehicle_column(entries, ids, "angle", source)
    extent = _vehicle_column(entries, ids, "extent", source)
    speeds = np.array([_number(e.get("speed", 0.0), f"vehicles.{i}.speed", source)
                       for i, e in zip(ids, entries)]) / KMH_PER_MS
    classes = np.array([_class_index(e["obj_type"], f"vehicles.{i}.obj_type", source) if "obj_type" in e else 0
                        for i, e in zip(ids, entries)], dtype=np.int64)
    boxes = np.empty((n, 7))
    boxes[:, :3] = location + center
    boxes[:, 1] *= -1.0
    boxes[:, 3:6] = 2.0 * np.abs(extent)
    boxes[:, 6] = wrap_angle(-np.radians(angle[:, 1]))
    return np.asarray(ids, dtype=np.int64), boxes, speeds, classes


def boxes_to_vehicles(boxes: np.ndarray, ids: np.ndarray, speeds: np.ndarray, classes: np.ndarray) -> dict:
    """Right-handed world boxes -> OPV2V ``vehicles`` mapping (CARLA frame, km/h, half extents).

    ``location`` is the bottom centre and ``center = [0, 0, h / 2]`` (CARLA's vehicle origin is on
    the ground), so ``location + center`` is the box centre exactly as OpenCOOD reads it.
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 7)
    out = {}
    for row, oid, speed, cls in zip(b.tolist(), np.asarray(ids).tolist(), np.asarray(speeds).tolist(),
                                    np.asarray(classes).tolist()):
        x, y, z, length, width, height, yaw = row
        out[int(oid)] = {
            "location": [x, -y, z - height / 2.0],
            "center": [0.0, 0.0, height / 2.0],
            "angle": [0.0, -float(np.degrees(yaw)), 0.0],
            "extent": [length / 2.0, width / 2.0, height / 2.0],
            "speed": speed * KMH_PER_MS,
            "obj_type": _CLASS_NAMES.get(OBJECT_CLASSES[cls], OBJECT_CLASSES[cls]),
        }
    return out


def lidar_from_camera_from_cords(cords: np.ndarray, lidar_pose: np.ndarray) -> np.ndarray:
    """HEAL's camera->lidar for an OPV2V camera, mirrored into the right-handed lidar frame.

    Returns (4, 4) mapping OpenCV camera coordinates to right-handed LiDAR coordinates.
    """
    lidar_from_cam_ue4 = np.linalg.inv(carla_pose_to_matrix(lidar_pose)) @ carla_pose_to_matrix(cords)
    return _FLIP_Y @ lidar_from_cam_ue4 @ UE4_FROM_OPENCV


def camera_entry(lidar_from_camera: np.ndarray, world_from_lidar: np.ndarray, intrinsic: np.ndarray) -> dict:
    """Library camera geometry -> OPV2V ``camera{i}`` mapping {cords, extrinsic, intrinsic}.

    ``extrinsic`` is OpenCDA's lidar->camera in UE4 axes (``inv(T_world_cam) @ T_world_lidar``).
    """
    world_from_lidar = np.asarray(world_from_lidar, np.float64)
    world_from_cam_ue4 = _FLIP_Y @ world_from_lidar @ np.asarray(lidar_from_camera, np.float64) @ np.linalg.inv(
        UE4_FROM_OPENCV)
    cords = matrix_to_carla_pose(world_from_cam_ue4)
    world_from_lidar_ue4 = right_to_left_handed(world_from_lidar)
    extrinsic = np.linalg.inv(carla_pose_to_matrix(cords)) @ world_from_lidar_ue4
    return {"cords": cords.tolist(), "extrinsic": extrinsic.tolist(),
            "intrinsic": np.asarray(intrinsic, np.float64).reshape(3, 3).tolist()}
