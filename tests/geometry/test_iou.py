"""Rotated BEV IoU against shapely's polygon IoU (the reference OpenCOOD evaluates with)."""

import numpy as np
import pytest
import torch

from coperception.geometry.boxes import boxes_to_bev_corners, boxes_to_standup
from coperception.geometry.iou import bev_iou, bev_iou_aligned, quad_iou, quad_iou_aligned, standup_iou


def _polygon(points):
    # Imported here so that the CUDA test runs where shapely is not installed.
    return pytest.importorskip("shapely.geometry").Polygon(points)


def _shapely_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    pa = [_polygon(q) for q in boxes_to_bev_corners(a)]
    pb = [_polygon(q) for q in boxes_to_bev_corners(b)]
    return np.array([[x.intersection(y).area / x.union(y).area for y in pb] for x in pa]).reshape(len(a), len(b))


def _random_boxes(rng, n, spread=4.0):
    b = np.zeros((n, 7))
    b[:, :2] = rng.uniform(-spread, spread, (n, 2))
    b[:, 3:6] = rng.uniform(0.2, 5.0, (n, 3))
    b[:, 6] = rng.uniform(-np.pi, np.pi, n)
    return b


def _box(x, y, l, w, yaw, z=0.0):
    return [x, y, z, l, w, 1.0, yaw]


ADVERSARIAL = {
    "identical": (_box(1, 2, 4, 2, 0.3), _box(1, 2, 4, 2, 0.3)),
    "identical, yaw + pi": (_box(1, 2, 4, 2, 0.3), _box(1, 2, 4, 2, 0.3 + np.pi)),
    "yaw pi vs -pi": (_box(5, 5, 4.5, 1.8, np.pi), _box(5, 5, 4.5, 1.8, -np.pi)),
    "yaw just below pi vs just above -pi": (_box(0, 0, 4, 2, np.pi - 1e-9), _box(0.1, 0, 4, 2, -np.pi + 1e-9)),
    "touching edges, axis aligned": (_box(0, 0, 2, 2, 0), _box(2, 0, 2, 2, 0)),
    "touching edges, rotated": (_box(0, 0, 2, 2, 0.7), _box(2 * np.cos(0.7), 2 * np.sin(0.7), 2, 2, 0.7)),
    "touching corners": (_box(0, 0, 2, 2, 0), _box(2, 2, 2, 2, 0)),
    "touching corner on edge": (_box(0, 0, 2, 2, 0), _box(1 + np.sqrt(2) / 2, 0, 1, 1, np.pi / 4)),
    "inside": (_box(0, 0, 10, 8, 0.2), _box(0.5, -0.3, 2, 1, 1.1)),
    "inside sharing an edge": (_box(0, 0, 4, 2, 0), _box(1, 0, 2, 2, 0)),
    "inside sharing a corner": (_box(0, 0, 4, 4, 0), _box(1, 1, 2, 2, 0)),
    "half overlap, opposite heading": (_box(0, 0, 4, 2, 0), _box(2, 0, 4, 2, np.pi)),
    "cross": (_box(0, 0, 6, 1, 0), _box(0, 0, 6, 1, np.pi / 2)),
    "octagon": (_box(0, 0, 2, 2, 0), _box(0, 0, 2, 2, np.pi / 4)),
    "thin crossing": (_box(0, 0, 4, 1e-4, 0.3), _box(0, 0, 4, 2, -0.2)),
    "thin along an edge": (_box(0, 1 - 5e-5, 4, 1e-4, 0), _box(0, 0, 4, 2, 0)),
    "thin pair, tiny angle": (_box(0, 0, 10, 1e-3, 0), _box(0, 0, 10, 1e-3, 1e-7)),
    "far apart": (_box(0, 0, 4, 2, 0), _box(500, -300, 4, 2, 1)),
    "far from the origin": (_box(1e4, -2e4, 4, 2, 0.1), _box(1e4 + 0.5, -2e4 + 0.2, 4.2, 1.9, 0.15)),
    "nearly parallel offset": (_box(0, 0, 4, 2, 0), _box(0, 1.5, 4, 2, 1e-11)),
}


@pytest.mark.parametrize("name", list(ADVERSARIAL))
def test_adversarial_pairs_match_shapely(name):
    a, b = (np.array([x], dtype=np.float64) for x in ADVERSARIAL[name])
    ref = _shapely_iou(a, b)
    np.testing.assert_allclose(bev_iou(a, b), ref, atol=1e-6)
    np.testing.assert_allclose(bev_iou(b, a), ref.T, atol=1e-6)
    np.testing.assert_allclose(bev_iou_aligned(a, b), ref[:, 0], atol=1e-6)


def test_adversarial_values_are_exact_where_known():
    iou = {k: float(bev_iou_aligned(*(np.array([x]) for x in v))[0]) for k, v in ADVERSARIAL.items()}
    for k in ("identical", "identical, yaw + pi", "yaw pi vs -pi"):
        assert iou[k] == pytest.approx(1.0, abs=1e-12), k
    for k in ("touching edges, axis aligned", "touching edges, rotated", "touching corners",
              "touching corner on edge", "far apart"):
        assert iou[k] == pytest.approx(0.0, abs=1e-12), k
    assert iou["inside sharing an edge"] == pytest.approx(0.5, abs=1e-12)
    assert iou["half overlap, opposite heading"] == pytest.approx(1 / 3, abs=1e-12)
    assert iou["octagon"] == pytest.approx((8 * (np.sqrt(2) - 1)) / (8 - 8 * (np.sqrt(2) - 1)), abs=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_random_pairs_match_shapely(seed):
    rng = np.random.default_rng(seed)
    a, b = _random_boxes(rng, 60), _random_boxes(rng, 50)
    ref = _shapely_iou(a, b)
    assert (ref > 0).mean() > 0.2  # the test exercises overlapping pairs
    np.testing.assert_allclose(bev_iou(a, b), ref, atol=1e-9)


def test_random_near_duplicates_match_shapely():
    """Boxes perturbed by tiny amounts stress the near-collinear and near-vertex cases."""
    rng = np.random.default_rng(11)
    a = _random_boxes(rng, 300)
    b = a.copy()
    scale = 10.0 ** rng.integers(-12, -2, (300, 1))
    b[:, [0, 1, 3, 4, 6]] += rng.normal(size=(300, 5)) * scale
    b[:, 3:5] = np.abs(b[:, 3:5])
    flip = rng.random(300) < 0.5
    b[flip, 6] += np.pi
    ref = np.array([_shapely_iou(x[None], y[None])[0, 0] for x, y in zip(a, b)])
    np.testing.assert_allclose(bev_iou_aligned(a, b), ref, atol=1e-6)


def test_batched_equals_per_batch_and_aligned_equals_diagonal():
    rng = np.random.default_rng(4)
    a = torch.from_numpy(np.stack([_random_boxes(rng, 7) for _ in range(3)]))
    b = torch.from_numpy(np.stack([_random_boxes(rng, 5) for _ in range(3)]))
    out = bev_iou(a, b)
    assert out.shape == (3, 7, 5) and isinstance(out, torch.Tensor)
    for i in range(3):
        np.testing.assert_allclose(out[i].numpy(), bev_iou(a[i], b[i]).numpy(), atol=1e-15)
    sq = bev_iou(a[0], a[0]).numpy()
    np.testing.assert_allclose(bev_iou_aligned(a[0], a[0]).numpy(), np.diag(sq), atol=1e-15)
    np.testing.assert_allclose(np.diag(sq), 1.0, atol=1e-12)


def test_types_shapes_and_empty_inputs():
    rng = np.random.default_rng(5)
    a, b = _random_boxes(rng, 4), _random_boxes(rng, 3)
    out = bev_iou(a, b)
    assert isinstance(out, np.ndarray) and out.shape == (4, 3) and out.dtype == np.float64
    assert bev_iou(np.zeros((0, 7)), b).shape == (0, 3)
    assert bev_iou(a, np.zeros((0, 7))).shape == (4, 0)
    assert bev_iou_aligned(np.zeros((0, 7)), np.zeros((0, 7))).shape == (0,)
    f32 = bev_iou(torch.from_numpy(a).float(), torch.from_numpy(b).float())
    assert f32.dtype == torch.float32
    np.testing.assert_allclose(f32.numpy(), out, atol=1e-4)


def test_quad_iou_accepts_either_winding_and_corner_arrays():
    rng = np.random.default_rng(6)
    a, b = _random_boxes(rng, 20), _random_boxes(rng, 20)
    qa, qb = boxes_to_bev_corners(a), boxes_to_bev_corners(b)
    ref = bev_iou(a, b)
    np.testing.assert_allclose(quad_iou(qa[:, ::-1], qb), ref, atol=1e-12)
    np.testing.assert_allclose(quad_iou_aligned(qa, qb[:, ::-1]), np.diag(ref), atol=1e-12)
    # Non-rectangular convex quads (parallelograms of tilted boxes) against shapely.
    shear = np.array([[1.0, 0.4], [0.0, 0.8]])
    pa, pb = qa @ shear.T, qb @ shear.T
    ref_q = np.array([[_polygon(x).intersection(_polygon(y)).area / _polygon(x).union(_polygon(y)).area
                       for y in pb] for x in pa])
    np.testing.assert_allclose(quad_iou(pa, pb), ref_q, atol=1e-9)


def test_quad_iou_validity_masks_zero_padding():
    rng = np.random.default_rng(7)
    a, b = _random_boxes(rng, 6, spread=1.0), _random_boxes(rng, 4, spread=1.0)
    full = bev_iou(a, b)
    mask_a = np.array([True, False, True, True, False, True])
    out = quad_iou(boxes_to_bev_corners(a), boxes_to_bev_corners(b), mask_a, None)
    np.testing.assert_allclose(out, full * mask_a[:, None], atol=1e-12)


def test_standup_iou_matches_brute_force():
    rng = np.random.default_rng(8)
    a, b = boxes_to_standup(_random_boxes(rng, 15)), boxes_to_standup(_random_boxes(rng, 12))
    ref = np.zeros((15, 12))
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            iw = max(0.0, min(x[2], y[2]) - max(x[0], y[0]))
            ih = max(0.0, min(x[3], y[3]) - max(x[1], y[1]))
            inter = iw * ih
            ref[i, j] = inter / ((x[2] - x[0]) * (x[3] - x[1]) + (y[2] - y[0]) * (y[3] - y[1]) - inter)
    np.testing.assert_allclose(standup_iou(a, b), ref, atol=1e-12)
    assert standup_iou(torch.from_numpy(a[None]), torch.from_numpy(b[None])).shape == (1, 15, 12)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    rng = np.random.default_rng(9)
    a = torch.from_numpy(np.stack([_random_boxes(rng, 300) for _ in range(4)]))
    b = torch.from_numpy(np.stack([_random_boxes(rng, 200) for _ in range(4)]))
    cpu = bev_iou(a, b)
    gpu = bev_iou(a.cuda(), b.cuda())
    assert gpu.is_cuda
    np.testing.assert_allclose(gpu.cpu().numpy(), cpu.numpy(), atol=1e-9, rtol=0)
    gpu32 = bev_iou(a.float().cuda(), b.float().cuda())
    np.testing.assert_allclose(gpu32.cpu().numpy(), cpu.numpy(), atol=1e-4, rtol=0)


def _grid_boxes():
    """Boxes on a coarse grid with yaw in multiples of pi/4: touching edges, shared corners, collinear edges."""
    from hypothesis import strategies as st

    coord = st.integers(-4, 4).map(lambda v: v * 0.5)
    size = st.integers(1, 8).map(lambda v: v * 0.5)
    yaw = st.integers(-4, 4).map(lambda v: v * np.pi / 4)
    return st.tuples(coord, coord, size, size, yaw).map(lambda t: _box(t[0], t[1], t[2], t[3], t[4]))


def test_degenerate_grid_pairs_match_shapely():
    hypothesis = pytest.importorskip("hypothesis")

    @hypothesis.settings(max_examples=200, deadline=None, derandomize=True)
    @hypothesis.given(_grid_boxes(), _grid_boxes())
    def check(a, b):
        a, b = np.array([a]), np.array([b])
        np.testing.assert_allclose(bev_iou(a, b), _shapely_iou(a, b), atol=1e-9)

    check()
