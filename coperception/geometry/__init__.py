"""Geometry: poses, rigid transforms and 3D box math.

One convention inside the library (formats convert at the edge):

* frames are **right-handed**, x forward, y left, z up; units are metres and radians;
* a pose is a 4x4 homogeneous matrix named by its direction, ``world_from_lidar`` maps
  points in the LiDAR frame to the world frame (``p_world = T @ p_lidar``);
* a box is a row ``[x, y, z, l, w, h, yaw]``: centre (z is the box centre, not its bottom),
  full length along the heading, full width, full height, heading yaw about +z measured
  counter-clockwise from +x, in ``[-pi, pi)`` after normalisation.
"""

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
from coperception.geometry.pose import (
    carla_pose_to_matrix,
    left_to_right_handed,
    matrix_to_carla_pose,
    opv2v_pose_to_world_from_lidar,
    relative_transform,
    right_to_left_handed,
    se3_from_xyz_rpy,
    transform_points,
    world_from_lidar_to_opv2v_pose,
    wrap_angle,
    yaw_of,
)

_IOU_NAMES = ("bev_iou", "bev_iou_aligned", "quad_iou", "quad_iou_aligned", "standup_iou")


def __getattr__(name: str):
    """The IoU kernels are torch code: imported on first use so numpy-only users start fast."""
    if name in _IOU_NAMES:
        from coperception.geometry import iou
        return getattr(iou, name)
    raise AttributeError(f"module 'coperception.geometry' has no attribute {name!r}")

__all__ = [
    "carla_pose_to_matrix",
    "matrix_to_carla_pose",
    "left_to_right_handed",
    "right_to_left_handed",
    "opv2v_pose_to_world_from_lidar",
    "world_from_lidar_to_opv2v_pose",
    "relative_transform",
    "transform_points",
    "yaw_of",
    "wrap_angle",
    "se3_from_xyz_rpy",
    "validate_boxes",
    "validate_corners",
    "boxes_to_corners",
    "boxes_to_bev_corners",
    "corners_to_boxes",
    "transform_boxes",
    "boxes_in_range_mask",
    "boxes_to_standup",
    "from_opencood_center",
    "to_opencood_center",
    "bev_iou",
    "bev_iou_aligned",
    "quad_iou",
    "quad_iou_aligned",
    "standup_iou",
]
