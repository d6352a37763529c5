"""3D bounding boxes ``[x, y, z, l, w, h, yaw]``: validation, corners, transforms, range masks.

Boxes follow the library convention (see :mod:`coperception.geometry`): centre ``(x, y, z)``
with z at the box centre, full length ``l`` along the heading, width ``w``, height ``h``
(metres) and heading ``yaw`` about +z (radians, counter-clockwise from +x).

Corners use OpenCOOD's order (``boxes_to_corners_3d`` in ``opencood/utils/box_utils.py``, the
convention of the OPV2V paper's code base), so that corner arrays are interchangeable with
OpenCOOD's and its evaluation (which reads the first four corners as the BEV polygon)::

        4 -------- 5          local template (x forward, y left, z up), times (l, w, h) / 2:
       /|         /|          0 (+,-,-)  1 (+,+,-)  2 (-,+,-)  3 (-,-,-)   bottom face
      7 -------- 6 .          4 (+,-,+)  5 (+,+,+)  6 (-,+,+)  7 (-,-,+)   top face
      | |        | |
      . 0 -------- 1          corners 0-1-2-3 run counter-clockwise seen from above.
      |/         |/
      3 -------- 2

Functions accept ``np.ndarray`` or ``torch.Tensor`` and return the same kind, dtype and device.
"""

from __future__ import annotations

import sys

import numpy as np

from coperception.errors import BoxError
from coperception.geometry.pose import wrap_angle

_TEMPLATE = 0.5 * np.array(
    [[1, -1, -1], [1, 1, -1], [-1, 1, -1], [-1, -1, -1],
     [1, -1, 1], [1, 1, 1], [-1, 1, 1], [-1, -1, 1]], dtype=np.float64)

# OpenCOOD's 'hwl' centre order stores [x, y, z, h, w, l, yaw]; swapping columns 3 and 5 maps
# it to ours and back (the permutation is its own inverse).
_HWL_SWAP = [0, 1, 2, 5, 4, 3, 6]


def _torch():
    """torch, imported on first use: numpy-only callers (the simulator's workers) never pay for it."""
    import torch
    return torch


def _is_torch(x) -> bool:
    torch = sys.modules.get("torch")  # a tensor can only exist once torch is imported
    return torch is not None and isinstance(x, torch.Tensor)


def _stack(arrays, axis: int):
    return _torch().stack(arrays, dim=axis) if _is_torch(arrays[0]) else np.stack(arrays, axis=axis)


def _as_numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if _is_torch(x) else np.asarray(x)


def _first_bad_row(bad_rows: np.ndarray) -> int:
    return int(np.flatnonzero(bad_rows)[0])


def validate_boxes(boxes, name: str = "boxes"):
    """Check boxes (N, 7) ``[x, y, z, l, w, h, yaw]``; return them unchanged.

    Raises :class:`BoxError` naming ``name``, the first offending row and its value for a
    wrong shape, a NaN/inf entry, or a non-positive length, width or height.
    """
    arr = _as_numpy(boxes)
    if arr.ndim != 2 or arr.shape[1] != 7:
        raise BoxError(f"{name} must have shape (N, 7) [x, y, z, l, w, h, yaw], got {tuple(arr.shape)}")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise BoxError(f"{name} must be real numbers, got dtype {arr.dtype}")
    finite = np.isfinite(arr)
    if not finite.all():
        i = _first_bad_row(~finite.all(axis=1))
        raise BoxError(f"{name} row {i} has a non-finite value: {arr[i].tolist()}")
    sizes = arr[:, 3:6]
    if (sizes <= 0).any():
        i = _first_bad_row((sizes <= 0).any(axis=1))
        raise BoxError(f"{name} row {i} has a non-positive size (l, w, h) = {sizes[i].tolist()}")
    return boxes


def _quad_turns(quads: np.ndarray) -> np.ndarray:
    """(N, 4, 2) -> (N, 4) cross products of consecutive edges (all > 0: convex, counter-clockwise)."""
    edges = np.roll(quads, -1, axis=1) - quads
    nxt = np.roll(edges, -1, axis=1)
    return edges[..., 0] * nxt[..., 1] - edges[..., 1] * nxt[..., 0]


def validate_corners(corners, name: str = "corners"):
    """Check box corners (N, 8, 3) in OpenCOOD order (or BEV quads (N, 4, 2)); return them unchanged.

    The first four corners' x, y form the BEV polygon used for IoU; they must be finite and
    form a convex quadrilateral of positive area (either winding). Raises :class:`BoxError`.
    """
    arr = _as_numpy(corners)
    if arr.ndim != 3 or arr.shape[1:] not in ((8, 3), (4, 2)):
        raise BoxError(f"{name} must have shape (N, 8, 3) or (N, 4, 2), got {tuple(arr.shape)}")
    finite = np.isfinite(arr.reshape(len(arr), -1))
    if not finite.all():
        i = _first_bad_row(~finite.all(axis=1))
        raise BoxError(f"{name} box {i} has a non-finite value: {arr[i].tolist()}")
    quads = arr[:, :4, :2].astype(np.float64)
    turns = _quad_turns(quads)
    convex = (turns > 0).all(axis=1) | (turns < 0).all(axis=1)
    if not convex.all():
        i = _first_bad_row(~convex)
        raise BoxError(f"{name} box {i}: first four corners do not form a convex quadrilateral "
                       f"of positive area: {quads[i].tolist()}")
    return corners


def boxes_to_corners(boxes):
    """(..., 7) boxes -> (..., 8, 3) corners in OpenCOOD's order (see module docstring)."""
    if _is_torch(boxes):
        template = _torch().as_tensor(_TEMPLATE, dtype=boxes.dtype, device=boxes.device)
        cos, sin = _torch().cos(boxes[..., 6:7]), _torch().sin(boxes[..., 6:7])
    else:
        boxes = np.asarray(boxes)
        template = _TEMPLATE.astype(boxes.dtype if boxes.dtype.kind == "f" else np.float64)
        cos, sin = np.cos(boxes[..., 6:7]), np.sin(boxes[..., 6:7])
    local = boxes[..., None, 3:6] * template  # (..., 8, 3)
    x = local[..., 0] * cos - local[..., 1] * sin + boxes[..., 0:1]
    y = local[..., 0] * sin + local[..., 1] * cos + boxes[..., 1:2]
    z = local[..., 2] + boxes[..., 2:3]
    return _stack([x, y, z], axis=-1)


_BEV_TEMPLATES: dict = {}


def _bev_template(dtype, device):
    """The (4, 2) unit bottom-face template on ``device``, made once per (dtype, device): a fresh
    host-to-GPU copy per call would stall the host on every target assignment."""
    key = (dtype, str(device))
    if key not in _BEV_TEMPLATES:
        _BEV_TEMPLATES[key] = _torch().as_tensor(_TEMPLATE[:4, :2], dtype=dtype, device=device)
    return _BEV_TEMPLATES[key]


def boxes_to_bev_corners(boxes):
    """(..., 7) boxes -> (..., 4, 2) x, y of the bottom-face corners 0-3 (counter-clockwise).

    Equals ``boxes_to_corners(boxes)[..., :4, :2]`` at half the cost (IoU and AP hot path).
    """
    if _is_torch(boxes):
        template = _bev_template(boxes.dtype, boxes.device)
        cos, sin = _torch().cos(boxes[..., 6:7]), _torch().sin(boxes[..., 6:7])
    else:
        boxes = np.asarray(boxes)
        template = _TEMPLATE[:4, :2].astype(boxes.dtype if boxes.dtype.kind == "f" else np.float64)
        cos, sin = np.cos(boxes[..., 6:7]), np.sin(boxes[..., 6:7])
    lx, ly = boxes[..., 3:4] * template[:, 0], boxes[..., 4:5] * template[:, 1]  # (..., 4)
    x = lx * cos - ly * sin + boxes[..., 0:1]
    y = lx * sin + ly * cos + boxes[..., 1:2]
    return _stack([x, y], axis=-1)


def _norm_xy(v):
    return (v[..., 0] ** 2 + v[..., 1] ** 2) ** 0.5


def corners_to_boxes(corners):
    """(..., 8, 3) corners in OpenCOOD order -> (..., 7) boxes (inverse of :func:`boxes_to_corners`).

    Like OpenCOOD's ``corner_to_center``, sizes average the four parallel edges; unlike it,
    the heading comes from the summed rear-to-front edge vectors, so it does not break when
    the four edge angles straddle +-pi. Yaw is wrapped to ``[-pi, pi)``.
    """
    c = corners
    centre = c.mean(-2) if _is_torch(c) else np.mean(c, axis=-2)
    fronts = [c[..., 0, :] - c[..., 3, :], c[..., 1, :] - c[..., 2, :],
              c[..., 4, :] - c[..., 7, :], c[..., 5, :] - c[..., 6, :]]
    lefts = [c[..., 1, :] - c[..., 0, :], c[..., 2, :] - c[..., 3, :],
             c[..., 5, :] - c[..., 4, :], c[..., 6, :] - c[..., 7, :]]
    length = sum(_norm_xy(v) for v in fronts) / 4
    width = sum(_norm_xy(v) for v in lefts) / 4
    height = abs((c[..., 4:, 2] - c[..., :4, 2]).mean(-1))
    heading = sum(fronts)
    atan2 = _torch().atan2 if _is_torch(c) else np.arctan2
    yaw = wrap_angle(atan2(heading[..., 1], heading[..., 0]))
    return _stack([centre[..., 0], centre[..., 1], centre[..., 2], length, width, height, yaw], axis=-1)


def transform_boxes(matrix, boxes):
    """Map boxes to another frame: ``matrix`` (4, 4) or (B, 4, 4) ``to_from_from``; boxes (N, 7) or (B, N, 7).

    The centre is transformed rigidly and ``yaw += atan2(R[1, 0], R[0, 0])`` (wrapped to
    ``[-pi, pi)``); sizes are kept. Roll and pitch of ``matrix`` tilt only the centre: boxes
    stay upright, as everywhere in OpenCOOD-style pipelines.
    """
    if _is_torch(boxes):
        m = _torch().as_tensor(matrix, dtype=boxes.dtype, device=boxes.device)
        rot = m[..., :3, :3]
        centre = boxes[..., :3] @ rot.transpose(-1, -2) + m[..., None, :3, 3]
        yaw = wrap_angle(boxes[..., 6] + _torch().atan2(m[..., 1, 0], m[..., 0, 0])[..., None])
        return _torch().cat([centre, boxes[..., 3:6], yaw[..., None]], dim=-1)
    boxes = np.asarray(boxes)
    m = np.asarray(matrix, dtype=np.float64)
    rot = m[..., :3, :3]
    centre = boxes[..., :3] @ np.swapaxes(rot, -1, -2) + m[..., None, :3, 3]
    yaw = wrap_angle(boxes[..., 6] + np.arctan2(m[..., 1, 0], m[..., 0, 0])[..., None])
    out = np.concatenate([centre, boxes[..., 3:6], yaw[..., None]], axis=-1)
    return out.astype(boxes.dtype, copy=False) if boxes.dtype.kind == "f" else out


def boxes_in_range_mask(boxes, lidar_range, min_corners: int = 8, use_z: bool = True):
    """Which boxes have at least ``min_corners`` corners inside ``lidar_range``.

    boxes: (N, 7) boxes or (N, 8, 3) corners; lidar_range: (xmin, ymin, zmin, xmax, ymax, zmax).
    A corner is inside when each coordinate lies in ``[min, max]`` (bounds included). With
    ``use_z=True`` this is OpenCOOD/HEAL's ``mask_boxes_outside_range_numpy``; with
    ``use_z=False`` only x, y are tested (OpenCOOD's ``get_mask_for_boxes_within_range_torch``
    with ``min_corners=8``). Returns (N,) bool, numpy or torch like ``boxes``.
    """
    corners = boxes if boxes.shape[-2:] == (8, 3) else boxes_to_corners(boxes)
    dims = 3 if use_z else 2
    r = np.asarray(lidar_range, dtype=np.float64)
    if r.shape != (6,):
        raise BoxError(f"lidar_range must have 6 values (xmin, ymin, zmin, xmax, ymax, zmax), got {r.tolist()}")
    lo, hi = r[:dims], r[3:3 + dims]
    if _is_torch(corners):
        lo = _torch().as_tensor(lo, dtype=corners.dtype, device=corners.device)
        hi = _torch().as_tensor(hi, dtype=corners.dtype, device=corners.device)
    pts = corners[..., :dims]
    inside = ((pts >= lo) & (pts <= hi)).all(-1)
    return inside.sum(-1) >= min_corners


def boxes_to_standup(boxes):
    """(..., 7) boxes, (..., 8, 3) corners or (..., 4, 2) BEV quads -> (..., 4) ``[xmin, ymin, xmax, ymax]``."""
    if boxes.shape[-1] == 7:
        boxes = boxes_to_bev_corners(boxes)
    xy = boxes[..., :4, :2]
    if _is_torch(xy):
        return _torch().cat([xy.amin(-2), xy.amax(-2)], dim=-1)
    return np.concatenate([xy.min(-2), xy.max(-2)], axis=-1)


def from_opencood_center(boxes, order: str = "hwl"):
    """OpenCOOD centre boxes (N, 7) in ``order`` ('hwl' or 'lwh') -> ours ``[x, y, z, l, w, h, yaw]``.

    Only the column order differs; OpenCOOD's corner formula is the same as ours.
    """
    if order == "lwh":
        return boxes.clone() if _is_torch(boxes) else np.array(boxes, copy=True)
    if order == "hwl":
        return boxes[..., _HWL_SWAP]
    raise BoxError(f"order must be 'hwl' or 'lwh', got {order!r}")


def to_opencood_center(boxes, order: str = "hwl"):
    """Ours ``[x, y, z, l, w, h, yaw]`` -> OpenCOOD centre boxes in ``order`` ('hwl' or 'lwh')."""
    return from_opencood_center(boxes, order)
