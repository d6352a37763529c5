"""Files of saved detections and ground-truth boxes, and AP evaluation of a pair of them.

One file holds the boxes of many frames, either detections (with scores) or ground truth.
Boxes are ``[x, y, z, l, w, h, yaw]`` (library convention) or (8, 3) corners in OpenCOOD's
order (:mod:`coperception.geometry.boxes`), in each frame's ego LiDAR frame. Two encodings:

``.npz`` (compact; ``np.load(..., allow_pickle=False)`` reads it)::

    format     str   "coperception.boxes"
    version    int   1
    kind       str   "detections" or "ground_truth"
    frame_ids  (F,)  str, unique
    counts     (F,)  int, boxes per frame
    boxes      (B, 7) float, B = sum(counts), frames one after the other   } exactly
    corners    (B, 8, 3) float                                            } one of
    scores     (B,)  float, detections only

``.json`` (readable)::

    {"format": "coperception.boxes", "version": 1, "kind": "detections",
     "frames": [{"frame_id": "2021_08_23_21_47_19/000068",
                 "boxes": [[x, y, z, l, w, h, yaw], ...],       (or "corners": [[[x, y, z] x 8], ...])
                 "scores": [0.93, ...]}, ...]}

Every problem raises :class:`~coperception.errors.FormatError` naming the file, the frame and
the field.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from coperception.errors import BoxError, FormatError
from coperception.eval.ap import APEvaluator, APResult
from coperception.geometry.boxes import validate_boxes, validate_corners

FORMAT_NAME = "coperception.boxes"
FORMAT_VERSION = 1
KINDS = ("detections", "ground_truth")


@dataclass(frozen=True)
class FrameBoxes:
    """Boxes of one frame. boxes: (N, 7) or (N, 8, 3) float64; scores: (N,) for detections, else None."""

    frame_id: str
    boxes: np.ndarray
    scores: np.ndarray | None = None


def _check_frame(path, frame: FrameBoxes, kind: str) -> FrameBoxes:
    """Validate one frame's arrays; errors name the file, frame and field."""
    where = f"{path}: frame {str(frame.frame_id)!r}"
    boxes = np.asarray(frame.boxes, dtype=np.float64) if np.size(frame.boxes) else np.zeros((0, 7))
    field = "boxes" if boxes.ndim == 2 else "corners"
    if field == "corners" and boxes.shape[1:] != (8, 3):
        raise FormatError(f"{where}: field 'corners' must have shape (N, 8, 3), got {boxes.shape}")
    try:
        (validate_boxes if field == "boxes" else validate_corners)(boxes, field)
    except BoxError as exc:
        raise FormatError(f"{where}: field {field!r}: {exc}") from None
    scores = frame.scores
    if kind == "detections":
        if scores is None:
            raise FormatError(f"{where}: field 'scores' is missing (detections need scores)")
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        if len(scores) != len(boxes):
            raise FormatError(f"{where}: field 'scores' has {len(scores)} values for {len(boxes)} boxes")
        if not np.isfinite(scores).all():
            i = int(np.flatnonzero(~np.isfinite(scores))[0])
            raise FormatError(f"{where}: field 'scores' value {i} is not finite: {scores[i]}")
    elif scores is not None:
        raise FormatError(f"{where}: field 'scores' is not allowed in a ground_truth file")
    return FrameBoxes(str(frame.frame_id), boxes, scores)


def _check_kind(path, kind) -> str:
    if kind not in KINDS:
        raise FormatError(f"{path}: field 'kind' must be one of {KINDS}, got {kind!r}")
    return kind


def save_boxes(path, frames: Sequence[FrameBoxes], kind: str) -> None:
    """Write ``frames`` to ``path`` (.npz or .json, chosen by suffix) after validating them."""
    path = Path(path)
    _check_kind(path, kind)
    frames = [_check_frame(path, f, kind) for f in frames]
    ids = [f.frame_id for f in frames]
    if len(set(ids)) != len(ids):
        raise FormatError(f"{path}: field 'frame_ids' has duplicates")
    if len({f.boxes.shape[1:] for f in frames if len(f.boxes)}) > 1:
        raise FormatError(f"{path}: frames mix (N, 7) boxes and (N, 8, 3) corners")
    field = "corners" if any(f.boxes.ndim == 3 and len(f.boxes) for f in frames) else "boxes"
    if path.suffix == ".json":
        doc = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "kind": kind, "frames": [
            {"frame_id": f.frame_id, field: f.boxes.tolist(),
             **({"scores": f.scores.tolist()} if kind == "detections" else {})} for f in frames]}
        path.write_text(json.dumps(doc))
        return
    if path.suffix != ".npz":
        raise FormatError(f"{path}: unknown suffix {path.suffix!r} (use .npz or .json)")
    width = (8, 3) if field == "corners" else (7,)
    arrays = {"format": np.array(FORMAT_NAME), "version": np.array(FORMAT_VERSION), "kind": np.array(kind),
              "frame_ids": np.array(ids, dtype=str), "counts": np.array([len(f.boxes) for f in frames], np.int64),
              field: np.concatenate([f.boxes.reshape((-1,) + width) for f in frames] or [np.zeros((0,) + width)])}
    if kind == "detections":
        arrays["scores"] = np.concatenate([f.scores for f in frames] or [np.zeros(0)])
    with open(path, "wb") as fh:
        np.savez_compressed(fh, **arrays)


def _check_header(path, format_name, version, kind, expected_kind) -> str:
    if format_name != FORMAT_NAME:
        raise FormatError(f"{path}: field 'format' must be {FORMAT_NAME!r}, got {format_name!r}")
    if version != FORMAT_VERSION:
        raise FormatError(f"{path}: field 'version' {version!r} is not supported (expected {FORMAT_VERSION})")
    kind = _check_kind(path, kind)
    if expected_kind is not None and kind != expected_kind:
        raise FormatError(f"{path}: field 'kind' is {kind!r}, expected {expected_kind!r}")
    return kind


def _npz_field(path, data, name: str, ndim: int, trailing: tuple = ()) -> np.ndarray:
    if name not in data:
        raise FormatError(f"{path}: field {name!r} is missing")
    arr = data[name]
    if arr.ndim != ndim or arr.shape[1:] != trailing:
        expected = "(n" + "".join(f", {t}" for t in trailing) + ")"
        raise FormatError(f"{path}: field {name!r} has shape {arr.shape}, expected {expected}")
    return arr


def _load_npz(path: Path, expected_kind) -> tuple[str, list[FrameBoxes]]:
    try:
        data = dict(np.load(path, allow_pickle=False))
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise FormatError(f"{path}: not a readable .npz file ({exc})") from None
    header = [data[k].item() if k in data and data[k].ndim == 0 else None for k in ("format", "version", "kind")]
    kind = _check_header(path, *header, expected_kind)
    ids = _npz_field(path, data, "frame_ids", 1).astype(str)
    counts = _npz_field(path, data, "counts", 1)
    if len(counts) != len(ids) or not np.issubdtype(counts.dtype, np.integer) or (counts < 0).any():
        raise FormatError(f"{path}: field 'counts' must be {len(ids)} non-negative integers")
    name, trailing = ("corners", (8, 3)) if "corners" in data else ("boxes", (7,))
    boxes = _npz_field(path, data, name, 1 + len(trailing), trailing)
    scores = _npz_field(path, data, "scores", 1) if kind == "detections" else None
    for field, arr in ((name, boxes), ("scores", scores)):
        if arr is not None and len(arr) != counts.sum():
            raise FormatError(f"{path}: field {field!r} has {len(arr)} rows, but 'counts' sums to {counts.sum()}")
    splits = np.cumsum(counts)[:-1]
    per_boxes = np.split(boxes, splits)
    per_scores = np.split(scores, splits) if scores is not None else [None] * len(ids)
    return kind, [FrameBoxes(str(i), b, s) for i, b, s in zip(ids, per_boxes, per_scores)]


def _load_json(path: Path, expected_kind) -> tuple[str, list[FrameBoxes]]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise FormatError(f"{path}: not a readable JSON file ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("frames"), list):
        raise FormatError(f"{path}: field 'frames' (a list) is missing")
    kind = _check_header(path, doc.get("format"), doc.get("version"), doc.get("kind"), expected_kind)
    frames = []
    for n, entry in enumerate(doc["frames"]):
        fid = entry.get("frame_id") if isinstance(entry, dict) else None
        if not isinstance(fid, (str, int)):
            raise FormatError(f"{path}: frame #{n}: field 'frame_id' is missing or not a string")
        fields = [k for k in ("boxes", "corners") if k in entry]
        if len(fields) != 1:
            raise FormatError(f"{path}: frame {fid!r}: needs exactly one of the fields 'boxes' or 'corners'")
        try:
            boxes = np.asarray(entry[fields[0]], dtype=np.float64)
            scores = None if "scores" not in entry else np.asarray(entry["scores"], dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise FormatError(f"{path}: frame {fid!r}: field {fields[0]!r} or 'scores' "
                              f"is not numeric ({exc})") from None
        if boxes.size == 0:
            boxes = np.zeros((0, 7) if fields[0] == "boxes" else (0, 8, 3))
        if boxes.ndim != (2 if fields[0] == "boxes" else 3):
            raise FormatError(f"{path}: frame {fid!r}: field {fields[0]!r} has shape {boxes.shape}")
        frames.append(FrameBoxes(str(fid), boxes, scores))
    return kind, frames


def load_boxes(path, kind: str | None = None) -> list[FrameBoxes]:
    """Read a boxes file (.npz or .json); ``kind`` ('detections'/'ground_truth') is checked when given."""
    path = Path(path)
    if not path.is_file():
        raise FormatError(f"{path}: no such file")
    if path.suffix == ".json":
        kind, frames = _load_json(path, kind)
    elif path.suffix == ".npz":
        kind, frames = _load_npz(path, kind)
    else:
        raise FormatError(f"{path}: unknown suffix {path.suffix!r} (use .npz or .json)")
    frames = [_check_frame(path, f, kind) for f in frames]
    seen: set[str] = set()
    for f in frames:
        if f.frame_id in seen:
            raise FormatError(f"{path}: frame {f.frame_id!r}: field 'frame_id' appears twice")
        seen.add(f.frame_id)
    return frames


def evaluate_frames(detections: Sequence[FrameBoxes], ground_truth: Sequence[FrameBoxes],
                    iou_thresholds=(0.3, 0.5, 0.7), global_sort: bool = True,
                    det_name: str = "detections") -> APResult:
    """AP of detections against ground truth, paired by frame id.

    Every ground-truth frame is evaluated (a frame absent from ``detections`` has none); a
    detection frame without ground-truth entry raises :class:`FormatError`.
    """
    by_id = {f.frame_id: f for f in detections}
    gt_ids = {f.frame_id for f in ground_truth}
    orphans = [i for i in by_id if i not in gt_ids]
    if orphans:
        raise FormatError(f"{det_name}: {len(orphans)} frame(s) have no ground truth, e.g. {orphans[:5]}")
    evaluator = APEvaluator(iou_thresholds)
    for gt in ground_truth:
        det = by_id.get(gt.frame_id)
        evaluator.add_frame(None if det is None else det.boxes, None if det is None else det.scores, gt.boxes)
    return evaluator.result(global_sort=global_sort)


def evaluate_files(det_path, gt_path, iou_thresholds=(0.3, 0.5, 0.7), global_sort: bool = True) -> APResult:
    """Load a detections file and a ground-truth file and evaluate them (see :func:`evaluate_frames`)."""
    return evaluate_frames(load_boxes(det_path, "detections"), load_boxes(gt_path, "ground_truth"),
                           iou_thresholds, global_sort, det_name=str(det_path))
