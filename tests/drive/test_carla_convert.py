"""CARLA <-> library conversions, checked against the CARLA 0.9.16 client's own geometry types
(no server needed): ``Transform.transform``, ``get_matrix`` and ``BoundingBox.get_world_vertices``
are LibCarla's C++ code, so agreeing with them checks handedness, not just self-consistency."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coperception.drive.carla_convert import (
    DEFAULT_MAX_STEER_DEG,
    bounding_box_to_box,
    camera_intrinsic,
    collision_kind,
    control_to_throttle_steer_brake,
    control_to_vehicle_control,
    lidar_from_camera,
    lidar_to_points,
    location_to_xyz,
    matrix_to_transform,
    max_steer_deg,
    object_class,
    rotation_to_rpy,
    transform_to_matrix,
    vehicle_control_to_control,
)
from coperception.drive.dynamics import VehicleLimits
from coperception.drive.records import Control, EventKind
from coperception.geometry.boxes import boxes_to_corners
from coperception.geometry.pose import left_to_right_handed, se3_from_xyz_rpy
from coperception.structures.records import OBJECT_CLASSES

carla = pytest.importorskip("carla", reason="the CARLA 0.9.16 client (pip install carla==0.9.16)")

# Positions are drawn as float32 values so that carla.Location (float32) stores them exactly.
f32 = st.floats(-500, 500, width=32)
angle = st.floats(-180, 180)


def _transform(x, y, z, pitch, yaw, roll):
    return carla.Transform(carla.Location(x=x, y=y, z=z), carla.Rotation(pitch=pitch, yaw=yaw, roll=roll))


def _xyz(v) -> np.ndarray:
    return np.array([v.x, v.y, v.z], dtype=np.float64)


def test_hand_computed_pose():
    # CARLA yaw 90 deg (clockwise from above) faces +y_carla = right = -y in ours: our yaw -90 deg.
    m = transform_to_matrix(_transform(1.0, 2.0, 3.0, 0.0, 90.0, 0.0))
    np.testing.assert_allclose(m[:3, 3], [1.0, -2.0, 3.0])
    np.testing.assert_allclose(m[:3, 0], [0.0, -1.0, 0.0], atol=1e-12)  # forward axis
    # CARLA pitch +30 lifts the nose: forward gets +z.
    fwd = transform_to_matrix(_transform(0, 0, 0, 30.0, 0.0, 0.0))[:3, 0]
    np.testing.assert_allclose(fwd, [np.cos(np.radians(30)), 0.0, 0.5], atol=1e-12)
    # CARLA roll +30 lowers the right side; our left axis (+y) therefore rises.
    left = transform_to_matrix(_transform(0, 0, 0, 0.0, 0.0, 30.0))[:3, 1]
    np.testing.assert_allclose(left, [0.0, np.cos(np.radians(30)), 0.5], atol=1e-12)
    assert rotation_to_rpy(carla.Rotation(pitch=10, yaw=20, roll=30)) == pytest.approx(
        np.radians([30, -10, -20]))


@settings(max_examples=200, deadline=None)
@given(f32, f32, f32, angle, angle, angle)
def test_matches_carla_matrix_and_point_transform(x, y, z, pitch, yaw, roll):
    t = _transform(x, y, z, pitch, yaw, roll)
    ours = transform_to_matrix(t)
    # CARLA's own (float32) matrix, mirrored into a right-handed frame.
    np.testing.assert_allclose(ours, left_to_right_handed(np.array(t.get_matrix())), atol=1e-4)
    local = carla.Location(x=1.5, y=-2.25, z=0.75)
    expected = location_to_xyz(t.transform(carla.Location(local.x, local.y, local.z)))
    got = ours[:3, :3] @ location_to_xyz(local) + ours[:3, 3]
    np.testing.assert_allclose(got, expected, atol=1e-4)


@settings(max_examples=300, deadline=None)
@given(f32, f32, f32, st.floats(-np.pi, np.pi), st.floats(-np.pi / 2, np.pi / 2), st.floats(-np.pi, np.pi))
def test_matrix_transform_matrix_round_trip(x, y, z, roll, pitch, yaw):
    m = se3_from_xyz_rpy(x, y, z, roll=roll, pitch=pitch, yaw=yaw)
    t = matrix_to_transform(m)
    assert isinstance(t, carla.Transform)
    np.testing.assert_allclose(transform_to_matrix(t), m, atol=1e-6)


def test_round_trip_at_gimbal_lock():
    m = se3_from_xyz_rpy(1.0, 2.0, 3.0, roll=0.4, pitch=np.pi / 2, yaw=1.1)
    np.testing.assert_allclose(transform_to_matrix(matrix_to_transform(m)), m, atol=1e-6)
    with pytest.raises(ValueError, match="shape"):
        matrix_to_transform(np.eye(3))


def _match_sets(a: np.ndarray, b: np.ndarray) -> float:
    """Largest distance from a point of ``a`` to its nearest point of ``b`` (and vice versa)."""
    d = np.linalg.norm(a[:, None] - b[None], axis=-1)
    return float(max(d.min(axis=1).max(), d.min(axis=0).max()))


@settings(max_examples=100, deadline=None)
@given(f32, f32, f32, angle, st.floats(-3, 3), st.floats(-3, 3), st.floats(0, 2),
       st.floats(0.2, 3), st.floats(0.2, 2), st.floats(0.3, 2), st.floats(-30, 30))
def test_box_corners_match_carla_world_vertices(x, y, z, yaw, bx, by, bz, ex, ey, ez, byaw):
    actor = _transform(x, y, z, 0.0, yaw, 0.0)
    bbox = carla.BoundingBox(carla.Location(bx, by, bz), carla.Vector3D(ex, ey, ez))
    bbox.rotation = carla.Rotation(yaw=byaw)
    box = bounding_box_to_box(actor, bbox)
    np.testing.assert_allclose(box[3:6], [2 * ex, 2 * ey, 2 * ez], rtol=1e-6)
    theirs = np.array([location_to_xyz(v) for v in bbox.get_world_vertices(actor)])
    assert _match_sets(boxes_to_corners(box[None])[0], theirs) < 1e-3


def test_box_hand_computed():
    # An actor at (10, 5) facing CARLA yaw 90 (our -90 deg), box 0.5 m ahead, centre 0.8 m up.
    bbox = carla.BoundingBox(carla.Location(0.5, 0.0, 0.8), carla.Vector3D(2.0, 1.0, 0.8))
    box = bounding_box_to_box(_transform(10.0, 5.0, 0.0, 0.0, 90.0, 0.0), bbox)
    np.testing.assert_allclose(box, [10.0, -5.5, 0.8, 4.0, 2.0, 1.6, -np.pi / 2], atol=1e-9)


def test_lidar_points_negate_y_and_match_world():
    raw = np.array([[10.0, 2.0, -1.0, 0.5], [0.0, -3.0, 0.0, 1.0]], dtype=np.float32)
    pts = lidar_to_points(raw)
    assert pts.dtype == np.float32
    np.testing.assert_array_equal(pts, [[10.0, -2.0, -1.0, 0.5], [0.0, 3.0, 0.0, 1.0]])
    sensor = _transform(5.0, -7.0, 2.0, 3.0, 40.0, -2.0)
    world = ((transform_to_matrix(sensor)[:3, :3] @ pts[:, :3].T).T + transform_to_matrix(sensor)[:3, 3])
    for p_raw, p_world in zip(raw, world):
        carla_world = sensor.transform(carla.Location(*map(float, p_raw[:3])))
        np.testing.assert_allclose(p_world, location_to_xyz(carla_world), atol=1e-4)
    with pytest.raises(ValueError, match="shape"):
        lidar_to_points(np.zeros((3, 3)))


def test_camera_intrinsic_and_projection():
    k = camera_intrinsic(800, 600, 90.0)
    np.testing.assert_allclose(k, [[400, 0, 400], [0, 400, 300], [0, 0, 1]])
    lidar = _transform(3.0, 4.0, 2.0, 0.0, 30.0, 0.0)
    camera = _transform(3.5, 4.2, 1.6, -5.0, 30.0, 0.0)
    l_from_c = lidar_from_camera(lidar, camera)
    # A point 10 m ahead of the camera, 2 m to its right (CARLA +y) and 1 m up (CARLA +z).
    world = location_to_xyz(camera.transform(carla.Location(10.0, 2.0, 1.0)))
    in_lidar = np.linalg.solve(transform_to_matrix(lidar), np.append(world, 1.0))
    in_cam = np.linalg.solve(l_from_c, in_lidar)[:3]
    np.testing.assert_allclose(in_cam, [2.0, -1.0, 10.0], atol=1e-4)  # right, up (= -down), forward
    u, v, w = k @ in_cam
    assert u / w == pytest.approx(400 + 400 * 0.2, abs=1e-2) and v / w == pytest.approx(300 - 40, abs=1e-2)
    with pytest.raises(ValueError, match="fov"):
        camera_intrinsic(800, 600, 180.0)


def test_controls():
    limits = VehicleLimits(max_accel=3.0, max_decel=8.0)
    # Left turn of 35 deg at full throttle: CARLA steer -0.5 of a 70 deg limit.
    assert control_to_throttle_steer_brake(Control(3.0, np.radians(35)), 70.0, limits) == pytest.approx((1.0, -0.5, 0.0))
    assert control_to_throttle_steer_brake(Control(-4.0, -np.radians(7)), 70.0, limits) == pytest.approx((0.0, 0.1, 0.5))
    assert control_to_throttle_steer_brake(Control(1.5, 0.0), 70.0, limits) == pytest.approx((0.5, 0.0, 0.0))
    assert control_to_throttle_steer_brake(Control(-20.0, 3.0), 70.0, limits) == pytest.approx((0.0, -1.0, 1.0))
    vc = control_to_vehicle_control(Control(1.5, np.radians(14)), 70.0, limits)
    assert isinstance(vc, carla.VehicleControl)
    assert (vc.throttle, vc.steer, vc.brake) == pytest.approx((0.5, -0.2, 0.0))
    # A left turn in CARLA (negative steer) is a positive steer in ours.
    back = vehicle_control_to_control(carla.VehicleControl(throttle=0.0, steer=-0.25, brake=0.5), 70.0, limits)
    assert back.steer == pytest.approx(np.radians(17.5)) and back.accel == pytest.approx(-4.0)
    with pytest.raises(ValueError, match="max_steer"):
        control_to_throttle_steer_brake(Control(), 0.0)


def test_max_steer_from_physics_control():
    class _Vehicle:
        def get_physics_control(self):
            wheel = carla.WheelPhysicsControl()
            wheel.max_steer_angle = 48.0
            return type("P", (), {"wheels": [wheel]})()

    assert max_steer_deg(_Vehicle()) == 48.0
    assert max_steer_deg(None) == DEFAULT_MAX_STEER_DEG == 70.0


@pytest.mark.parametrize("type_id, attrs, expected", [
    ("vehicle.tesla.model3", {"number_of_wheels": "4", "base_type": "car"}, "car"),
    ("vehicle.diamondback.century", {"number_of_wheels": "2", "base_type": "bicycle"}, "cyclist"),
    ("vehicle.yamaha.yzf", {"number_of_wheels": "2"}, "cyclist"),
    ("vehicle.mitsubishi.fusorosa", {"number_of_wheels": "4", "base_type": "bus"}, "bus"),
    ("vehicle.carlamotors.carlacola", {"number_of_wheels": "4", "base_type": "truck"}, "truck"),
    ("vehicle.mercedes.sprinter", {"number_of_wheels": "4", "base_type": "van"}, "van"),
    ("vehicle.carlamotors.firetruck", {"number_of_wheels": "4"}, "truck"),
    ("walker.pedestrian.0001", {}, "pedestrian"),
])
def test_object_class(type_id, attrs, expected):
    assert OBJECT_CLASSES[object_class(type_id, attrs)] == expected


def test_non_objects_and_collision_kinds():
    assert object_class("sensor.lidar.ray_cast") is None
    assert object_class("traffic.traffic_light") is None
    assert collision_kind("walker.pedestrian.0003") is EventKind.COLLISION_PEDESTRIAN
    assert collision_kind("vehicle.audi.tt") is EventKind.COLLISION_VEHICLE
    assert collision_kind("static.prop.streetbarrier") is EventKind.COLLISION_STATIC
