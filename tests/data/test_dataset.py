"""CooperativeDataset: frames, ground truth, agent choice, pose noise, augmentation, bad frames."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch

from coperception.data.augment import AugmentConfig, Augmentation
from coperception.data.dataset import CooperativeDataset
from coperception.data.formats.memory import MemoryReader
from coperception.data.noise import PoseNoise, perturb_poses
from coperception.structures.records import AgentKind, AgentObservation, Frame, ObjectSet
from coperception.errors import ConfigError, FormatError
from coperception.geometry.boxes import boxes_to_corners
from coperception.geometry.grid import BEVGrid
from coperception.geometry.pose import se3_from_xyz_rpy

GRID = BEVGrid((-40.0, -40.0, -3.0, 40.0, 40.0, 1.0), (0.4, 0.4, 4.0))
MARK = 0.777  # intensity of the marker point
POSES = {  # agent id -> (x, y, yaw) in the world
    "ego": (10.0, 5.0, math.radians(30)),
    "b": (30.0, -4.0, math.radians(-60)),
    "far": (200.0, 0.0, 0.0),
    "rsu": (0.0, 20.0, math.radians(90)),
}
# A world point near both ego and b, and world boxes: [x, y, z, l, w, h, yaw]
MARK_WORLD = np.array([22.0, 1.0, -0.5])
WORLD_BOXES = np.array([
    [22.0, 1.0, -0.5, 4.0, 2.0, 1.5, 0.3],     # at the marker, seen by b
    [12.0, 9.0, 0.0, 4.5, 1.8, 1.6, -1.0],     # seen by ego
    [90.0, 5.0, 0.0, 4.0, 2.0, 1.5, 0.0],      # beyond the ego's grid
    [205.0, 3.0, 0.0, 4.0, 2.0, 1.5, 0.0],     # only the far agent sees it
])


def _pose(agent):
    x, y, yaw = POSES[agent]
    return se3_from_xyz_rpy(x, y, 0.0, yaw=yaw)


def _observation(agent: str, rng) -> AgentObservation:
    pose = _pose(agent)
    pts = rng.uniform(-30, 30, size=(200, 4)).astype(np.float32)
    pts[:, 2] = rng.uniform(-2.5, 0.5, 200)
    pts[:, 3] = rng.uniform(0, 0.5, 200)
    if agent == "b":  # b sees the marker
        local = np.linalg.inv(pose) @ np.append(MARK_WORLD, 1.0)
        pts[0] = [*local[:3], MARK]
    kind = AgentKind.INFRASTRUCTURE if agent == "rsu" else AgentKind.VEHICLE
    return AgentObservation(agent, kind, pose, pts)


def make_frame(timestamp: int = 0, agents=("ego", "b", "far", "rsu"), with_visibility=True) -> Frame:
    rng = np.random.default_rng(timestamp)
    obs = {a: _observation(a, rng) for a in agents}
    objects = ObjectSet(WORLD_BOXES, ids=[11, 12, 13, 14], classes=[0, 1, 0, 2])
    vis = {}
    if with_visibility:
        vis = {a: np.zeros(4, np.int32) for a in agents}
        vis["b"][0] = 30
        vis["ego"][1:3] = 12
        if "far" in vis:
            vis["far"][3] = 9
    return Frame("scene", timestamp, "ego", obs, objects, vis)


class ListReader(MemoryReader):
    """In-memory reader; ``bad`` keys raise FormatError like a corrupt file."""

    def __init__(self, frames, bad=()):
        super().__init__(frames)
        self.bad = set(bad)

    def read(self, key):
        if key in self.bad:
            raise FormatError(f"scene/{key[1]:06d}.pcd: truncated DATA section")
        return super().read(key)


def _marker(cloud: torch.Tensor) -> torch.Tensor:
    """Rows of a (P, 4) cloud whose intensity is the marker's."""
    return cloud[(cloud[:, 3] - MARK).abs() < 1e-6]


def _ego_frame(world_xyz):
    return (np.linalg.inv(_pose("ego")) @ np.append(world_xyz, 1.0))[:3]


def _dataset(fusion="intermediate", frames=None, **kw):
    """These tests check each collaborator's cloud in its own LiDAR frame (``agent_frame="own"``)
    unless they say otherwise; the default frame, ``ego_heading``, has tests of its own."""
    kw.setdefault("agent_frame", "own")
    return CooperativeDataset(ListReader(frames or [make_frame()]), GRID, fusion=fusion, self_hit_box=None, **kw)


def test_intermediate_keeps_own_frames_and_transforms_are_right():
    s = _dataset("intermediate", return_points=True)[0]
    assert s.agent_ids == ("ego", "b", "rsu")  # "far" is 190 m away
    b = s.agent_ids.index("b")
    mark = _marker(s.points[b])
    assert len(mark) == 1
    local = np.linalg.inv(_pose("b")) @ np.append(MARK_WORLD, 1)
    np.testing.assert_allclose(mark[0, :3].numpy(), local[:3], atol=1e-4)
    in_ego = s.ego_from_agent[b].double() @ torch.tensor([*mark[0, :3].tolist(), 1.0], dtype=torch.float64)
    np.testing.assert_allclose(in_ego[:3].numpy(), _ego_frame(MARK_WORLD), atol=1e-4)
    np.testing.assert_allclose(s.ego_from_agent[0].numpy(), np.eye(4), atol=1e-6)
    assert torch.equal(s.ego_from_agent, s.ego_from_agent_clean)
    assert s.is_infrastructure.tolist() == [False, False, True]
    assert s.cells is None and s.agent_gt is None, "voxelised in the collate function by default"


def test_early_fuses_all_points_in_ego_frame():
    s = _dataset("early", return_points=True, voxelize_in="sample")[0]
    assert s.num_clouds == 1 and s.cells.num_agents == 1 and len(s.points) == 1
    cloud = s.points[0]
    assert len(cloud) == 3 * 200
    mark = _marker(cloud)
    np.testing.assert_allclose(mark[0, :3].numpy(), _ego_frame(MARK_WORLD), atol=1e-4)
    assert len(mark) == 1 and len(_marker(s.cells.points.reshape(-1, 4))) == 1


def test_gt_in_ego_frame_filtered_by_range_and_visibility():
    s = _dataset("intermediate")[0]
    assert s.gt.ids.tolist() == [11, 12]  # 13 outside the grid, 14 seen only by the far agent
    ego_yaw = POSES["ego"][2]
    for row, world in zip(s.gt.boxes.numpy(), WORLD_BOXES[:2]):
        np.testing.assert_allclose(row[:3], _ego_frame(world[:3]), atol=1e-4)
        np.testing.assert_allclose(row[3:6], world[3:6], atol=1e-6)
        assert math.isclose(math.remainder(row[6] - (world[6] - ego_yaw), 2 * math.pi), 0, abs_tol=1e-5)
    assert s.gt.classes.tolist() == [0, 1]
    everything = _dataset("intermediate", gt_visible_only=False, comm_range=None)[0]
    assert everything.gt.ids.tolist() == [11, 12]  # 14 is out of range, not out of sight


def test_late_gives_each_agent_its_own_ground_truth():
    s = _dataset("late", frames=[make_frame(with_visibility=False)])[0]
    assert len(s.agent_gt) == s.num_agents
    b = s.agent_ids.index("b")
    ids_b = s.agent_gt[b].ids.tolist()
    assert 11 in ids_b
    row = s.agent_gt[b].boxes[ids_b.index(11)].numpy()
    local = np.linalg.inv(_pose("b")) @ np.append(WORLD_BOXES[0, :3], 1)
    np.testing.assert_allclose(row[:3], local[:3], atol=1e-4)
    with_vis = _dataset("late")[0]
    assert with_vis.agent_gt[0].ids.tolist() == [12]  # 13 is seen but out of the ego's grid
    assert with_vis.agent_gt[b].ids.tolist() == [11]


@pytest.mark.parametrize("frame", ["ego_heading", "ego"])
def test_agent_frame_turns_collaborator_clouds_and_keeps_everything_consistent(frame):
    own = _dataset("late", return_points=True)[0]
    s = _dataset("late", return_points=True, agent_frame=frame)[0]
    b = s.agent_ids.index("b")
    mark = _marker(s.points[b])[0, :3].double()
    # The marker, moved by the new ego_from_agent, still lands where it is in the ego frame.
    in_ego = s.ego_from_agent[b].double() @ torch.cat([mark, torch.ones(1, dtype=torch.float64)])
    np.testing.assert_allclose(in_ego[:3].numpy(), _ego_frame(MARK_WORLD), atol=1e-4)
    rel = s.ego_from_agent[b].double().numpy()
    np.testing.assert_allclose(rel[:3, :3], np.eye(3), atol=1e-6)  # no rotation left to warp
    if frame == "ego_heading":  # same origin, the ego's axes
        np.testing.assert_allclose(rel[:3, 3], own.ego_from_agent[b, :3, 3].numpy(), atol=1e-4)
        np.testing.assert_allclose(mark.numpy(), rel[:3, :3].T @ (_ego_frame(MARK_WORLD) - rel[:3, 3]), atol=1e-4)
    else:  # OpenCOOD's proj_first: the cloud is in the ego frame
        np.testing.assert_allclose(rel, np.eye(4), atol=1e-6)
        np.testing.assert_allclose(mark.numpy(), _ego_frame(MARK_WORLD), atol=1e-4)
    # The agent's own ground truth moved with its cloud: box 11 sits on the marker, heading in the ego's axes.
    row = s.agent_gt[b].boxes[s.agent_gt[b].ids.tolist().index(11)].double().numpy()
    np.testing.assert_allclose(row[:3], mark.numpy(), atol=1e-4)
    ego_yaw = POSES["ego"][2]
    assert math.isclose(math.remainder(row[6] - (WORLD_BOXES[0, 6] - ego_yaw), 2 * math.pi), 0, abs_tol=1e-5)
    # The ego itself never moves; the world poses announce the new frames.
    assert torch.equal(s.points[0], own.points[0]) and torch.equal(s.ego_from_agent[0], own.ego_from_agent[0])
    np.testing.assert_allclose(s.world_from_agent[b].numpy(), _pose("ego") @ rel, atol=1e-4)
    assert s.gt.ids.tolist() == own.gt.ids.tolist()
    np.testing.assert_allclose(s.gt.boxes.numpy(), own.gt.boxes.numpy(), atol=1e-6)


def test_agent_frame_uses_the_announced_pose_and_refuses_unknown_frames():
    noise = PoseNoise(pos_std=0.5, rot_std=2.0, seed=3)
    s = _dataset("intermediate", pose_noise=noise, agent_frame="ego_heading")[0]
    b = s.agent_ids.index("b")
    # The sender turned its cloud by its announced (noisy) relative yaw: no yaw is left in the
    # announced transform, and the clean one holds exactly the noise.
    noisy, clean = s.ego_from_agent[b].double().numpy(), s.ego_from_agent_clean[b].double().numpy()
    assert abs(math.atan2(noisy[1, 0], noisy[0, 0])) < 1e-6
    assert 1e-4 < abs(math.atan2(clean[1, 0], clean[0, 0])) < math.radians(10)
    with pytest.raises(ConfigError, match="agent_frame"):
        _dataset("intermediate", agent_frame="sideways")


def test_comm_range_and_max_agents():
    assert _dataset(comm_range=None)[0].agent_ids == ("ego", "b", "far", "rsu")
    assert _dataset(comm_range=None, max_agents=2)[0].agent_ids == ("ego", "b")
    assert _dataset(comm_range=20.0)[0].agent_ids == ("ego", "rsu")  # b is 22.2 m away, rsu 18 m
    assert _dataset(max_agents=1)[0].agent_ids == ("ego",)
    with pytest.raises(ConfigError):
        _dataset(max_agents=0)


def test_rsu_ego_ground_truth_ignores_z():
    frame = make_frame(with_visibility=False)
    frame.ego_id = "rsu"
    rsu = frame.observations["rsu"]
    rsu.world_from_lidar = rsu.world_from_lidar @ se3_from_xyz_rpy(0, 0, 6.0)  # mounted 6 m up
    s = CooperativeDataset(ListReader([frame]), GRID, self_hit_box=None)[0]
    assert s.agent_ids[0] == "rsu" and 12 in s.gt.ids.tolist()


def test_pose_noise_seeded_per_frame_and_only_on_others():
    noise = PoseNoise(pos_std=0.5, rot_std=2.0, seed=3)
    frames = [make_frame(0), make_frame(1)]
    a = _dataset(frames=frames, pose_noise=noise)
    b = _dataset(frames=frames, pose_noise=noise)
    s0, again = a[0], b[0]
    assert torch.equal(s0.ego_from_agent, again.ego_from_agent)
    np.testing.assert_allclose(s0.ego_from_agent[0].numpy(), np.eye(4), atol=1e-6)
    assert not torch.allclose(s0.ego_from_agent[1:], s0.ego_from_agent_clean[1:], atol=1e-3)
    assert torch.equal(s0.ego_from_agent_clean, _dataset(frames=frames)[0].ego_from_agent_clean)
    assert not torch.allclose(a[1].ego_from_agent[1:], s0.ego_from_agent[1:], atol=1e-3)
    other_seed = _dataset(frames=frames, pose_noise=PoseNoise(0.5, 2.0, seed=4))[0]
    assert not torch.allclose(other_seed.ego_from_agent[1:], s0.ego_from_agent[1:], atol=1e-3)
    assert torch.equal(s0.gt.boxes, _dataset(frames=frames)[0].gt.boxes), "GT uses clean poses"


def test_pose_noise_statistics():
    noise = PoseNoise(pos_std=0.3, rot_std=1.5, pos_mean=0.1)
    delta = noise.sample(4001, np.random.default_rng(0))
    assert (delta[0] == 0).all() and (delta[:, 2] == 0).all()
    assert np.mean(delta[1:, 0]) == pytest.approx(0.1, abs=0.02)
    assert np.std(delta[1:, :2]) == pytest.approx(0.3, rel=0.05)
    assert np.degrees(np.std(delta[1:, 3])) == pytest.approx(1.5, rel=0.05)
    poses = perturb_poses(np.stack([_pose("b")] * 2), np.array([[0, 0, 0, 0], [1.0, -2.0, 0, 0.1]]))
    np.testing.assert_allclose(poses[0], _pose("b"))
    np.testing.assert_allclose(poses[1, :2, 3], np.array(POSES["b"][:2]) + [1.0, -2.0])
    assert math.atan2(poses[1, 1, 0], poses[1, 0, 0]) == pytest.approx(POSES["b"][2] + 0.1)
    with pytest.raises(ConfigError):
        PoseNoise(pos_std=-1.0)


def test_skip_logs_and_records_bad_frames(caplog):
    frames = [make_frame(t) for t in range(3)]
    skipping = CooperativeDataset(ListReader(frames, bad={("scene", 1)}), GRID, on_error="skip")
    with caplog.at_level(logging.WARNING, logger="coperception.data.dataset"):
        s = skipping[1]
    assert s.key == ("scene", 2)
    assert skipping.skipped == [("scene", 1)]
    assert skipping[1].key == ("scene", 2) and skipping.skipped == [("scene", 1)], "a bad frame is listed once"
    assert "scene/1" in caplog.text and "truncated" in caplog.text
    raising = CooperativeDataset(ListReader(frames, bad={("scene", 1)}), GRID)
    assert raising[0].key == ("scene", 0)
    with pytest.raises(FormatError, match="truncated"):
        raising[1]
    all_bad = CooperativeDataset(ListReader(frames[:1], bad={("scene", 0)}), GRID, on_error="skip")
    with pytest.raises(FormatError, match="no readable frame"):
        all_bad[0]


def test_augmentation_keeps_points_boxes_and_poses_consistent():
    torch.manual_seed(0)
    ds = _dataset("intermediate", return_points=True, train=True,
                  augment=AugmentConfig(flip_prob=0.5, rot_range=(-1.0, 1.0), scale_range=(0.9, 1.1)))
    scaled = set()
    for _ in range(6):
        s = ds[0]
        b = s.agent_ids.index("b")
        mark = _marker(s.points[b])[0]
        in_ego = s.ego_from_agent[b].double() @ torch.tensor([*mark[:3].tolist(), 1.0], dtype=torch.float64)
        box = s.gt.boxes[s.gt.ids.tolist().index(11)]  # centred on the marker
        np.testing.assert_allclose(in_ego[:3].numpy(), box[:3].numpy(), atol=1e-3)
        rot = s.ego_from_agent[:, :3, :3].double()
        eye = np.broadcast_to(np.eye(3), rot.shape)
        np.testing.assert_allclose((rot @ rot.transpose(1, 2)).numpy(), eye, atol=1e-5)
        assert torch.linalg.det(rot).numpy() == pytest.approx(1.0, abs=1e-5)
        scaled.add(round(float(box[3]), 3) != 4.0)
    assert scaled == {True}, "scale must change box sizes"


@pytest.mark.parametrize("flip", [False, True])
def test_augmentation_boxes_match_transformed_corners(flip):
    aug = Augmentation(flip=flip, yaw=0.7, scale=1.1)
    boxes = np.array([[3.0, -2.0, 0.5, 4.0, 2.0, 1.5, 0.4], [-8.0, 6.0, -1.0, 1.0, 0.6, 1.7, -2.9]])
    corners = boxes_to_corners(boxes) @ aug.matrix[:3, :3].T
    got = boxes_to_corners(aug.apply_boxes(boxes))
    for want_c, got_c in zip(corners, got):
        np.testing.assert_allclose(np.sort(got_c, axis=0), np.sort(want_c, axis=0), atol=1e-9)
    pts = torch.tensor([[1.0, 2.0, 3.0, 0.5]], dtype=torch.float64)
    np.testing.assert_allclose(aug.apply_points(pts)[0, :3].numpy(), aug.matrix[:3, :3] @ [1.0, 2.0, 3.0])


def test_voxel_modes_and_bad_config():
    assert _dataset(voxelization="voxels", voxelize_in="sample")[0].cells.coords.shape[1] == 4
    s = _dataset(voxelization="none", voxelize_in="sample")[0]
    assert s.cells is None and len(s.points) == 3
    bad = ({"fusion": "mid"}, {"voxelization": "bev"}, {"on_error": "ignore"}, {"comm_range": 0},
           {"voxelize_in": "worker"})
    for kw in bad:
        with pytest.raises(ConfigError):
            CooperativeDataset(ListReader([make_frame()]), GRID, **kw)


def test_self_hits_removed():
    frame = make_frame()
    frame.observations["ego"].points[:5, :3] = [0.5, 0.2, -1.0]
    kept = CooperativeDataset(ListReader([frame]), GRID, return_points=True)[0].points[0]
    assert len(kept) <= 195 and not ((kept[:, 0].abs() < 0.6) & (kept[:, 1].abs() < 0.3)).any()


def test_reads_an_opv2v_split_written_to_disk(tmp_path):
    """End to end through the OPV2V writer and reader (agent ids are ints on disk, RSUs negative)."""
    from coperception.data.formats.opv2v import OPV2VReader, OPV2VWriter

    frame = make_frame()
    renamed = {"ego": "10", "b": "20", "far": "30", "rsu": "-1"}
    obs = {}
    for old, new in renamed.items():
        o = frame.observations[old]
        obs[new] = AgentObservation(new, o.kind, o.world_from_lidar, o.points)
    vis = {renamed[k]: v for k, v in frame.visibility.items()}
    with OPV2VWriter(tmp_path, "test", exact_intensity=True, write_images=False) as writer:
        writer.write("scene", Frame("scene", 7, "10", obs, frame.objects, vis))
    ds = CooperativeDataset(OPV2VReader(tmp_path, "test"), GRID, self_hit_box=None, return_points=True)
    s = ds[0]
    assert s.key == ("scene", 7) and s.agent_ids == ("10", "20", "-1")
    assert s.is_infrastructure.tolist() == [False, False, True]
    assert sorted(s.gt.ids.tolist()) == [11, 12]
    b = s.agent_ids.index("20")
    mark = _marker(s.points[b])
    in_ego = s.ego_from_agent[b].double() @ torch.tensor([*mark[0, :3].tolist(), 1.0], dtype=torch.float64)
    np.testing.assert_allclose(in_ego[:3].numpy(), _ego_frame(MARK_WORLD), atol=1e-3)
    batch = ds.collate_fn(max_objects=100)([s])
    assert batch.cells.num_agents == 3 and batch.gt_boxes.shape == (1, 100, 7)


def test_memory_reader_serves_frames_in_order_and_names_bad_keys():
    frames = [make_frame(timestamp=t) for t in (3, 1)]
    reader = MemoryReader(frames)
    assert reader.keys() == [("scene", 3), ("scene", 1)] and len(reader) == 2
    assert reader[1] is frames[1]
    with pytest.raises(FormatError, match=r"no frame \('scene', 7\)"):
        reader.read(("scene", 7))
    with pytest.raises(FormatError, match="two frames share scenario 'scene', timestamp 3"):
        MemoryReader([frames[0], frames[0]])
