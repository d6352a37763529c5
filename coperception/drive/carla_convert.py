"""Conversions between the CARLA 0.9.16 Python API and the library convention.

CARLA (Unreal) is **left-handed**: x forward, y right, z up, metres, rotations in degrees with
yaw clockwise seen from above. The library is right-handed (y left), radians, yaw
counter-clockwise. Mirroring through the x-z plane (``F = diag(1, -1, 1)``) maps one to the
other. CARLA rotates ``R = Rz(yaw) Ry(-pitch) Rx(-roll)`` (LibCarla ``Rotation::RotateVector``:
positive pitch lifts the nose, positive roll lowers the right side); conjugating by ``F``
negates the off-diagonal entries of Rz and Rx and keeps Ry, so the library's
``Rz(yaw') Ry(pitch') Rx(roll')`` has::

    x' = x,  y' = -y,  z' = z,  yaw' = -radians(yaw),  pitch' = -radians(pitch),  roll' = radians(roll)

This is the same mirror as :func:`coperception.geometry.pose.left_to_right_handed` applied to
OPV2V's (CARLA-recorded) poses. Readers accept any object with CARLA's attribute names, so they
work without the ``carla`` package; constructors of CARLA objects import it on first use.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from coperception.drive.dynamics import VehicleLimits
from coperception.drive.records import Control, EventKind
from coperception.errors import ConfigError
from coperception.geometry.pose import se3_from_xyz_rpy
from coperception.structures.records import OBJECT_CLASSES

#: CARLA's default ``WheelPhysicsControl.max_steer_angle`` (degrees) of front wheels.
DEFAULT_MAX_STEER_DEG = 70.0

#: Actuator limits the control maps use when none are given (the kinematic model's defaults).
DEFAULT_LIMITS = VehicleLimits()

# OpenCV camera axes (x right, y down, z forward) expressed in the library's sensor axes
# (x forward, y left, z up); columns are the OpenCV axes.
_SENSOR_FROM_OPENCV = np.array([[0.0, 0.0, 1.0, 0.0],
                                [-1.0, 0.0, 0.0, 0.0],
                                [0.0, -1.0, 0.0, 0.0],
                                [0.0, 0.0, 0.0, 1.0]])


def import_carla() -> Any:
    """The ``carla`` client module, or a ConfigError saying how to install it."""
    try:
        import carla  # optional dependency: imported only when a CARLA object is built
    except ImportError as exc:
        raise ConfigError("the CARLA backend needs the CARLA 0.9.16 Python client: "
                          "pip install -e .[carla]  (or pip install carla==0.9.16)") from exc
    return carla


# --- points and poses -------------------------------------------------------------------------

def location_to_xyz(location: Any) -> np.ndarray:
    """CARLA ``Location``/``Vector3D`` -> (3,) library vector ``(x, -y, z)``."""
    return np.array([location.x, -location.y, location.z], dtype=np.float64)


def xyz_to_location(xyz: np.ndarray) -> Any:
    """(3,) library point -> ``carla.Location``."""
    carla = import_carla()
    x, y, z = (float(v) for v in np.asarray(xyz, dtype=np.float64).reshape(3))
    return carla.Location(x=x, y=-y, z=z)


def rotation_to_rpy(rotation: Any) -> tuple[float, float, float]:
    """CARLA ``Rotation`` (degrees) -> library ``(roll, pitch, yaw)`` in radians."""
    return (float(np.radians(rotation.roll)), float(-np.radians(rotation.pitch)),
            float(-np.radians(rotation.yaw)))


def transform_to_matrix(transform: Any) -> np.ndarray:
    """CARLA ``Transform`` -> (4, 4) library ``world_from_local``."""
    roll, pitch, yaw = rotation_to_rpy(transform.rotation)
    x, y, z = location_to_xyz(transform.location)
    return se3_from_xyz_rpy(x, y, z, roll=roll, pitch=pitch, yaw=yaw)


def matrix_to_transform(matrix: np.ndarray) -> Any:
    """(4, 4) library rigid transform -> ``carla.Transform`` (inverse of :func:`transform_to_matrix`).

    Near pitch = +-90 deg roll and yaw are not unique; the transform returned still rotates the
    same way (roll is folded into yaw there).
    """
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape != (4, 4) or not np.isfinite(m).all():
        raise ValueError(f"matrix must be a finite (4, 4) transform, got shape {m.shape}")
    r = m[:3, :3]
    pitch = np.arctan2(-r[2, 0], np.hypot(r[2, 1], r[2, 2]))
    if np.hypot(r[2, 1], r[2, 2]) > 1e-9:
        yaw, roll = np.arctan2(r[1, 0], r[0, 0]), np.arctan2(r[2, 1], r[2, 2])
    else:  # gimbal lock: put the whole heading into yaw
        yaw, roll = np.arctan2(-r[0, 1], r[1, 1]), 0.0
    carla = import_carla()
    rotation = carla.Rotation(pitch=float(-np.degrees(pitch)), yaw=float(-np.degrees(yaw)),
                              roll=float(np.degrees(roll)))
    return carla.Transform(xyz_to_location(m[:3, 3]), rotation)


def bounding_box_to_box(actor_transform: Any, bbox: Any) -> np.ndarray:
    """An actor's CARLA ``BoundingBox`` -> (7,) library box ``[x, y, z, l, w, h, yaw]`` (world).

    ``bbox.location`` (the box centre) and ``bbox.rotation`` are relative to the actor,
    ``bbox.extent`` holds half sizes. Pitch and roll of the actor are dropped (boxes are upright).
    """
    world_from_actor = transform_to_matrix(actor_transform)
    roll, pitch, yaw = rotation_to_rpy(bbox.rotation)
    actor_from_box = se3_from_xyz_rpy(*location_to_xyz(bbox.location), roll=roll, pitch=pitch, yaw=yaw)
    world_from_box = world_from_actor @ actor_from_box
    heading = float(np.arctan2(world_from_box[1, 0], world_from_box[0, 0]))
    e = bbox.extent
    return np.array([*world_from_box[:3, 3], 2.0 * e.x, 2.0 * e.y, 2.0 * e.z, heading])


# --- sensors ----------------------------------------------------------------------------------

def lidar_to_points(raw: np.ndarray) -> np.ndarray:
    """(N, 4) ``x, y, z, intensity`` in the CARLA sensor frame -> (N, 4) float32 library sensor frame."""
    pts = np.asarray(raw, dtype=np.float32)
    if pts.ndim != 2 or pts.shape[1] != 4:
        raise ValueError(f"raw LiDAR points must be (N, 4) x, y, z, intensity, got shape {pts.shape}")
    out = pts.copy()
    out[:, 1] = -out[:, 1]
    return out


def lidar_measurement_to_points(measurement: Any) -> np.ndarray:
    """A ``carla.LidarMeasurement`` -> (N, 4) float32 library sensor-frame points."""
    raw = np.frombuffer(measurement.raw_data, dtype=np.float32).reshape(-1, 4)
    return lidar_to_points(raw)


def camera_intrinsic(image_size_x: int, image_size_y: int, fov_deg: float) -> np.ndarray:
    """(3, 3) pinhole K of a CARLA camera: horizontal ``fov`` (deg), square pixels, centred."""
    if image_size_x <= 0 or image_size_y <= 0:
        raise ValueError(f"image size must be positive, got {image_size_x} x {image_size_y}")
    if not 0.0 < fov_deg < 180.0:
        raise ValueError(f"fov must be in (0, 180) degrees, got {fov_deg}")
    f = image_size_x / (2.0 * np.tan(np.radians(fov_deg) / 2.0))
    return np.array([[f, 0.0, image_size_x / 2.0], [0.0, f, image_size_y / 2.0], [0.0, 0.0, 1.0]])


def lidar_from_camera(lidar_transform: Any, camera_transform: Any) -> np.ndarray:
    """(4, 4) map from the OpenCV camera frame (x right, y down, z forward) to the library LiDAR
    frame, given both sensors' CARLA world transforms."""
    world_from_lidar = transform_to_matrix(lidar_transform)
    world_from_camera = transform_to_matrix(camera_transform)
    return np.linalg.solve(world_from_lidar, world_from_camera @ _SENSOR_FROM_OPENCV)


# --- controls ---------------------------------------------------------------------------------

def max_steer_deg(vehicle: Any | None) -> float:
    """Front-wheel steering limit (deg) of a CARLA vehicle, or CARLA's default 70 deg."""
    if vehicle is None:
        return DEFAULT_MAX_STEER_DEG
    return float(vehicle.get_physics_control().wheels[0].max_steer_angle)


def control_to_throttle_steer_brake(control: Control, max_steer: float = DEFAULT_MAX_STEER_DEG,
                                    limits: VehicleLimits = DEFAULT_LIMITS) -> tuple[float, float, float]:
    """Library ``Control`` -> CARLA ``(throttle, steer, brake)``.

    Linear maps: ``throttle = accel / max_accel``, ``brake = -accel / max_decel`` (each clipped
    to [0, 1], only one non-zero); ``steer = -degrees(steer) / max_steer`` clipped to [-1, 1]
    (CARLA's positive steer turns right, ours turns left).
    """
    if max_steer <= 0 or limits.max_accel <= 0 or limits.max_decel <= 0:
        raise ValueError(f"max_steer, max_accel and max_decel must be > 0, got "
                         f"{max_steer}, {limits.max_accel}, {limits.max_decel}")
    throttle = float(np.clip(control.accel / limits.max_accel, 0.0, 1.0))
    brake = float(np.clip(-control.accel / limits.max_decel, 0.0, 1.0))
    steer = float(np.clip(-np.degrees(control.steer) / max_steer, -1.0, 1.0))
    return throttle, steer, brake


def control_to_vehicle_control(control: Control, max_steer: float = DEFAULT_MAX_STEER_DEG,
                               limits: VehicleLimits = DEFAULT_LIMITS) -> Any:
    """Library ``Control`` -> ``carla.VehicleControl`` (see :func:`control_to_throttle_steer_brake`)."""
    carla = import_carla()
    throttle, steer, brake = control_to_throttle_steer_brake(control, max_steer, limits)
    return carla.VehicleControl(throttle=throttle, steer=steer, brake=brake)


def vehicle_control_to_control(vc: Any, max_steer: float = DEFAULT_MAX_STEER_DEG,
                               limits: VehicleLimits = DEFAULT_LIMITS) -> Control:
    """``carla.VehicleControl`` -> library ``Control`` (inverse of the linear maps above)."""
    accel = vc.throttle * limits.max_accel - vc.brake * limits.max_decel
    return Control(accel=float(accel), steer=float(np.radians(-vc.steer * max_steer)))


# --- actors -----------------------------------------------------------------------------------

_BASE_TYPES = {"car": "car", "van": "van", "truck": "truck", "bus": "bus",
               "motorcycle": "cyclist", "bicycle": "cyclist"}


def object_class(type_id: str, attributes: dict[str, str] | None = None) -> int | None:
    """Index into ``OBJECT_CLASSES`` of a CARLA actor, from its blueprint id and attributes.

    ``walker.*`` -> pedestrian; ``vehicle.*`` -> cyclist with 2 wheels, else the blueprint's
    ``base_type`` (car/van/truck/bus), else "bus"/"truck" in the id, else car; anything else
    (sensors, props, traffic lights) -> None.
    """
    attributes = attributes or {}
    if type_id.startswith("walker."):
        return OBJECT_CLASSES.index("pedestrian")
    if not type_id.startswith("vehicle."):
        return None
    if str(attributes.get("number_of_wheels", "4")) == "2":
        return OBJECT_CLASSES.index("cyclist")
    base = _BASE_TYPES.get(str(attributes.get("base_type", "")).lower())
    if base is None:
        base = next((name for name in ("bus", "truck") if name in type_id), "car")
    return OBJECT_CLASSES.index(base)


def collision_kind(other_type_id: str) -> EventKind:
    """The leaderboard collision criterion for hitting an actor with blueprint id ``other_type_id``."""
    if other_type_id.startswith("walker."):
        return EventKind.COLLISION_PEDESTRIAN
    if other_type_id.startswith("vehicle."):
        return EventKind.COLLISION_VEHICLE
    return EventKind.COLLISION_STATIC
