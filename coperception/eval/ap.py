"""Average precision of 3D detections under the OpenCOOD / HEAL evaluation protocol.

The protocol of the OPV2V paper's code base (OpenCOOD ``opencood/utils/eval_utils.py``) and of
HEAL, reproduced exactly:

1. Per frame, detections are ranked by score (descending) and matched greedily: each takes the
   remaining ground-truth box of highest BEV IoU (polygon of the first four corners, i.e. the
   bottom face); it is a true positive if that IoU >= the threshold (the GT is then removed),
   else a false positive. IoUs are rounded to float32 before the comparison, as OpenCOOD's
   ``compute_iou`` returns float32 (under numpy >= 2 the threshold is compared in float32 too).
   Ground-truth boxes count towards recall even in frames without detections.
2. The per-detection TP/FP flags of all frames are ranked either **globally by score**
   (``global_sort=True``, HEAL's only behaviour and OpenCOOD's ``--global_sort_detections``)
   or **frame after frame** in per-frame score order (``global_sort=False``, OpenCOOD's
   default, "as the OPV2V paper"). Both rankings are stable: equal scores keep frame order and
   within a frame the input order (OpenCOOD/HEAL use numpy's unstable quicksort there, so
   their order of tied scores is implementation-defined).
3. Cumulative TP/FP give precision and recall; AP is the VOC2010 all-point area under the
   precision envelope (``voc_ap``).

Differences from OpenCOOD, by design: :meth:`APEvaluator.result` never mutates state (OpenCOOD's
``calculate_ap`` cumsums its lists in place, so a second call is wrong); with no ground truth at
all, AP is ``nan`` and :attr:`APResult.no_ground_truth` is True (OpenCOOD raises
ZeroDivisionError when there are detections and returns 0 when there are none).

Speed: IoU matrices of many frames are computed in one batched, standup-pruned kernel
(:mod:`coperception.geometry.iou`) and the greedy matching runs once for all thresholds,
vectorised across frames (a loop over detection rank only).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch

from coperception.errors import BoxError
from coperception.geometry.boxes import boxes_to_bev_corners, validate_boxes, validate_corners
from coperception.geometry.iou import quad_iou

logger = logging.getLogger(__name__)

#: Padded IoU cells (frames x detections x GT) matched in one batch.
_CHUNK_CELLS = 1 << 22


@dataclass(frozen=True)
class ThresholdAP:
    """AP at one IoU threshold.

    precision, recall: (K,) after each of the K ranked detections (recall is nan without GT).
    """

    iou_threshold: float
    ap: float
    precision: np.ndarray
    recall: np.ndarray
    num_tp: int
    num_fp: int
    num_gt: int

    def envelope(self) -> tuple[np.ndarray, np.ndarray]:
        """(K+2,) ``mrec``, ``mpre`` as OpenCOOD's ``voc_ap`` returns them.

        Sentinels added (recall 0 and 1, precision 0 at both ends), precision made non-increasing.
        """
        mrec = np.concatenate([[0.0], self.recall, [1.0]])
        mpre = np.concatenate([[0.0], self.precision, [0.0]])
        return mrec, np.maximum.accumulate(mpre[::-1])[::-1]


@dataclass(frozen=True)
class APResult:
    """AP at every threshold of an :class:`APEvaluator`; ``scores``: (K,) ranked detection scores."""

    global_sort: bool
    thresholds: tuple[ThresholdAP, ...]
    scores: np.ndarray
    num_frames: int
    num_gt: int
    num_detections: int

    @property
    def variant(self) -> str:
        """Which ranking produced the curve, as a human-readable name."""
        return "global sort (HEAL)" if self.global_sort else "per-frame order (OpenCOOD default)"

    @property
    def no_ground_truth(self) -> bool:
        """True when no frame had ground truth: AP and recall are undefined (nan)."""
        return self.num_gt == 0

    def ap(self, iou_threshold: float) -> float:
        """AP at ``iou_threshold`` (one of the evaluator's thresholds)."""
        return self[iou_threshold].ap

    def __getitem__(self, iou_threshold: float) -> ThresholdAP:
        for t in self.thresholds:
            if math.isclose(t.iou_threshold, iou_threshold, abs_tol=1e-9):
                return t
        raise KeyError(f"no AP at IoU {iou_threshold}; evaluated: {[t.iou_threshold for t in self.thresholds]}")

    def to_dict(self, curves: bool = False) -> dict:
        """JSON-ready summary (nan becomes None); ``curves=True`` adds precision/recall lists."""
        def num(x: float):
            return None if math.isnan(x) else float(x)

        per = {}
        for t in self.thresholds:
            entry = {"ap": num(t.ap), "tp": t.num_tp, "fp": t.num_fp, "gt": t.num_gt}
            if curves:
                entry["precision"] = t.precision.tolist()
                entry["recall"] = [num(r) for r in t.recall]
            per[f"{t.iou_threshold:g}"] = entry
        return {"variant": "global_sort" if self.global_sort else "per_frame",
                "global_sort": self.global_sort, "num_frames": self.num_frames, "num_gt": self.num_gt,
                "num_detections": self.num_detections, "no_ground_truth": self.no_ground_truth,
                "iou": per}


def voc_ap(precision: np.ndarray, recall: np.ndarray) -> float:
    """VOC2010 all-point AP: area under the non-increasing envelope of precision over recall."""
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.maximum.accumulate(np.concatenate([[0.0], precision, [0.0]])[::-1])[::-1]
    steps = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
    terms = (mrec[steps] - mrec[steps - 1]) * mpre[steps]
    # Sequential summation, in OpenCOOD's order, so the figures agree to the last bit.
    return float(np.cumsum(terms)[-1]) if len(terms) else 0.0


def _checked(boxes, name: str) -> np.ndarray:
    """Validate (N, 7) boxes, (N, 8, 3) corners or (N, 4, 2) quads (numpy/torch/None) -> float64 array.

    Boxes stay (N, 7): they are turned into BEV quads per batch of frames (one call, not one per frame).
    """
    if boxes is None:
        return np.zeros((0, 4, 2))
    arr = boxes.detach().cpu().numpy() if isinstance(boxes, torch.Tensor) else np.asarray(boxes)
    if arr.size == 0:
        return np.zeros((0, 4, 2))
    if arr.ndim == 2:
        validate_boxes(arr, name)
        return arr.astype(np.float64)
    validate_corners(arr, name)
    return np.array(arr[:, :4, :2], dtype=np.float64)


def _to_quads(arrays: list[np.ndarray]) -> list[np.ndarray]:
    """Turn the (n, 7) box arrays of a list into (n, 4, 2) BEV quads with one vectorised call."""
    is_boxes = [a.ndim == 2 for a in arrays]
    if not any(is_boxes):
        return arrays
    boxes = [a for a, b in zip(arrays, is_boxes) if b]
    quads = np.split(boxes_to_bev_corners(np.concatenate(boxes)), np.cumsum([len(b) for b in boxes])[:-1])
    it = iter(quads)
    return [next(it) if b else a for a, b in zip(arrays, is_boxes)]


def _scores(scores, count: int) -> np.ndarray:
    if scores is None:
        if count:
            raise BoxError(f"det_scores missing for {count} detections")
        return np.zeros(0)
    arr = scores.detach().cpu().numpy() if isinstance(scores, torch.Tensor) else np.asarray(scores)
    arr = arr.astype(np.float64).reshape(-1)
    if len(arr) != count:
        raise BoxError(f"det_scores has {len(arr)} values for {count} detections")
    if not np.isfinite(arr).all():
        i = int(np.flatnonzero(~np.isfinite(arr))[0])
        raise BoxError(f"det_scores[{i}] is not finite: {arr[i]}")
    return arr


def _pad(arrays: list[np.ndarray], size: int, fill: float) -> tuple[np.ndarray, np.ndarray]:
    """Stack ragged (n_i, ...) arrays into (F, size, ...) and a (F, size) validity mask."""
    out = np.full((len(arrays), size) + arrays[0].shape[1:], fill, dtype=np.float64)
    valid = np.zeros((len(arrays), size), dtype=bool)
    for i, a in enumerate(arrays):
        out[i, :len(a)] = a
        valid[i, :len(a)] = True
    return out, valid


def _greedy_match(iou: np.ndarray, det_valid: np.ndarray, gt_valid: np.ndarray,
                  thresholds: np.ndarray) -> np.ndarray:
    """Greedy det-driven matching of ranked detections, all frames and thresholds at once.

    iou: (F, D, G) float32 with detections in rank order; thresholds: (T,) float32.
    Returns (F, T, D) bool true-positive flags.
    """
    n_frames, n_det, n_gt = iou.shape
    tp = np.zeros((n_frames, len(thresholds), n_det), dtype=bool)
    if n_gt == 0:
        return tp
    # Taken (and padding) GT get a penalty pushing their IoU below 0, i.e. below any threshold.
    penalty = np.where(gt_valid, np.float32(0), np.float32(-2))[:, None, :].repeat(len(thresholds), axis=1)
    remaining = np.empty_like(penalty)  # (F, T, G), reused across ranks
    fi, ti = np.ogrid[:n_frames, :len(thresholds)]
    for k in range(n_det):
        np.add(penalty, iou[:, None, k, :], out=remaining)
        best_gt = remaining.argmax(-1)  # first maximum in GT order, like OpenCOOD's list.pop
        hit = (remaining[fi, ti, best_gt] >= thresholds) & det_valid[:, k, None]
        tp[:, :, k] = hit
        penalty[fi, ti, best_gt] -= np.where(hit, np.float32(2), np.float32(0))
    return tp


class APEvaluator:
    """Accumulates frames and computes AP at several IoU thresholds (OpenCOOD protocol).

    >>> ev = APEvaluator((0.3, 0.5, 0.7))
    >>> ev.add_frame(det_boxes, det_scores, gt_boxes)      # once per frame
    >>> ev.result(global_sort=True).ap(0.7)

    device: where IoU matrices are computed ("cpu" or a CUDA device).
    """

    def __init__(self, iou_thresholds=(0.3, 0.5, 0.7), device: str | torch.device = "cpu") -> None:
        thr = tuple(float(t) for t in iou_thresholds)
        if not thr or any(not 0.0 <= t <= 1.0 for t in thr):
            raise ValueError(f"iou_thresholds must be a non-empty list of values in [0, 1], got {thr}")
        self.iou_thresholds = thr
        self.device = torch.device(device)
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._tp_parts: list[np.ndarray] = []  # (T, n_f) per matched frame, rank order
        self._score_parts: list[np.ndarray] = []
        self._num_frames = 0
        self._num_gt = 0

    def __len__(self) -> int:
        return self._num_frames

    def add_frame(self, det_boxes, det_scores, gt_boxes) -> None:
        """Add one frame. Boxes: (N, 7) ``[x, y, z, l, w, h, yaw]``, (N, 8, 3) corners in OpenCOOD
        order, or (N, 4, 2) BEV quads; numpy, torch or None (= no boxes). det_scores: (N,).

        All boxes of a frame must be in one frame of reference (the ego LiDAR frame).
        Raises :class:`BoxError` on a wrong shape, non-finite value or non-positive size.
        """
        dets = _checked(det_boxes, "det_boxes")
        scores = _scores(det_scores, len(dets))
        gts = _checked(gt_boxes, "gt_boxes")
        self._pending.append((dets, scores, gts))
        self._num_frames += 1
        self._num_gt += len(gts)

    def _match_pending(self) -> None:
        """Match every frame added since the last call, in batches; caches rank-ordered TP flags."""
        start = 0
        while start < len(self._pending):
            stop, max_d, max_g = start, 1, 1
            while stop < len(self._pending):
                d, _, g = self._pending[stop]
                nd, ng = max(max_d, len(d)), max(max_g, len(g))
                if stop > start and (stop - start + 1) * nd * ng > _CHUNK_CELLS:
                    break
                stop, max_d, max_g = stop + 1, nd, ng
            self._match_chunk(self._pending[start:stop], max_d, max_g)
            start = stop
        self._pending = []

    def _match_chunk(self, frames, max_d: int, max_g: int) -> None:
        dets, det_valid = _pad(_to_quads([f[0] for f in frames]), max_d, 0.0)
        scores, _ = _pad([f[1] for f in frames], max_d, -np.inf)
        gts, gt_valid = _pad(_to_quads([f[2] for f in frames]), max_g, 0.0)
        order = np.argsort(-scores, axis=1, kind="stable")  # padding (-inf) ranks last
        dets = np.take_along_axis(dets, order[:, :, None, None], axis=1)
        scores = np.take_along_axis(scores, order, axis=1)
        det_valid = np.take_along_axis(det_valid, order, axis=1)
        to_t = lambda a: torch.from_numpy(a).to(self.device)  # noqa: E731
        iou = quad_iou(to_t(dets), to_t(gts), to_t(det_valid), to_t(gt_valid))
        iou32 = iou.to(torch.float32).cpu().numpy()
        tp = _greedy_match(iou32, det_valid, gt_valid, np.asarray(self.iou_thresholds, dtype=np.float32))
        for i, f in enumerate(frames):
            n = len(f[0])
            self._tp_parts.append(tp[i, :, :n])
            self._score_parts.append(scores[i, :n])

    def result(self, global_sort: bool = True) -> APResult:
        """AP per threshold; ``global_sort`` chooses HEAL's (True) or OpenCOOD's default (False) ranking.

        Safe to call any number of times, with either variant, while adding more frames between calls.
        """
        self._match_pending()
        n_thr = len(self.iou_thresholds)
        tp = np.concatenate(self._tp_parts, axis=1) if self._tp_parts else np.zeros((n_thr, 0), bool)
        scores = np.concatenate(self._score_parts) if self._score_parts else np.zeros(0)
        if global_sort:
            order = np.argsort(-scores, kind="stable")
            tp, scores = tp[:, order], scores[order]
        if self._num_gt == 0:
            logger.warning("AP is undefined (nan): no ground-truth boxes in %d frames", self._num_frames)
        per = tuple(self._threshold_ap(thr, tp[i]) for i, thr in enumerate(self.iou_thresholds))
        return APResult(global_sort=global_sort, thresholds=per, scores=scores, num_frames=self._num_frames,
                        num_gt=self._num_gt, num_detections=len(scores))

    def _threshold_ap(self, threshold: float, tp: np.ndarray) -> ThresholdAP:
        tp_cum = np.cumsum(tp, dtype=np.int64)
        fp_cum = np.cumsum(~tp, dtype=np.int64)
        precision = tp_cum / np.maximum(tp_cum + fp_cum, 1)
        if self._num_gt == 0:
            recall = np.full(len(tp), np.nan)
            ap = math.nan
        else:
            recall = tp_cum / self._num_gt
            ap = voc_ap(precision, recall)
        num_tp = int(tp_cum[-1]) if len(tp) else 0
        return ThresholdAP(iou_threshold=threshold, ap=ap, precision=precision, recall=recall,
                           num_tp=num_tp, num_fp=len(tp) - num_tp, num_gt=self._num_gt)
