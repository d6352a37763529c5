"""Poses and rigid transforms (numpy, float64).

OPV2V / CARLA store a pose as ``[x, y, z, roll, yaw, pitch]`` in **degrees** in Unreal's
**left-handed** frame (x forward, y right, z up). OpenCOOD turns it into a matrix with
``x_to_world``; :func:`carla_pose_to_matrix` is that exact formula, so a matrix built here
equals OpenCOOD's. The library itself is right-handed (y left): :func:`left_to_right_handed`
mirrors a left-handed transform through the xz-plane (``F @ T @ F``, ``F = diag(1,-1,1,1)``),
which negates y and yaw and keeps x, z and the distance between any two points.
"""

from __future__ import annotations

import numpy as np

_FLIP_Y = np.diag([1.0, -1.0, 1.0, 1.0])


def _as_pose_array(pose, name: str = "pose") -> np.ndarray:
    arr = np.asarray(pose, dtype=np.float64)
    if arr.shape[-1] != 6:
        raise ValueError(f"{name} must have 6 values [x, y, z, roll, yaw, pitch], got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} has non-finite values: {arr.tolist()}")
    return arr


def carla_pose_to_matrix(pose) -> np.ndarray:
    """``[x, y, z, roll, yaw, pitch]`` (degrees, CARLA left-handed) -> (4, 4) ``world_from_sensor``.

    Vectorised over leading dimensions: ``pose`` of shape (..., 6) gives (..., 4, 4).
    Identical to OpenCOOD's ``transformation_utils.x_to_world``.
    """
    p = _as_pose_array(pose)
    x, y, z = p[..., 0], p[..., 1], p[..., 2]
    roll, yaw, pitch = np.radians(p[..., 3]), np.radians(p[..., 4]), np.radians(p[..., 5])
    cy, sy = np.cos(yaw), np.sin(yaw)
    cr, sr = np.cos(roll), np.sin(roll)
    cp, sp = np.cos(pitch), np.sin(pitch)
    m = np.zeros(p.shape[:-1] + (4, 4))
    m[..., 0, 3], m[..., 1, 3], m[..., 2, 3], m[..., 3, 3] = x, y, z, 1.0
    m[..., 0, 0] = cp * cy
    m[..., 0, 1] = cy * sp * sr - sy * cr
    m[..., 0, 2] = -cy * sp * cr - sy * sr
    m[..., 1, 0] = sy * cp
    m[..., 1, 1] = sy * sp * sr + cy * cr
    m[..., 1, 2] = -sy * sp * cr + cy * sr
    m[..., 2, 0] = sp
    m[..., 2, 1] = -cp * sr
    m[..., 2, 2] = cp * cr
    return m


def matrix_to_carla_pose(matrix) -> np.ndarray:
    """(…, 4, 4) CARLA-frame matrix -> ``[x, y, z, roll, yaw, pitch]`` in degrees (inverse of the above)."""
    t = np.asarray(matrix, dtype=np.float64)
    if t.shape[-2:] != (4, 4):
        raise ValueError(f"expected (..., 4, 4) matrices, got shape {t.shape}")
    yaw = np.degrees(np.arctan2(t[..., 1, 0], t[..., 0, 0]))
    roll = np.degrees(np.arctan2(-t[..., 2, 1], t[..., 2, 2]))
    pitch = np.degrees(np.arctan2(t[..., 2, 0], np.hypot(t[..., 2, 1], t[..., 2, 2])))
    return np.stack([t[..., 0, 3], t[..., 1, 3], t[..., 2, 3], roll, yaw, pitch], axis=-1)


def left_to_right_handed(matrix) -> np.ndarray:
    """Mirror a left-handed (CARLA) rigid transform into the right-handed library frame."""
    return _FLIP_Y @ np.asarray(matrix, dtype=np.float64) @ _FLIP_Y


# Mirroring is its own inverse.
right_to_left_handed = left_to_right_handed


def opv2v_pose_to_world_from_lidar(pose) -> np.ndarray:
    """OPV2V yaml ``lidar_pose`` -> right-handed (4, 4) ``world_from_lidar``."""
    return left_to_right_handed(carla_pose_to_matrix(pose))


def world_from_lidar_to_opv2v_pose(matrix) -> np.ndarray:
    """Right-handed ``world_from_lidar`` -> OPV2V ``lidar_pose`` ``[x, y, z, roll, yaw, pitch]`` (degrees)."""
    return matrix_to_carla_pose(right_to_left_handed(matrix))


def relative_transform(world_from_a, world_from_b) -> np.ndarray:
    """``b_from_a = inv(world_from_b) @ world_from_a`` (maps points in frame a to frame b).

    Broadcasts over leading dimensions (e.g. all agents against one ego).
    """
    return np.linalg.inv(np.asarray(world_from_b, dtype=np.float64)) @ np.asarray(world_from_a, dtype=np.float64)


def transform_points(matrix, points) -> np.ndarray:
    """Apply a (4, 4) transform to ``points`` (P, >=3); extra columns (intensity) pass through."""
    pts = np.asarray(points)
    m = np.asarray(matrix, dtype=np.float64)
    out = pts.copy()
    xyz = pts[:, :3].astype(np.float64) @ m[:3, :3].T + m[:3, 3]
    out[:, :3] = xyz.astype(pts.dtype, copy=False)
    return out


def yaw_of(matrix) -> np.ndarray:
    """Heading (radians) of a rotation's x axis in the xy-plane, for (…, 4, 4) or (…, 3, 3)."""
    m = np.asarray(matrix, dtype=np.float64)
    return np.arctan2(m[..., 1, 0], m[..., 0, 0])


def wrap_angle(angle):
    """Wrap radians to ``[-pi, pi)``; works on numpy arrays and torch tensors."""
    return (angle + np.pi) % (2 * np.pi) - np.pi


def se3_from_xyz_rpy(x, y, z, roll=0.0, pitch=0.0, yaw=0.0) -> np.ndarray:
    """Right-handed (4, 4) transform ``Rz(yaw) @ Ry(pitch) @ Rx(roll)`` plus translation (radians)."""
    cr, sr = np.cos(roll), np.sin(roll)
    cp, sp = np.cos(pitch), np.sin(pitch)
    cy, sy = np.cos(yaw), np.sin(yaw)
    m = np.eye(4)
    m[:3, :3] = np.array(
        [
            [cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr],
            [sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr],
            [-sp, cp * sr, cp * cr],
        ]
    )
    m[:3, 3] = (x, y, z)
    return m
