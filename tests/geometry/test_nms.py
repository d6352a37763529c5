"""Rotated / axis-aligned NMS against a brute-force greedy reference (shapely polygons)."""

import math

import numpy as np
import pytest
import torch

import coperception.geometry.nms as nms_module
from coperception.geometry.boxes import boxes_to_bev_corners, boxes_to_standup
from coperception.geometry.nms import greedy_keep, nms


def _shapely():
    """Shapely, for the polygon reference of the tests that use it (skipped where it is missing)."""
    return pytest.importorskip("shapely.geometry")



def clustered_boxes(n, seed, dtype=torch.float64):
    g = np.random.default_rng(seed)
    centres = g.uniform(-20, 20, (max(n // 6, 1), 2))
    xy = centres[g.integers(0, len(centres), n)] + g.normal(0, 1.0, (n, 2))
    boxes = np.column_stack([xy, g.uniform(-2, 0, n), g.uniform(3, 5, n), g.uniform(1.5, 2.2, n),
                             g.uniform(1.4, 1.8, n), g.uniform(-math.pi, math.pi, n)])
    scores = g.permutation(n) / n + 0.01  # distinct scores
    return torch.tensor(boxes, dtype=dtype), torch.tensor(scores, dtype=dtype)


def polygons(boxes, mode):
    if mode == "standup":
        return [_shapely().box(*r) for r in boxes_to_standup(boxes).numpy()]
    return [_shapely().Polygon(q) for q in boxes_to_bev_corners(boxes).numpy()]


def iou(p, q):
    inter = p.intersection(q).area
    return inter / (p.area + q.area - inter)


def brute_nms(boxes, scores, thr, mode, pre_max=None):
    polys = polygons(boxes, mode)
    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))[:pre_max]
    kept = []
    for i in order:
        if all(iou(polys[i], polys[k]) <= thr for k in kept):
            kept.append(i)
    return kept


@pytest.mark.parametrize("mode", ["rotated", "standup"])
@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("thr", [0.01, 0.15, 0.5])
def test_nms_matches_brute_force(mode, seed, thr):
    boxes, scores = clustered_boxes(60, seed)
    polys = polygons(boxes, mode)
    gaps = [abs(iou(p, q) - thr) for i, p in enumerate(polys) for q in polys[i + 1:]]
    assert min(gaps) > 1e-9, "a pair sits on the threshold: pick another seed"
    assert nms(boxes, scores, thr, mode).tolist() == brute_nms(boxes, scores, thr, mode)


def test_pre_and_post_max_size():
    boxes, scores = clustered_boxes(80, 7)
    assert nms(boxes, scores, 0.15, pre_max_size=30).tolist() == brute_nms(boxes, scores, 0.15, "rotated", 30)
    full = nms(boxes, scores, 0.15)
    assert nms(boxes, scores, 0.15, post_max_size=3).tolist() == full[:3].tolist()


def test_float32_and_empty_input():
    boxes, scores = clustered_boxes(40, 3, torch.float32)
    assert nms(boxes, scores, 0.15).tolist() == brute_nms(boxes.double(), scores, 0.15, "rotated")
    assert nms(boxes[:0], scores[:0], 0.15).numel() == 0


def test_long_suppression_chain_uses_exact_fallback(monkeypatch):
    # Box i overlaps only i+1: greedy keeps every other box; the fixed point needs ~N steps.
    n = 41
    boxes = torch.zeros(n, 7, dtype=torch.float64)
    boxes[:, 0] = torch.arange(n) * 3.0
    boxes[:, 3:6] = torch.tensor([4.0, 2.0, 1.5], dtype=torch.float64)
    scores = torch.linspace(1.0, 0.1, n, dtype=torch.float64)
    monkeypatch.setattr(nms_module, "_MAX_FIXED_POINT_STEPS", 4)
    kept = nms(boxes, scores, 0.1)
    assert kept.tolist() == list(range(0, n, 2)) == brute_nms(boxes, scores, 0.1, "rotated")


def test_greedy_keep_fixed_point_equals_sequential():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        overlap = (torch.rand(50, 50, generator=g) < 0.08).triu(1)
        assert torch.equal(greedy_keep(overlap), nms_module._sequential_keep(overlap))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("mode", ["rotated", "standup"])
def test_cuda_matches_cpu(mode, monkeypatch):
    boxes, scores = clustered_boxes(600, 11, torch.float32)
    expected = nms(boxes, scores, 0.15, mode)
    assert torch.equal(nms(boxes.cuda(), scores.cuda(), 0.15, mode).cpu(), expected)
    monkeypatch.setattr(nms_module, "_MAX_FIXED_POINT_STEPS", 1)  # the CPU fallback, from CUDA input
    kept = nms(boxes.cuda(), scores.cuda(), 0.15, mode)
    assert kept.is_cuda and torch.equal(kept.cpu(), expected)
