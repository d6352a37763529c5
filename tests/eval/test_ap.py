"""AP under the OpenCOOD protocol: parity with OpenCOOD's eval_utils and a HEAL-style reference."""

import copy
import logging
import math

import numpy as np
import pytest
import torch

import coperception.eval.ap as ap_module
from coperception.errors import BoxError
from coperception.eval.ap import APEvaluator, voc_ap
from coperception.geometry.boxes import boxes_to_bev_corners, boxes_to_corners


def _shapely():
    """Shapely, for the polygon reference of the tests that use it (skipped where it is missing)."""
    return pytest.importorskip("shapely.geometry")



def _eval_utils():
    """The peer's module, imported by the tests that compare against it: only they skip where it
    is not installed."""
    return pytest.importorskip("opencood.utils.eval_utils")

THRESHOLDS = (0.3, 0.5, 0.7)


def _box(x, y, l=4.0, w=2.0, yaw=0.0):
    return [x, y, -1.0, l, w, 1.5, yaw]


def _corners_tensor(boxes):
    return torch.from_numpy(boxes_to_corners(np.asarray(boxes, dtype=np.float64).reshape(-1, 7)))


def _opencood(frames, thresholds=THRESHOLDS):
    """OpenCOOD's caluclate_tp_fp per frame and threshold, then calculate_ap on a fresh copy each time."""
    stat = {t: {"tp": [], "fp": [], "gt": 0} for t in thresholds}
    for dets, scores, gt in frames:
        gt_t = _corners_tensor(gt)
        det_t = None if dets is None else _corners_tensor(dets)
        score_t = None if scores is None else torch.as_tensor(np.asarray(scores, dtype=np.float64))
        for t in thresholds:
            _eval_utils().caluclate_tp_fp(det_t, score_t, gt_t, stat, t)
    return {t: _eval_utils().calculate_ap(copy.deepcopy(stat), t) for t in thresholds}


def _ours(frames, global_sort, thresholds=THRESHOLDS):
    ev = APEvaluator(thresholds)
    for dets, scores, gt in frames:
        ev.add_frame(dets, scores, gt)
    return ev.result(global_sort=global_sort)


def _heal_reference(frames, thresholds=THRESHOLDS):
    """HEAL's algorithm, written plainly: shapely IoU, greedy per frame, global (stable) sort, voc_ap."""
    out = {}
    for thr in thresholds:
        tp, fp, score, n_gt = [], [], [], 0
        for dets, scores, gt in frames:
            gt = np.asarray(gt, dtype=np.float64).reshape(-1, 7)
            n_gt += len(gt)
            if dets is None:
                continue
            dets = np.asarray(dets, dtype=np.float64).reshape(-1, 7)
            remaining = [_shapely().Polygon(q) for q in boxes_to_bev_corners(gt)]
            det_polys = [_shapely().Polygon(q) for q in boxes_to_bev_corners(dets)]
            for i in np.argsort(-np.asarray(scores), kind="stable"):
                ious = np.array([det_polys[i].intersection(g).area / det_polys[i].union(g).area for g in remaining],
                                dtype=np.float32)
                hit = bool(remaining) and not ious.max() < thr
                tp.append(int(hit))
                fp.append(int(not hit))
                score.append(scores[i])
                if hit:
                    remaining.pop(int(np.argmax(ious)))
        order = np.argsort(-np.asarray(score), kind="stable")
        tp, fp = np.asarray(tp)[order], np.asarray(fp)[order]
        rec = [float(x) / n_gt for x in np.cumsum(tp)]
        prec = [float(a) / (a + b) for a, b in zip(np.cumsum(tp), np.cumsum(fp))]
        mrec, mpre = [0.0] + rec + [1.0], [0.0] + prec + [0.0]
        for i in range(len(mpre) - 2, -1, -1):
            mpre[i] = max(mpre[i], mpre[i + 1])
        out[thr] = sum((mrec[i] - mrec[i - 1]) * mpre[i] for i in range(1, len(mrec)) if mrec[i] != mrec[i - 1])
    return out


def _random_frames(rng, n_frames, max_gt=8, max_fp=5, continuous_scores=True):
    frames = []
    for _ in range(n_frames):
        n_gt = int(rng.integers(0, max_gt + 1))
        gt = np.array([_box(*rng.uniform(-30, 30, 2), rng.uniform(3.5, 5.5), rng.uniform(1.6, 2.2),
                            rng.uniform(-np.pi, np.pi)) for _ in range(n_gt)]).reshape(-1, 7)
        hit = gt[rng.random(n_gt) < 0.8].copy()
        hit[:, :2] += rng.normal(0, 0.6, (len(hit), 2))
        hit[:, 6] += rng.normal(0, 0.15, len(hit))
        fp = np.array([_box(*rng.uniform(-30, 30, 2), yaw=rng.uniform(-np.pi, np.pi))
                       for _ in range(int(rng.integers(0, max_fp + 1)))]).reshape(-1, 7)
        if len(gt) and rng.random() < 0.5:  # a near-miss duplicate
            fp = np.concatenate([fp, gt[:1] + [1.5, 0.5, 0, 0, 0, 0, 0.4]])
        dets = np.concatenate([hit, fp])
        scores = rng.random(len(dets)) if continuous_scores else rng.integers(1, 4, len(dets)) / 4
        frames.append((dets if len(dets) else None, scores if len(dets) else None, gt))
    return frames


def _assert_parity(frames):
    ref = _opencood(frames)
    res = _ours(frames, global_sort=False)
    for t in THRESHOLDS:
        ap, mrec, mpre = ref[t]
        assert res.ap(t) == pytest.approx(ap, abs=1e-9), t
        ours_rec, ours_pre = res[t].envelope()
        np.testing.assert_allclose(ours_rec, mrec, atol=1e-12)
        np.testing.assert_allclose(ours_pre, mpre, atol=1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_per_frame_order_matches_opencood_on_random_scenes(seed):
    _assert_parity(_random_frames(np.random.default_rng(seed), 12))


@pytest.mark.parametrize("seed", range(4))
def test_global_sort_matches_heal_reference(seed):
    frames = _random_frames(np.random.default_rng(100 + seed), 12, continuous_scores=seed % 2 == 0)
    ref = _heal_reference(frames)
    res = _ours(frames, global_sort=True)
    assert res.global_sort and "global" in res.variant
    for t in THRESHOLDS:
        assert res.ap(t) == pytest.approx(ref[t], abs=1e-9), t


def _at_iou(target, l=2.0):
    """Shift along x giving IoU ``target`` for two axis-aligned l x 1 boxes: (l - s) / (l + s)."""
    return l * (1 - target) / (1 + target)


ADVERSARIAL = {
    "empty frames and one GT-only frame": [(None, None, np.zeros((0, 7)))] * 3 + [(None, None, [_box(0, 0)])],
    "no detections at all": [(None, None, [_box(0, 0), _box(10, 0)]), (None, None, [_box(5, 5)])],
    "empty arrays instead of None": [(np.zeros((0, 7)), np.zeros(0), [_box(0, 0)]),
                                     ([_box(0, 0.2)], [0.9], [_box(0, 0)])],
    "frames without GT": [([_box(0, 0), _box(9, 9)], [0.9, 0.3], np.zeros((0, 7))),
                          ([_box(0, 0.3)], [0.5], [_box(0, 0)]),
                          ([_box(20, 0)], [0.95], np.zeros((0, 7)))],
    "duplicate detections": [([_box(0, 0), _box(0, 0), _box(0, 0.1)], [0.9, 0.8, 0.85], [_box(0, 0)]),
                             ([_box(5, 5)] * 3, [0.7, 0.7, 0.7], [_box(5, 5), _box(5.2, 5)])],
    "duplicate ground truth (IoU ties pick the first)": [([_box(0, 0.3), _box(0, -0.3)], [0.9, 0.4],
                                                          [_box(0, 0), _box(0, 0)])],
    "touching boxes": [([_box(0, 0), _box(4, 0), _box(0, 2)], [0.9, 0.8, 0.7],
                        [_box(0, 0), _box(4, 0), _box(0, 2), _box(4, 2)])],
    "equal scores across frames": [([_box(0, 0.1)], [0.5], [_box(0, 0)]),
                                   ([_box(30, 0)], [0.5], [_box(0, 0)]),
                                   ([_box(0, 0.8), _box(50, 50)], [0.5, 0.25], [_box(0, 0)])],
    "yaw near +-pi": [([_box(0, 0, yaw=np.pi - 1e-9), _box(8, 0, yaw=-np.pi)], [0.9, 0.8],
                       [_box(0, 0, yaw=-np.pi + 1e-9), _box(8, 0, yaw=np.pi)])],
    "IoU exactly at the thresholds": [([_box(_at_iou(t), 0, 2, 1)], [0.9], [_box(0, 0, 2, 1)]) for t in THRESHOLDS],
    "greedy takes the best GT, not the best assignment": [([_box(0, 0.55), _box(0, 1.6)], [0.9, 0.8],
                                                           [_box(0, 0), _box(0, 1.2)])],
}


@pytest.mark.parametrize("name", list(ADVERSARIAL))
def test_per_frame_order_matches_opencood_on_adversarial_cases(name):
    _assert_parity(ADVERSARIAL[name])


@pytest.mark.parametrize("name", list(ADVERSARIAL))
def test_global_sort_matches_heal_reference_on_adversarial_cases(name):
    frames = ADVERSARIAL[name]
    ref = _heal_reference(frames)
    res = _ours(frames, global_sort=True)
    for t in THRESHOLDS:
        assert res.ap(t) == pytest.approx(ref[t], abs=1e-9), t


def test_iou_at_threshold_counts_as_true_positive():
    res = _ours(ADVERSARIAL["IoU exactly at the thresholds"], global_sort=False, thresholds=(0.5,))
    assert res[0.5].num_tp == 2  # the IoU-0.5 and IoU-0.7 pairs; the IoU-0.3 pair is a false positive


def test_variants_differ_and_result_is_repeatable():
    frames = _random_frames(np.random.default_rng(7), 20)
    ev = APEvaluator()
    for f in frames:
        ev.add_frame(*f)
    first, per_frame, again = ev.result(), ev.result(global_sort=False), ev.result()
    assert [t.ap for t in first.thresholds] == [t.ap for t in again.thresholds]
    assert any(a.ap != b.ap for a, b in zip(first.thresholds, per_frame.thresholds))
    assert first.num_frames == 20 and first.num_detections == sum(len(f[0]) for f in frames if f[0] is not None)


def test_adding_frames_after_result_equals_one_pass():
    frames = _random_frames(np.random.default_rng(8), 10)
    ev = APEvaluator()
    for f in frames[:4]:
        ev.add_frame(*f)
    ev.result()
    for f in frames[4:]:
        ev.add_frame(*f)
    expected = _ours(frames, True)
    assert [t.ap for t in ev.result().thresholds] == [t.ap for t in expected.thresholds]


def test_small_batches_give_the_same_result(monkeypatch):
    frames = _random_frames(np.random.default_rng(9), 15)
    expected = _ours(frames, False)
    monkeypatch.setattr(ap_module, "_CHUNK_CELLS", 30)
    res = _ours(frames, False)
    for a, b in zip(res.thresholds, expected.thresholds):
        assert a.ap == b.ap
        np.testing.assert_array_equal(a.precision, b.precision)


def test_boxes_corners_quads_and_torch_inputs_agree():
    frames = _random_frames(np.random.default_rng(10), 8)
    expected = _ours(frames, True)
    variants = {
        "corners": lambda b: None if b is None else boxes_to_corners(np.asarray(b, float)),
        "quads": lambda b: None if b is None else boxes_to_bev_corners(np.asarray(b, float)),
        "torch": lambda b: None if b is None else torch.as_tensor(np.asarray(b, float)).float(),
    }
    for name, conv in variants.items():
        ev = APEvaluator()
        for d, s, g in frames:
            ev.add_frame(conv(d), None if s is None else torch.as_tensor(s), conv(g))
        for a, b in zip(ev.result().thresholds, expected.thresholds):
            assert a.ap == pytest.approx(b.ap, abs=1e-6), name


def test_no_ground_truth_gives_nan_and_a_flag(caplog):
    ev = APEvaluator()
    ev.add_frame([_box(0, 0)], [0.9], None)
    ev.add_frame(None, None, np.zeros((0, 7)))
    with caplog.at_level(logging.WARNING):
        res = ev.result()
    assert res.no_ground_truth and res.num_gt == 0
    assert all(math.isnan(t.ap) for t in res.thresholds)
    assert np.isnan(res[0.5].recall).all() and res[0.5].precision.tolist() == [0.0]
    assert "no ground-truth" in caplog.text
    assert res.to_dict()["iou"]["0.5"]["ap"] is None
    # OpenCOOD divides by zero here.
    with pytest.raises(ZeroDivisionError):
        _opencood([([_box(0, 0)], [0.9], np.zeros((0, 7)))])


def test_empty_evaluator():
    res = APEvaluator((0.5,)).result()
    assert res.num_frames == 0 and res.no_ground_truth and math.isnan(res.ap(0.5))


def test_opencood_calculate_ap_is_not_repeatable_but_ours_is():
    """Documents the peer's caveat: calculate_ap cumsums its lists in place."""
    frames = _random_frames(np.random.default_rng(11), 5)
    stat = {0.5: {"tp": [], "fp": [], "gt": 0}}
    for d, s, g in frames:
        _eval_utils().caluclate_tp_fp(None if d is None else torch.from_numpy(boxes_to_corners(d)),
                                   None if s is None else torch.from_numpy(s),
                                   torch.from_numpy(boxes_to_corners(g)), stat, 0.5)
    first = _eval_utils().calculate_ap(stat, 0.5)[0]
    second = _eval_utils().calculate_ap(stat, 0.5)[0]
    assert first != second
    assert _ours(frames, False).ap(0.5) == pytest.approx(first, abs=1e-12)


@pytest.mark.parametrize("args, match", [
    (([[0, 0, 0, 4, 2, 1.5, np.nan]], [0.5], None), r"det_boxes row 0 .*non-finite"),
    ((None, None, [[0, 0, 0, 4, -2, 1.5, 0]]), r"gt_boxes row 0 .*non-positive"),
    (([[0, 0, 0, 4, 2, 1.5]], [0.5], None), r"det_boxes must have shape"),
    (([_box(0, 0)], [0.5, 0.4], None), r"det_scores has 2 values for 1 detections"),
    (([_box(0, 0)], None, None), r"det_scores missing"),
    (([_box(0, 0)], [np.inf], None), r"det_scores\[0\] is not finite"),
    ((np.zeros((1, 8, 2)), [0.5], None), r"det_boxes must have shape \(N, 8, 3\)"),
])
def test_bad_input_raises_box_error(args, match):
    with pytest.raises(BoxError, match=match):
        APEvaluator().add_frame(*args)


def test_thresholds_are_checked():
    with pytest.raises(ValueError, match="iou_thresholds"):
        APEvaluator((0.5, 1.5))
    with pytest.raises(KeyError, match="0.9"):
        _ours(ADVERSARIAL["touching boxes"], True).ap(0.9)


def test_voc_ap_matches_opencood_voc_ap():
    rng = np.random.default_rng(12)
    for _ in range(20):
        n = int(rng.integers(0, 30))
        rec = np.sort(rng.random(n))
        prec = rng.random(n)
        ref = _eval_utils().voc_ap(rec.tolist(), prec.tolist())[0]
        assert voc_ap(prec, rec) == ref
