"""Box geometry: OpenCOOD-compatible corners, inverse, transforms, range masks, validation."""

import numpy as np
import pytest
import torch

from coperception.errors import BoxError
from coperception.geometry.boxes import (
    boxes_in_range_mask,
    boxes_to_bev_corners,
    boxes_to_corners,
    boxes_to_standup,
    corners_to_boxes,
    from_opencood_center,
    to_opencood_center,
    transform_boxes,
    validate_boxes,
    validate_corners,
)
from coperception.geometry.pose import se3_from_xyz_rpy, transform_points, wrap_angle

box_utils = pytest.importorskip("opencood.utils.box_utils")


def _random_boxes(rng, n, spread=50.0):
    b = np.empty((n, 7))
    b[:, :3] = rng.uniform(-spread, spread, (n, 3))
    b[:, 3:6] = rng.uniform(0.3, 6.0, (n, 3))
    b[:, 6] = rng.uniform(-np.pi, np.pi, n)
    return b


def test_corners_equal_opencood_lwh_and_hwl():
    boxes = _random_boxes(np.random.default_rng(0), 64)
    ours = boxes_to_corners(boxes)
    # OpenCOOD rotates in float32 (rotate_points_along_z casts), hence the tolerance.
    np.testing.assert_allclose(ours, box_utils.boxes_to_corners_3d(boxes.copy(), "lwh"), atol=2e-5)
    hwl = to_opencood_center(boxes, "hwl")
    np.testing.assert_allclose(ours, box_utils.boxes_to_corners_3d(hwl, "hwl"), atol=2e-5)
    np.testing.assert_array_equal(from_opencood_center(hwl, "hwl"), boxes)
    np.testing.assert_array_equal(from_opencood_center(boxes, "lwh"), boxes)
    with pytest.raises(BoxError, match="order"):
        from_opencood_center(boxes, "whl")


def test_corners_torch_matches_numpy_and_keeps_dtype():
    boxes = _random_boxes(np.random.default_rng(1), 10)
    t = torch.from_numpy(boxes).float()
    out = boxes_to_corners(t)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and out.shape == (10, 8, 3)
    np.testing.assert_allclose(out.numpy(), boxes_to_corners(boxes), atol=1e-4)
    assert boxes_to_corners(boxes.astype(np.float32)).dtype == np.float32
    assert boxes_to_corners(np.zeros((0, 7))).shape == (0, 8, 3)
    assert boxes_to_corners(np.stack([boxes, boxes])).shape == (2, 10, 8, 3)


def test_corner_layout_bottom_face_counter_clockwise():
    box = np.array([[1.0, 2.0, 3.0, 4.0, 2.0, 1.0, 0.0]])
    c = boxes_to_corners(box)[0]
    np.testing.assert_allclose(c[:4, 2], 2.5)  # bottom face first
    np.testing.assert_allclose(c[4:, 2], 3.5)
    np.testing.assert_allclose(c[0, :2], [3.0, 1.0])  # front-right
    np.testing.assert_allclose(c[1, :2], [3.0, 3.0])  # front-left
    quad = boxes_to_bev_corners(box)[0]
    area = 0.5 * np.sum(quad[:, 0] * np.roll(quad[:, 1], -1) - np.roll(quad[:, 0], -1) * quad[:, 1])
    assert area == pytest.approx(8.0)


def test_corners_to_boxes_inverts_including_yaw_near_pi():
    rng = np.random.default_rng(2)
    boxes = _random_boxes(rng, 100)
    boxes[:5, 6] = [np.pi - 1e-9, -np.pi, -np.pi + 1e-9, np.pi - 1e-3, 0.0]
    back = corners_to_boxes(boxes_to_corners(boxes))
    np.testing.assert_allclose(back[:, :6], boxes[:, :6], atol=1e-9)
    np.testing.assert_allclose(wrap_angle(back[:, 6] - boxes[:, 6]), 0, atol=1e-9)
    assert np.all((back[:, 6] >= -np.pi) & (back[:, 6] < np.pi))
    t = corners_to_boxes(boxes_to_corners(torch.from_numpy(boxes)))
    np.testing.assert_allclose(t.numpy(), back, atol=1e-12)


def test_corners_to_boxes_agrees_with_opencood_away_from_pi():
    boxes = _random_boxes(np.random.default_rng(3), 50)
    boxes[:, 6] = np.random.default_rng(4).uniform(-2.5, 2.5, 50)
    ref = box_utils.corner_to_center(boxes_to_corners(boxes), "lwh")
    np.testing.assert_allclose(corners_to_boxes(boxes_to_corners(boxes)), ref, atol=1e-9)


@pytest.mark.parametrize("use_torch", [False, True])
def test_transform_boxes_moves_corners_rigidly(use_torch):
    rng = np.random.default_rng(5)
    boxes = _random_boxes(rng, 30)
    m = se3_from_xyz_rpy(10.0, -4.0, 1.5, yaw=2.9)
    out = transform_boxes(m, torch.from_numpy(boxes) if use_torch else boxes)
    out = out.numpy() if use_torch else out
    expected = transform_points(m, boxes_to_corners(boxes).reshape(-1, 3)).reshape(-1, 8, 3)
    np.testing.assert_allclose(boxes_to_corners(out), expected, atol=1e-9)
    assert np.all((out[:, 6] >= -np.pi) & (out[:, 6] < np.pi))


def test_transform_boxes_batched_and_keeps_upright_under_tilt():
    rng = np.random.default_rng(6)
    boxes = _random_boxes(rng, 5)
    mats = np.stack([se3_from_xyz_rpy(1, 2, 3, yaw=0.3), se3_from_xyz_rpy(-1, 0, 0, roll=0.1, pitch=0.05, yaw=-1.0)])
    out = transform_boxes(mats, np.stack([boxes, boxes]))
    np.testing.assert_allclose(out[0], transform_boxes(mats[0], boxes), atol=1e-12)
    np.testing.assert_allclose(out[1, :, :3], transform_points(mats[1], boxes[:, :3]), atol=1e-12)
    np.testing.assert_array_equal(out[1, :, 3:6], boxes[:, 3:6])
    assert transform_boxes(mats[0], boxes.astype(np.float32)).dtype == np.float32


def test_range_mask_equals_opencood_and_xy_only_variant():
    rng = np.random.default_rng(7)
    boxes = _random_boxes(rng, 400, spread=110.0)
    boxes[:, 2] = rng.uniform(-3.5, 1.5, 400)
    lidar_range = [-100.0, -40.0, -3.0, 100.0, 40.0, 1.0]
    for k in (1, 4, 8):
        _, ref = box_utils.mask_boxes_outside_range_numpy(boxes, lidar_range, "lwh", min_num_corners=k,
                                                          return_mask=True)
        np.testing.assert_array_equal(boxes_in_range_mask(boxes, lidar_range, min_corners=k), ref)
    corners = boxes_to_corners(boxes)
    xy_inside = ((corners[..., :2] >= [-100, -40]) & (corners[..., :2] <= [100, 40])).all(-1).all(-1)
    np.testing.assert_array_equal(boxes_in_range_mask(corners, lidar_range, use_z=False), xy_inside)
    t = boxes_in_range_mask(torch.from_numpy(boxes), lidar_range)
    assert isinstance(t, torch.Tensor)
    np.testing.assert_array_equal(t.numpy(), boxes_in_range_mask(boxes, lidar_range))


def test_standup_bounds_corners():
    boxes = _random_boxes(np.random.default_rng(8), 20)
    su = boxes_to_standup(boxes)
    quads = boxes_to_bev_corners(boxes)
    np.testing.assert_allclose(su[:, :2], quads.min(1))
    np.testing.assert_allclose(su[:, 2:], quads.max(1))
    np.testing.assert_allclose(boxes_to_standup(torch.from_numpy(boxes)).numpy(), su)


@pytest.mark.parametrize("bad, match", [
    (np.zeros((3, 6)), r"shape \(N, 7\).*\(3, 6\)"),
    (np.ones(7), r"shape \(N, 7\)"),
    (np.array([[0, 0, 0, 1, 1, 1, 0], [0, np.nan, 0, 1, 1, 1, 0]], float), r"row 1 .*non-finite.*nan"),
    (np.array([[0, 0, 0, 1, 1, 1, np.inf]], float), r"row 0 .*non-finite.*inf"),
    (np.array([[0, 0, 0, 1, 1, 1, 0], [0, 0, 0, 1, 1, 1, 0], [0, 0, 0, 2, -1, 1, 0]], float),
     r"row 2 .*non-positive.*-1"),
    (np.array([[0, 0, 0, 1, 0, 1, 0]], float), r"row 0 .*non-positive"),
])
def test_validate_boxes_names_problem_row_and_value(bad, match):
    with pytest.raises(BoxError, match=match):
        validate_boxes(bad, "gt")
    with pytest.raises(BoxError, match="gt"):
        validate_boxes(torch.as_tensor(bad), "gt")


def test_validate_boxes_accepts_good_input_and_returns_it():
    boxes = _random_boxes(np.random.default_rng(9), 4)
    assert validate_boxes(boxes) is boxes
    assert validate_boxes(np.zeros((0, 7))).shape == (0, 7)


def test_validate_corners():
    boxes = _random_boxes(np.random.default_rng(10), 4)
    corners = boxes_to_corners(boxes)
    assert validate_corners(corners) is corners
    validate_corners(corners[:, :4, :2][:, ::-1])  # clockwise quads are fine
    bad = corners.copy()
    bad[2, 0, 0] = np.nan
    with pytest.raises(BoxError, match="box 2 has a non-finite"):
        validate_corners(bad)
    twisted = corners.copy()
    twisted[1, [0, 1]] = twisted[1, [1, 0]]  # bow-tie bottom face
    with pytest.raises(BoxError, match="box 1: .*convex"):
        validate_corners(twisted)
    flat = corners.copy()
    flat[3, :4, :2] = 0.0
    with pytest.raises(BoxError, match="box 3"):
        validate_corners(flat)
    with pytest.raises(BoxError, match=r"\(N, 8, 3\)"):
        validate_corners(np.zeros((2, 8, 2)))
