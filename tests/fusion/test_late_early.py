"""Early fusion (points) and late fusion (boxes + NMS) into the ego frame."""

import math

import numpy as np
import pytest
import torch

from coperception.fusion import LateFusion, fuse_detections, fuse_points
from coperception.geometry.boxes import boxes_to_corners
from coperception.geometry.pose import relative_transform, se3_from_xyz_rpy, transform_points
from coperception.structures.records import Detections

WORLD_FROM_EGO = se3_from_xyz_rpy(100.0, -20.0, 1.8, yaw=0.3)
WORLD_FROM_B = se3_from_xyz_rpy(115.0, -5.0, 2.1, roll=0.01, pitch=-0.02, yaw=2.0)
WORLD_FROM_C = se3_from_xyz_rpy(80.0, -30.0, 5.0, yaw=-1.2)
EGO_FROM = np.stack([relative_transform(w, WORLD_FROM_EGO) for w in (WORLD_FROM_EGO, WORLD_FROM_B, WORLD_FROM_C)])


def _clouds(rng):
    return [np.concatenate([rng.uniform(-50, 50, (n, 3)), rng.uniform(0, 1, (n, 1))], 1).astype(np.float32)
            for n in (50, 0, 30)]


def test_early_fusion_numpy_equals_per_agent_transform():
    clouds = _clouds(np.random.default_rng(0))
    fused = fuse_points(clouds, EGO_FROM)
    expected = np.concatenate([transform_points(t, c) for t, c in zip(EGO_FROM, clouds)])
    assert fused.dtype == np.float32 and fused.shape == (80, 4)
    np.testing.assert_allclose(fused, expected, atol=1e-4)
    np.testing.assert_array_equal(fused[:, 3], np.concatenate([c[:, 3] for c in clouds]))


def test_early_fusion_torch_matches_numpy_and_puts_one_world_point_in_one_place():
    clouds = _clouds(np.random.default_rng(1))
    fused = fuse_points([torch.from_numpy(c) for c in clouds], torch.from_numpy(EGO_FROM))
    assert isinstance(fused, torch.Tensor) and fused.dtype == torch.float32
    np.testing.assert_allclose(fused.numpy(), fuse_points(clouds, EGO_FROM), atol=1e-4)
    # One world point seen by agents B and C lands on the same ego point.
    world = np.array([[105.0, -12.0, 0.5, 1.0]])
    seen = [transform_points(np.linalg.inv(w), world).astype(np.float32) for w in (WORLD_FROM_B, WORLD_FROM_C)]
    both = fuse_points(seen, EGO_FROM[1:])
    np.testing.assert_allclose(both[0], both[1], atol=1e-4)
    np.testing.assert_allclose(both[0, :3], transform_points(np.linalg.inv(WORLD_FROM_EGO), world)[0, :3], atol=1e-4)


def test_early_fusion_rejects_mismatched_inputs():
    clouds = _clouds(np.random.default_rng(2))
    with pytest.raises(ValueError, match="ego_from_agent"):
        fuse_points(clouds, EGO_FROM[:2])
    with pytest.raises(ValueError, match="same F"):
        fuse_points([clouds[0], clouds[2][:, :3]], EGO_FROM[:2])


def _in_frame(frame_from_world, world_boxes):
    """Boxes given in the world, expressed in another frame via corners (independent of transform_boxes)."""
    corners = boxes_to_corners(world_boxes)
    local = np.stack([transform_points(frame_from_world, c) for c in corners])
    centre = local.mean(1)
    front = local[:, [0, 1, 4, 5]].mean(1)  # OpenCOOD corners 0, 1, 4, 5 lie on the +x (front) face
    yaw = np.arctan2(front[:, 1] - centre[:, 1], front[:, 0] - centre[:, 0])
    return np.concatenate([centre, world_boxes[:, 3:6], yaw[:, None]], 1)


WORLD_CARS = np.array([[108.0, -14.0, 0.8, 4.5, 2.0, 1.6, 0.5],    # seen by the ego and by B
                       [122.0, 2.0, 0.9, 4.2, 1.9, 1.5, -2.9]])   # seen by B only


def test_late_fusion_merges_a_shared_car_and_adds_a_car_only_a_collaborator_sees():
    ego_from_world = np.linalg.inv(WORLD_FROM_EGO)
    b_from_world = np.linalg.inv(WORLD_FROM_B)
    ego = Detections(_in_frame(ego_from_world, WORLD_CARS[:1]), [0.9])
    # B localises the shared car 10 cm off and is less sure of it.
    b_boxes = _in_frame(b_from_world, WORLD_CARS)
    b_boxes[0, 0] += 0.1
    b = Detections(b_boxes, [0.6, 0.8])
    fused = fuse_detections([ego, b], EGO_FROM[:2])
    assert len(fused) == 2
    np.testing.assert_allclose(fused.scores, [0.9, 0.8])
    truth = _in_frame(ego_from_world, WORLD_CARS)
    # The helper recovers a world box exactly (a check of the test's own geometry).
    np.testing.assert_allclose(_in_frame(np.eye(4), WORLD_CARS), WORLD_CARS, atol=1e-9)
    np.testing.assert_allclose(fused.boxes[0], truth[0], atol=1e-6)  # the ego's own box won
    np.testing.assert_allclose(boxes_to_corners(fused.boxes[1:]), boxes_to_corners(truth[1:]), atol=0.05)


def test_late_fusion_nms_is_class_aware_by_default_and_filters_range():
    box = np.array([[10.0, 0.0, 0.0, 4.0, 2.0, 1.5, 0.0]])
    a = Detections(box, [0.9], [0])
    b = Detections(box + [0.2, 0, 0, 0, 0, 0, 0], [0.7], [1])
    ident = np.stack([np.eye(4)] * 2)
    assert len(fuse_detections([a, b], ident)) == 2
    agnostic = fuse_detections([a, b], ident, class_aware=False)
    assert len(agnostic) == 1 and agnostic.labels.tolist() == [0]
    same = Detections(box + [0.2, 0, 0, 0, 0, 0, 0], [0.7], [0])
    assert len(fuse_detections([a, same], ident)) == 1
    far = Detections(np.array([[60.0, 0.0, 0.0, 4.0, 2.0, 1.5, 0.0]]), [0.5])
    kept = LateFusion(lidar_range=(-50.0, -40.0, -3.0, 50.0, 40.0, 1.0))([a, far], ident)
    assert kept.scores.tolist() == [0.9]


def test_late_fusion_handles_no_boxes_and_rejects_bad_settings():
    empty = Detections(np.zeros((0, 7)), np.zeros(0))
    out = fuse_detections([empty, empty], np.stack([np.eye(4)] * 2))
    assert len(out) == 0 and out.boxes.shape == (0, 7)
    with pytest.raises(ValueError, match="ego_from_agent"):
        fuse_detections([empty], np.stack([np.eye(4)] * 2))
    from coperception.errors import ConfigError
    with pytest.raises(ConfigError, match="iou_threshold"):
        LateFusion(iou_threshold=1.5)


def test_late_fusion_yaw_follows_the_sender_heading():
    # A car straight ahead of an agent that faces +y in the ego frame points along +y for the ego.
    ego_from_b = se3_from_xyz_rpy(5.0, 0.0, 0.0, yaw=math.pi / 2)
    seen = Detections(np.array([[10.0, 0.0, 0.0, 4.0, 2.0, 1.5, 0.0]]), [0.8])
    fused = fuse_detections([seen], ego_from_b[None])
    np.testing.assert_allclose(fused.boxes[0, [0, 1, 6]], [5.0, 10.0, math.pi / 2], atol=1e-9)
