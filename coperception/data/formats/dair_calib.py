"""DAIR-V2X-C calibration JSON: parsing, pose composition and the inverse split for writing.

DAIR-V2X (Yu et al., "DAIR-V2X: A Large-Scale Dataset for Vehicle-Infrastructure Cooperative 3D
Object Detection", CVPR 2022) stores every transform as ``{"rotation": 3x3, "translation": 3x1}``
(translation as nested ``[[x], [y], [z]]``). Frames are right-handed like the library, so poses are
used as they are. The chain (DAIR ``v2x_utils/transformation_utils.py``, HEAL
``veh_side_rot_and_trans_to_trasnformation_matrix`` / ``inf_side_...``):

* vehicle: ``world_from_lidar = novatel_to_world @ lidar_to_novatel`` where ``lidar_to_novatel``
  nests its rotation/translation under an extra ``"transform"`` key;
* infrastructure: ``world_from_lidar = virtuallidar_to_world`` with ``(delta_x, delta_y, 0)`` of
  the cooperative ``system_error_offset`` added to the translation (a world-frame x/y fix in metres;
  ``""`` means no offset, as in DAIR's ``calib_i2v.py``).
"""

from __future__ import annotations

import json
import logging
import math
import os

import numpy as np

from coperception.errors import FormatError

log = logging.getLogger(__name__)

#: Tolerance on ``|R R^T - I|`` above which a rotation is reported as not orthonormal.
_ORTHO_TOL = 1e-3


def read_json(path: str):
    """Load a JSON file; a missing or malformed file raises :class:`FormatError` naming it."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise FormatError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FormatError(f"{path}: malformed JSON ({exc})") from None
    except OSError as exc:
        raise FormatError(f"{path}: cannot read ({exc})") from None


def write_json(path: str, obj) -> None:
    """Write ``obj`` as JSON (directories are created; floats keep full precision)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f)
    os.replace(tmp, path)


def _numeric(value, path: str, field: str, shapes: tuple[tuple[int, ...], ...]) -> np.ndarray:
    """``value`` as a finite float64 array of one of ``shapes``, else :class:`FormatError`."""
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise FormatError(f"{path}: field '{field}' must be numeric, got {value!r:.80}") from None
    if arr.shape not in shapes:
        want = " or ".join("x".join(map(str, s)) for s in shapes)
        raise FormatError(f"{path}: field '{field}' must be {want}, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise FormatError(f"{path}: field '{field}' has non-finite values")
    return arr


def _field(obj, key: str, path: str, where: str = ""):
    if not isinstance(obj, dict):
        raise FormatError(f"{path}: expected a JSON object{where}, got {type(obj).__name__}")
    if key not in obj:
        raise FormatError(f"{path}: missing field '{key}'{where}")
    return obj[key]


def parse_rigid(obj, path: str, prefix: str = "") -> np.ndarray:
    """``{"rotation": 3x3, "translation": 3x1}`` -> (4, 4) float64.

    The translation may also be a flat 3-list. A rotation that is not orthonormal is logged.
    """
    where = f" under '{prefix}'" if prefix else ""
    name = f"{prefix}." if prefix else ""
    rot = _numeric(_field(obj, "rotation", path, where), path, name + "rotation", ((3, 3),))
    trans = _numeric(_field(obj, "translation", path, where), path, name + "translation", ((3, 1), (3,)))
    err = np.abs(rot @ rot.T - np.eye(3)).max()
    if err > _ORTHO_TOL:
        log.warning("%s: rotation is not orthonormal (max |R R^T - I| = %.2g)", path, err)
    m = np.eye(4)
    m[:3, :3] = rot
    m[:3, 3] = trans.reshape(3)
    return m


def rigid_json(matrix: np.ndarray) -> dict:
    """(4, 4) -> ``{"rotation": 3x3 list, "translation": [[x], [y], [z]]}``."""
    m = np.asarray(matrix, dtype=np.float64)
    return {"rotation": m[:3, :3].tolist(), "translation": m[:3, 3].reshape(3, 1).tolist()}


def load_rigid(path: str) -> np.ndarray:
    """Read a plain rigid-transform calib file (novatel_to_world, lidar_to_camera, ...)."""
    return parse_rigid(read_json(path), path)


def load_lidar_to_novatel(path: str) -> np.ndarray:
    """Read ``lidar_to_novatel`` (rotation/translation nested under ``"transform"``) -> (4, 4)."""
    obj = read_json(path)
    return parse_rigid(_field(obj, "transform", path), path, prefix="transform")


def parse_offset(value, path: str, where: str = "") -> tuple[float, float]:
    """``system_error_offset`` / ``relative_error`` -> ``(delta_x, delta_y)`` metres.

    ``""`` (the whole value, or either delta) means no offset.
    """
    if value == "" or value is None:
        return 0.0, 0.0
    if not isinstance(value, dict):
        raise FormatError(f"{path}: system_error_offset{where} must be an object or \"\", got {value!r:.80}")
    out = []
    for key in ("delta_x", "delta_y"):
        v = _field(value, key, path, f" in system_error_offset{where}")
        if v == "":
            v = 0.0
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise FormatError(f"{path}: system_error_offset{where}.{key} must be a number, got {v!r:.80}") from None
        if not math.isfinite(f):
            raise FormatError(f"{path}: system_error_offset{where}.{key} is not finite")
        out.append(f)
    return out[0], out[1]


def offset_json(delta: tuple[float, float]) -> dict:
    return {"delta_x": float(delta[0]), "delta_y": float(delta[1])}


def vehicle_world_from_lidar(lidar_to_novatel: np.ndarray, novatel_to_world: np.ndarray) -> np.ndarray:
    """``world_from_lidar = novatel_to_world @ lidar_to_novatel`` (both (4, 4))."""
    return np.asarray(novatel_to_world, dtype=np.float64) @ np.asarray(lidar_to_novatel, dtype=np.float64)


def infra_world_from_lidar(virtuallidar_to_world: np.ndarray, delta: tuple[float, float]) -> np.ndarray:
    """RSU pose: ``virtuallidar_to_world`` with ``(delta_x, delta_y, 0)`` added to its translation."""
    m = np.array(virtuallidar_to_world, dtype=np.float64)
    m[0, 3] += delta[0]
    m[1, 3] += delta[1]
    return m


def split_vehicle_pose(world_from_lidar: np.ndarray, lidar_to_novatel: np.ndarray) -> np.ndarray:
    """Inverse of :func:`vehicle_world_from_lidar`: the ``novatel_to_world`` that composes to the pose."""
    return np.asarray(world_from_lidar, dtype=np.float64) @ np.linalg.inv(lidar_to_novatel)


def split_infra_pose(world_from_lidar: np.ndarray, delta: tuple[float, float]) -> np.ndarray:
    """Inverse of :func:`infra_world_from_lidar`: the stored ``virtuallidar_to_world``."""
    return infra_world_from_lidar(world_from_lidar, (-delta[0], -delta[1]))


def load_intrinsic(path: str) -> np.ndarray:
    """``camera_intrinsic`` JSON -> (3, 3) K from ``cam_K`` (9 row-major values or 3x3)."""
    obj = read_json(path)
    k = _numeric(_field(obj, "cam_K", path), path, "cam_K", ((9,), (3, 3)))
    return k.reshape(3, 3)


def intrinsic_json(k: np.ndarray) -> dict:
    """(3, 3) K -> ``{"cam_K": 9 floats, "cam_D": 5 zeros}`` (images are written undistorted)."""
    return {"cam_K": np.asarray(k, dtype=np.float64).reshape(9).tolist(), "cam_D": [0.0] * 5}
