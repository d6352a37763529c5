"""Camera agents in CooperativeDataset / collate: modalities, images, calibrations, depth targets, errors."""

from __future__ import annotations

import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch

from coperception.config import merge
from coperception.data.augment import AugmentConfig
from coperception.data.cameras import ModalityConfig, depth_images
from coperception.data.dataset import CooperativeDataset
from coperception.data.formats.memory import MemoryReader
from coperception.data.formats.opv2v import OPV2VReader
from coperception.structures.camera import IMAGE_MEAN, IMAGE_STD, CameraBatch
from coperception.errors import ConfigError, FormatError
from coperception.geometry.grid import BEVGrid

GRID = BEVGrid((-25.6, -25.6, -3.0, 25.6, 25.6, 1.0), (0.4, 0.4, 4.0))
HW = (48, 64)  # images rendered at 96 x 128, resized by one half
SIM = {
    "town": {"block_size": 70.0, "outer_band": 15.0},
    "traffic": {"vehicles": 20, "cyclists": 0, "pedestrians": 0},
    "lidar": {"channels": 16, "firing_rate_hz": 9000.0},
    "camera": {"enabled": True, "count": 2, "width": 128, "height": 96, "fov_deg": 100.0},
}
HETERO = ModalityConfig(vehicle="camera", infrastructure="lidar", image_hw=HW)


def _sim_config(**extra):
    from coperception.sim.scenarios import load_sim_config
    return load_sim_config(preset="rsu_blind_corner", overrides=merge(SIM, extra))


@pytest.fixture(scope="module")
def camera_root(tmp_path_factory):
    """One scenario, two frames, an ego car and a road-side unit, two 96 x 128 cameras each."""
    from coperception.sim.generator import generate
    root = tmp_path_factory.mktemp("camera_opv2v")
    generate(root, _sim_config(), scenarios=1, frames=2, fmt="opv2v", seed=3, split_ratios=(1.0, 0.0, 0.0))
    return root


def _dataset(root, modality=HETERO, **kw):
    return CooperativeDataset(OPV2VReader(root, "train", load_cameras=True), GRID, modality=modality, **kw)


def test_batch_has_camera_tensors_in_agent_order(camera_root):
    ds = _dataset(camera_root)
    batch = ds.collate_fn()([ds[0], ds[1]])
    assert batch.agent_ids == [("1000", "-1"), ("1000", "-1")]  # ego car, then the road-side unit
    assert isinstance(batch.cameras, CameraBatch)
    assert batch.cameras.images.shape == (4, 2, 3, *HW) and batch.cameras.images.dtype == torch.float32
    assert batch.cameras.intrinsics.shape == (4, 2, 3, 3) and batch.cameras.lidar_from_camera.shape == (4, 2, 4, 4)
    assert batch.camera_depth.shape == (4, 2, *HW)
    # Vehicles use cameras, the road-side unit LiDAR: rows alternate like the LiDAR rows.
    assert batch.has_camera.tolist() == [True, False, True, False]
    assert batch.has_lidar.tolist() == [False, True, False, True]
    assert batch.cameras.camera_mask.tolist() == [[True, True], [False, False]] * 2
    assert batch.cameras.image_scale[0, 0].tolist() == [0.5, 0.5]
    # A camera-only agent brings no LiDAR cells; the LiDAR agent does.
    agents_with_cells = set(batch.cells.coords[:, 0].tolist())
    assert agents_with_cells == {1, 3} and batch.cells.num_agents == 4
    # Images are the PNGs resized and normalised; the RSU's rows are zero padding.
    from PIL import Image
    png = OPV2VReader(camera_root, "train", load_cameras=True)[0].ego.cameras[1].image
    small = np.asarray(Image.fromarray(png).resize(HW[::-1], Image.BILINEAR), np.float64)  # PIL: antialiased
    mean, std = np.array(IMAGE_MEAN), np.array(IMAGE_STD)
    got = batch.cameras.images[0, 1].permute(1, 2, 0).numpy() * std + mean
    np.testing.assert_allclose(got * 255.0, small, atol=1.01)
    assert batch.cameras.images[1].abs().sum() == 0 and batch.camera_depth[1].abs().sum() == 0
    moved = batch.to("cpu")
    assert isinstance(moved.cameras, CameraBatch) and moved.has_camera.tolist() == batch.has_camera.tolist()


def test_lidar_only_path_is_unchanged(camera_root):
    plain = CooperativeDataset(OPV2VReader(camera_root, "train"), GRID)
    lidar = _dataset(camera_root, ModalityConfig(vehicle="lidar", infrastructure="lidar", image_hw=HW))
    a, b = plain.collate_fn()([plain[0]]), lidar.collate_fn()([lidar[0]])
    assert a.cameras is None and b.cameras is None and b.has_lidar is None
    assert torch.equal(a.cells.coords, b.cells.coords) and torch.equal(a.cells.points, b.cells.points)


def test_depth_targets_match_the_rendered_depth():
    """LiDAR depth images agree with the simulator's ray-cast depth at the same pixels (resized K)."""
    from coperception.sim.simulation import Simulation
    frame = Simulation(_sim_config(lidar={"noise_std": 0.0, "dropout": 0.0}), seed=2).step()
    both = ModalityConfig(vehicle="lidar_camera", infrastructure="lidar_camera", image_hw=HW)
    ds = CooperativeDataset(MemoryReader([frame]), GRID, modality=both, self_hit_box=None)
    s = ds[0]
    for a, obs in enumerate(frame.observations.values()):  # the car, and the RSU in its virtual LiDAR frame
        for c, cam in enumerate(obs.cameras):
            depth = s.cameras.depth[a, c].numpy()
            hit = depth > 0
            assert hit.sum() > 100
            rendered = cam.depth[1::2, 1::2][hit]  # one rendered pixel of each 2 x 2 block
            ok = rendered > 0
            rel = np.abs(depth[hit][ok] - rendered[ok]) / rendered[ok]
            assert ok.mean() > 0.95 and np.median(rel) < 0.05  # measured: 0.5-2 %
    assert s.cameras.has_lidar.tolist() == [True, True] and s.cameras.has_camera.tolist() == [True, True]


def test_augmentation_moves_extrinsics_with_the_points(camera_root):
    both = ModalityConfig(vehicle="lidar_camera", infrastructure="lidar_camera", image_hw=HW)
    ds = _dataset(camera_root, both, train=True, augment=AugmentConfig(flip_prob=1.0), return_points=True)
    torch.manual_seed(5)
    s = ds[0]
    plain = _dataset(camera_root, both)[0]
    scale = torch.cat([s.cameras.image_scale, torch.ones(2, 2, 1)], dim=-1).unsqueeze(-1)
    for a in range(2):
        # Augmented points seen through augmented extrinsics give the depths of the clean sample.
        again = depth_images(s.points[a], (s.cameras.intrinsics * scale)[a], s.cameras.lidar_from_camera[a], HW)
        hit = plain.cameras.depth[a] > 0
        assert hit.sum() > 50
        # (float32 rounding moves a few points that sit on a pixel border into the neighbour)
        same = (again[hit] - plain.cameras.depth[a][hit]).abs() < 1e-3
        assert same.float().mean() > 0.98 and ((again > 0) == hit).float().mean() > 0.99
    assert not torch.allclose(s.cameras.lidar_from_camera, plain.cameras.lidar_from_camera)
    assert torch.linalg.det(s.cameras.lidar_from_camera[0, 0, :3, :3]) < 0  # flipped: a mirror


def test_random_assignment_is_seeded_and_stable():
    m = ModalityConfig(shares=(0.5, 0.5, 0.0), seed=1, image_hw=HW)
    from coperception.structures.records import AgentKind, AgentObservation
    agents = [AgentObservation(str(i), AgentKind.VEHICLE, np.eye(4), np.zeros((0, 4), np.float32)) for i in range(64)]
    lidar, camera = m.assign("scene_a", agents)
    assert (lidar ^ camera).all() and 16 < camera.sum() < 48  # one modality each, roughly half cameras
    again = m.assign("scene_a", agents)
    assert np.array_equal(again[1], camera)
    assert not np.array_equal(m.assign("scene_b", agents)[1], camera)
    assert not np.array_equal(replace(m, seed=2).assign("scene_a", agents)[1], camera)
    ego_fixed = replace(m, ego="lidar")
    assert ego_fixed.assign("scene_a", agents)[0][0] and not ego_fixed.assign("scene_a", agents)[1][0]
    with pytest.raises(ConfigError, match="shares"):
        ModalityConfig(shares=(0.0, 0.0, 0.0))
    with pytest.raises(ConfigError, match="modality.vehicle"):
        ModalityConfig(vehicle="radar")


def test_missing_camera_image_names_the_agent_and_file(camera_root, tmp_path):
    root = tmp_path / "broken"
    shutil.copytree(camera_root, root)
    scenario = next((root / "train").iterdir())
    victim = sorted((scenario / "1000").glob("*_camera1.png"))[0]
    victim.unlink()
    ds = _dataset(root)
    with pytest.raises(FormatError, match=rf"1000/{victim.name}: camera image does not exist"):
        ds[0]


def test_camera_agent_without_cameras_is_a_format_error(camera_root):
    frame = OPV2VReader(camera_root, "train", load_cameras=True)[0]
    stripped = replace(frame, observations={**frame.observations,
                                            "1000": replace(frame.observations["1000"], cameras=())})
    ds = CooperativeDataset(MemoryReader([stripped]), GRID, modality=HETERO)
    with pytest.raises(FormatError, match=r"agent 1000 uses cameras but its frame has no camera images"):
        ds[0]
    # Images not loaded: the camera is known, its pixels are not.
    ds = CooperativeDataset(OPV2VReader(camera_root, "train"), GRID, modality=HETERO)
    with pytest.raises(FormatError, match=r"rsu_blind_corner_0000/1000 \(frame \d+\): camera agent 1000 has no "
                                          r"image for camera0 \(open the reader with load_cameras=True\)"):
        ds[0]
    # A LiDAR-only modality never touches the images.
    lidar_only = CooperativeDataset(MemoryReader([stripped]), GRID, modality=replace(HETERO, vehicle="lidar"))
    assert lidar_only[0].cameras is None


def test_cameras_refuse_early_fusion(camera_root):
    with pytest.raises(ConfigError, match="early"):
        _dataset(camera_root, fusion="early")
