"""Poses: our CARLA pose formulas equal OpenCOOD's, inverses invert, mirroring is a reflection."""

import numpy as np
import pytest

from coperception.geometry.pose import (
    carla_pose_to_matrix,
    left_to_right_handed,
    matrix_to_carla_pose,
    relative_transform,
    right_to_left_handed,
    transform_points,
    yaw_of,
)


def _transformation_utils():
    """The peer's module, imported by the tests that compare against it: only they skip where it
    is not installed."""
    return pytest.importorskip("opencood.utils.transformation_utils")


def _random_poses(rng, n, max_pitch=80.0):
    """(n, 6) [x, y, z, roll, yaw, pitch] degrees, away from gimbal lock (|pitch| < 90)."""
    return np.column_stack([
        rng.uniform(-300, 300, n), rng.uniform(-300, 300, n), rng.uniform(-5, 30, n),
        rng.uniform(-179, 179, n), rng.uniform(-179, 179, n), rng.uniform(-max_pitch, max_pitch, n)])


def test_carla_pose_to_matrix_equals_opencood_x_to_world():
    rng = np.random.default_rng(0)
    poses = _random_poses(rng, 50)
    ours = carla_pose_to_matrix(poses)
    for pose, m in zip(poses, ours):
        np.testing.assert_allclose(m, _transformation_utils().x_to_world(pose.tolist()), rtol=0, atol=1e-12)


def test_matrix_to_carla_pose_inverts():
    rng = np.random.default_rng(1)
    poses = _random_poses(rng, 200)
    back = matrix_to_carla_pose(carla_pose_to_matrix(poses))
    np.testing.assert_allclose(back, poses, atol=1e-9)


def test_relative_transform_equals_opencood_x1_to_x2():
    rng = np.random.default_rng(2)
    a, b = _random_poses(rng, 20), _random_poses(rng, 20)
    ours = relative_transform(carla_pose_to_matrix(a), carla_pose_to_matrix(b))
    for pa, pb, m in zip(a, b, ours):
        np.testing.assert_allclose(m, _transformation_utils().x1_to_x2(pa.tolist(), pb.tolist()), atol=1e-9)


def test_relative_transform_maps_points_between_frames():
    rng = np.random.default_rng(3)
    wa, wb = carla_pose_to_matrix(_random_poses(rng, 2))
    pts = rng.normal(size=(10, 3))
    in_b = transform_points(relative_transform(wa, wb), pts)
    np.testing.assert_allclose(transform_points(wb, in_b), transform_points(wa, pts), atol=1e-9)


def test_left_to_right_handed_mirrors_y_and_yaw_and_keeps_distances():
    rng = np.random.default_rng(4)
    poses = _random_poses(rng, 30)
    left = carla_pose_to_matrix(poses)
    right = left_to_right_handed(left)
    np.testing.assert_allclose(right[:, 1, 3], -left[:, 1, 3])
    np.testing.assert_allclose(right[:, [0, 2], 3], left[:, [0, 2], 3])
    np.testing.assert_allclose(yaw_of(right), -yaw_of(left), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(right[:, :3, :3]), 1.0, atol=1e-12)
    np.testing.assert_allclose(right_to_left_handed(right), left, atol=1e-12)
    # A left-handed rigid motion, mirrored, moves mirrored points to mirrored places.
    flip = np.array([1.0, -1.0, 1.0])
    pts = rng.normal(size=(8, 3)) * 10
    for lm, rm in zip(left, right):
        moved_left = transform_points(lm, pts)
        moved_right = transform_points(rm, pts * flip)
        np.testing.assert_allclose(moved_right, moved_left * flip, atol=1e-9)
        d_left = np.linalg.norm(moved_left[:, None] - moved_left[None], axis=-1)
        d_right = np.linalg.norm(moved_right[:, None] - moved_right[None], axis=-1)
        np.testing.assert_allclose(d_right, d_left, atol=1e-9)
