"""DAIR-V2X-C label JSON: object types, the ``world_8_points`` corner order, and box conversion.

Two label kinds exist (DAIR-V2X ``data/README.md``):

* cooperative ``label_world/{veh_id}.json``: a list of objects whose geometry is
  ``world_8_points``, eight ``[x, y, z]`` corners in the world frame (the other 3D fields of that
  file are documented as unusable, so boxes are fitted to the corners);
* single-side ``label/lidar`` / ``label/virtuallidar``: ``3d_location`` (box centre, z at the
  centre), ``3d_dimensions {h, w, l}`` and ``rotation`` (yaw about z) in that side's LiDAR frame.

Corner order of ``world_8_points``, in the object frame (x along the heading, y to its left,
z up)::

    0 (+l/2, +w/2, -h/2)   1 (+l/2, -w/2, -h/2)   2 (-l/2, -w/2, -h/2)   3 (-l/2, +w/2, -h/2)
    4..7: the same four with +h/2

i.e. the bottom ring front-left, front-right, rear-right, rear-left, then the top ring. This is
the order of DAIR's ``get_3d_8points``; its evaluation (``v2x_utils/eval_utils.py``) reads label
corners 0-3 as the bottom face (``perm_label = [3, 2, 1, 0, 7, 6, 5, 4]``), its
``label_world2v.get_rotation`` derives yaw from corners 0-2 in this order, and HEAL's
``corner_to_center`` (length 0-3, width 0-1, height 4-7 minus 0-3) agrees. The order
``(x0y0z0, x0y0z1, x0y1z1, ...)`` written in DAIR's comments is that of mmdet3d *predicted*
corners, which DAIR permutes (``perm_pred``) before comparing with labels.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from coperception.structures.records import OBJECT_CLASSES
from coperception.errors import FormatError
from coperception.geometry import wrap_angle
from coperception.geometry.boxes import boxes_to_bev_corners, boxes_to_corners, corners_to_boxes

log = logging.getLogger(__name__)

#: Library class name -> DAIR ``type``.
CLASS_TO_DAIR: dict[str, str] = {
    "car": "Car", "van": "Van", "truck": "Truck", "bus": "Bus",
    "pedestrian": "Pedestrian", "cyclist": "Cyclist",
}
#: Lower-cased DAIR ``type`` -> library class index; ``None`` = a DAIR class the library skips.
DAIR_TO_CLASS: dict[str, int | None] = {
    **{dair.lower(): OBJECT_CLASSES.index(ours) for ours, dair in CLASS_TO_DAIR.items()},
    "tricyclist": OBJECT_CLASSES.index("cyclist"),
    "motorcyclist": OBJECT_CLASSES.index("cyclist"),
    "barrowlist": OBJECT_CLASSES.index("pedestrian"),
    "trafficcone": None,
}

# DAIR corner k is OpenCOOD corner _FROM_OPENCOOD[k] (left/right swapped within each ring);
# the permutation is its own inverse.
_FROM_OPENCOOD = np.array([1, 0, 3, 2, 5, 4, 7, 6])
# Warn when corners deviate from the fitted box by more than this (metres + fraction of size).
_FIT_TOL_M, _FIT_TOL_REL = 0.1, 0.05


@dataclass
class Labels:
    """Parsed objects of one label file.

    boxes: (N, 7) ``[x, y, z, l, w, h, yaw]`` in the file's frame; classes: (N,) library class
    indices; ids: (N,) int64 ``track_id`` when every object has one, else the object's position in
    the file (DAIR has no cross-frame ids).
    """

    boxes: np.ndarray
    classes: np.ndarray
    ids: np.ndarray
    has_track_ids: bool


def boxes_to_dair_corners(boxes: np.ndarray) -> np.ndarray:
    """(N, 7) boxes -> (N, 8, 3) corners in DAIR ``world_8_points`` order (same frame)."""
    return boxes_to_corners(np.asarray(boxes, dtype=np.float64).reshape(-1, 7))[:, _FROM_OPENCOOD]


def dair_corners_to_boxes(corners: np.ndarray) -> np.ndarray:
    """(N, 8, 3) corners in DAIR order -> (N, 7) boxes, yaw in ``[-pi, pi)``.

    Centre = mean of the 8 corners, sizes = mean of the four parallel edges, yaw from the summed
    front-minus-rear edge vectors (:func:`coperception.geometry.boxes.corners_to_boxes`, which
    stays right near +-pi where HEAL's average of four atan2 values flips to ~0).
    """
    c = np.asarray(corners, dtype=np.float64).reshape(-1, 8, 3)
    return corners_to_boxes(c[:, _FROM_OPENCOOD])


def corner_fit_error(corners: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """(N,) largest distance between given corners and those of the fitted boxes (metres)."""
    return np.linalg.norm(np.asarray(corners).reshape(-1, 8, 3) - boxes_to_dair_corners(boxes), axis=-1).max(axis=1)


def _class_of(entry: dict, path: str, i: int) -> int | None:
    kind = entry.get("type")
    if not isinstance(kind, str):
        raise FormatError(f"{path}: object {i} field 'type' must be a string, got {kind!r:.60}")
    key = kind.lower()
    if key not in DAIR_TO_CLASS:
        raise FormatError(f"{path}: object {i} has unknown type {kind!r}; known: {sorted(DAIR_TO_CLASS)}")
    return DAIR_TO_CLASS[key]


def _number(obj: dict, key: str, path: str, what: str) -> float:
    if not isinstance(obj, dict) or key not in obj:
        raise FormatError(f"{path}: {what} is missing field '{key}'")
    try:
        v = float(obj[key])  # camera labels store numbers as strings
    except (TypeError, ValueError):
        raise FormatError(f"{path}: {what}.{key} must be a number, got {obj[key]!r:.60}") from None
    if not np.isfinite(v):
        raise FormatError(f"{path}: {what}.{key} is not finite")
    return v


def _dims(entry: dict, path: str, i: int) -> tuple[float, float, float]:
    d = entry.get("3d_dimensions")
    what = f"object {i} 3d_dimensions"
    return _number(d, "l", path, what), _number(d, "w", path, what), _number(d, "h", path, what)


def _track_ids(entries: list[dict], keep: list[int]) -> np.ndarray | None:
    try:
        return np.array([int(entries[i]["track_id"]) for i in keep], dtype=np.int64)
    except (KeyError, TypeError, ValueError):
        return None


def _as_list(obj, path: str) -> list:
    if not isinstance(obj, list):
        raise FormatError(f"{path}: a label file must hold a JSON list of objects, got {type(obj).__name__}")
    for i, entry in enumerate(obj):
        if not isinstance(entry, dict):
            raise FormatError(f"{path}: object {i} must be a JSON object, got {type(entry).__name__}")
    return obj


def _finish(entries, keep, classes, boxes) -> Labels:
    ids = _track_ids(entries, keep)
    has = ids is not None
    if ids is None:
        ids = np.asarray(keep, dtype=np.int64)
    return Labels(np.asarray(boxes, dtype=np.float64).reshape(-1, 7), np.asarray(classes, dtype=np.int64), ids, has)


def parse_cooperative(obj, path: str) -> Labels:
    """Cooperative ``label_world`` list -> world boxes fitted to ``world_8_points``.

    Objects with a zero ``3d_dimensions`` entry (skipped by DAIR and HEAL) or a class the library
    does not model (TrafficCone) are dropped.
    """
    entries = _as_list(obj, path)
    keep, classes, corners = [], [], []
    for i, entry in enumerate(entries):
        cls = _class_of(entry, path, i)
        if "world_8_points" not in entry:
            raise FormatError(f"{path}: object {i} is missing field 'world_8_points'")
        try:
            pts = np.asarray(entry["world_8_points"], dtype=np.float64)
        except (TypeError, ValueError):
            raise FormatError(f"{path}: object {i} field 'world_8_points' must be 8x3 numbers") from None
        if pts.shape != (8, 3) or not np.all(np.isfinite(pts)):
            raise FormatError(f"{path}: object {i} field 'world_8_points' must be 8x3 finite numbers, "
                              f"got shape {pts.shape}")
        if cls is None or ("3d_dimensions" in entry and 0.0 in _dims(entry, path, i)):
            continue
        keep.append(i)
        classes.append(cls)
        corners.append(pts)
    corners = np.asarray(corners, dtype=np.float64).reshape(-1, 8, 3)
    boxes = dair_corners_to_boxes(corners)
    err = corner_fit_error(corners, boxes)
    bad = err > _FIT_TOL_M + _FIT_TOL_REL * np.linalg.norm(boxes[:, 3:6], axis=1)
    if bad.any():
        log.warning("%s: %d of %d objects' world_8_points are not a box in DAIR corner order "
                    "(worst corner off by %.2f m)", path, int(bad.sum()), len(boxes), float(err.max()))
    return _finish(entries, keep, classes, boxes)


def parse_single(obj, path: str) -> Labels:
    """Single-side label list -> boxes in that side's LiDAR frame (``3d_location`` z = centre)."""
    entries = _as_list(obj, path)
    keep, classes, boxes = [], [], []
    for i, entry in enumerate(entries):
        cls = _class_of(entry, path, i)
        l, w, h = _dims(entry, path, i)
        loc = entry.get("3d_location")
        what = f"object {i} 3d_location"
        x, y, z = (_number(loc, k, path, what) for k in ("x", "y", "z"))
        yaw = _number(entry, "rotation", path, f"object {i}")
        if cls is None or 0.0 in (l, w, h):
            continue
        keep.append(i)
        classes.append(cls)
        boxes.append([x, y, z, l, w, h, yaw])
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 7)
    boxes[:, 6] = wrap_angle(boxes[:, 6])
    return _finish(entries, keep, classes, boxes)


def _dair_type(cls: int) -> str:
    name = OBJECT_CLASSES[cls] if 0 <= cls < len(OBJECT_CLASSES) else str(cls)
    if name not in CLASS_TO_DAIR:
        raise FormatError(f"object class {name!r} has no DAIR-V2X type; known: {sorted(CLASS_TO_DAIR)}")
    return CLASS_TO_DAIR[name]


def _common(box, cls: int, obj_id: int) -> dict:
    return {
        "type": _dair_type(int(cls)),
        "3d_dimensions": {"h": float(box[5]), "w": float(box[4]), "l": float(box[3])},
        "3d_location": {"x": float(box[0]), "y": float(box[1]), "z": float(box[2])},
        "rotation": float(box[6]),
        "track_id": str(int(obj_id)),
    }


def cooperative_json(boxes: np.ndarray, classes: np.ndarray, ids: np.ndarray, offset: dict | str) -> list[dict]:
    """World boxes -> cooperative ``label_world`` list (``world_8_points`` in DAIR order).

    ``track_id`` (a DAIR-V2X-Seq field) carries the library object id so that it round-trips.
    """
    corners = boxes_to_dair_corners(boxes)
    out = []
    for box, cls, obj_id, pts in zip(boxes, classes, ids, corners):
        entry = _common(box, cls, obj_id)
        entry["world_8_points"] = pts.tolist()
        entry["system_error_offset"] = offset
        out.append(entry)
    return out


def single_json(boxes: np.ndarray, classes: np.ndarray, ids: np.ndarray) -> list[dict]:
    """LiDAR-frame boxes -> single-side label list (no image boxes: ``2d_box`` is zero)."""
    out = []
    for box, cls, obj_id in zip(boxes, classes, ids):
        entry = {"truncated_state": 0, "occluded_state": 0,
                 "2d_box": {"xmin": 0.0, "ymin": 0.0, "xmax": 0.0, "ymax": 0.0}}
        entry.update(_common(box, cls, obj_id))
        out.append(entry)
    return out


def bev_overlap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, M) bool: BEV footprints of boxes ``a`` (N, 7) and ``b`` (M, 7) overlap with positive area.

    Separating-axis test on the two rectangles' edge normals (vectorised over all pairs).
    """
    ca = boxes_to_bev_corners(np.asarray(a, dtype=np.float64).reshape(-1, 7))
    cb = boxes_to_bev_corners(np.asarray(b, dtype=np.float64).reshape(-1, 7))
    if len(ca) == 0 or len(cb) == 0:
        return np.zeros((len(ca), len(cb)), dtype=bool)

    def axes(yaw):
        return np.stack([np.stack([np.cos(yaw), np.sin(yaw)], -1), np.stack([-np.sin(yaw), np.cos(yaw)], -1)], 1)

    ax = np.concatenate(np.broadcast_arrays(axes(np.asarray(a)[:, 6])[:, None], axes(np.asarray(b)[:, 6])[None]), 2)
    pa = np.einsum("nkd,nmad->nmak", ca, ax)  # (N, M, 4 axes, 4 corners)
    pb = np.einsum("mkd,nmad->nmak", cb, ax)
    separated = (pa.max(-1) <= pb.min(-1) + 1e-9) | (pb.max(-1) <= pa.min(-1) + 1e-9)
    return ~separated.any(-1)
