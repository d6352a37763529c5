"""Lift-splat camera encoder: frustum geometry, splatting, depth targets, output contract."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from coperception.encoders import ENCODERS, PointPillarsEncoder
from coperception.encoders.camera import CameraEncoder
from coperception.encoders.lss import (
    DepthBins,
    bev_cells,
    depth_bin_targets,
    depth_loss,
    feature_pixels,
    lift_points,
    splat,
    splat_frustum,
)
from coperception.errors import ConfigError
from coperception.geometry.grid import BEVGrid
from coperception.structures.bev import BEVFeatures
from coperception.structures.camera import IMAGE_MEAN, IMAGE_STD, CameraBatch, camera_batch
from coperception.structures.records import AgentKind, AgentObservation, Camera

GRID = BEVGrid((-12.8, -12.8, -2.0, 12.8, 12.8, 2.0), (0.4, 0.4, 4.0))  # 64 x 64 cells
SMALL = dict(image_channels=(8, 16, 16, 16), neck_channels=16, context_channels=8, depth_bins=(1.0, 13.0, 1.0),
             layer_nums=(1, 1), layer_strides=(2, 2), num_filters=(8, 16), upsample_strides=(1, 2),
             num_upsample_filters=(8, 8))
#: OpenCV camera axes in the LiDAR frame: x right = -y, y down = -z, z forward = x.
LIDAR_FROM_OPENCV = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
K = np.array([[100.0, 0.0, 20.0], [0.0, 100.0, 12.0], [0.0, 0.0, 1.0]])  # for 32 x 48 images



def _mount(yaw_deg: float, t=(0.5, -0.2, 1.0)) -> np.ndarray:
    c, s = math.cos(math.radians(yaw_deg)), math.sin(math.radians(yaw_deg))
    m = np.eye(4)
    m[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ LIDAR_FROM_OPENCV
    m[:3, 3] = t
    return m


def _t(a) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a), dtype=torch.float32)


def test_pixel_at_known_depth_lifts_to_the_right_point():
    # Feature stride 8 on 32 x 48 images: cell (1, 2) is centred on pixel (u, v) = (20, 12) = the
    # principal point, cell (1, 5) on u = 44, i.e. 24 px right of it.
    pix = feature_pixels((4, 6), (32, 48))
    assert pix[1, 2].tolist() == [20.0, 12.0] and pix[1, 5].tolist() == [44.0, 12.0]
    depths = torch.tensor([5.0, 10.0])
    mounts = _t(np.stack([_mount(0.0), _mount(90.0)]))
    pts = lift_points(_t(np.stack([K, K])), mounts, pix, depths)
    assert pts.shape == (2, 2, 4, 6, 3)
    # Forward camera: the optical axis is +x; 24 px right at fx = 100 is -0.24 z along y.
    torch.testing.assert_close(pts[0, 1, 1, 2], torch.tensor([10.5, -0.2, 1.0]))
    torch.testing.assert_close(pts[0, 0, 1, 5], torch.tensor([5.5, -0.2 - 1.2, 1.0]))
    # Camera yawed to the left: the optical axis is +y, "right" in the image is +x.
    torch.testing.assert_close(pts[1, 1, 1, 5], torch.tensor([0.5 + 2.4, -0.2 + 10.0, 1.0]))
    # A cell in the top row looks up: z rises with depth.
    assert bool(pts[0, 1, 0, 2, 2] > pts[0, 0, 0, 2, 2] > 1.0)


def test_resize_scale_gives_the_same_rays():
    """Images of 64 x 96 resized by 0.5 with the original K lift like 32 x 48 images with K / 2."""
    k_big = K * np.array([[2.0], [2.0], [1.0]])
    mask = torch.ones(1, 1, dtype=torch.bool)
    batch = CameraBatch(torch.zeros(1, 1, 3, 32, 48), _t(k_big)[None, None], _t(_mount(30.0))[None, None], 0.5, mask)
    _, k_used, _, agent = batch.flat_cameras()
    torch.testing.assert_close(k_used[0], _t(K))
    assert agent.tolist() == [0]


def test_point_splats_into_the_correct_cell():
    feats = torch.tensor([[1.0, 2.0], [5.0, 5.0], [7.0, 7.0]])
    points = torch.tensor([[3.1, -4.5, 0.0], [3.1, -4.5, 2.5], [40.0, 0.0, 0.0]])  # 2nd: above zmax, 3rd: outside
    out = splat(feats, points, torch.tensor([1, 1, 1]), GRID, 2, num_agents=2)
    assert out.shape == (2, 2, 32, 32)
    row, col = int((-4.5 + 12.8) // 0.8), int((3.1 + 12.8) // 0.8)
    assert out[1, :, row, col].tolist() == [1.0, 2.0]
    assert out.abs().sum() == 3.0  # nothing else landed anywhere
    cell, ok = bev_cells(points, torch.tensor([1, 1, 1]), GRID, 2, 2)
    assert ok.tolist() == [True, False, False] and int(cell[0]) == (32 + row) * 32 + col


def test_lift_splat_of_one_confident_cell():
    bins = DepthBins(1.0, 13.0, 1.0)
    mounts = _t(_mount(0.0))[None]
    pts = lift_points(_t(K)[None], mounts, feature_pixels((4, 6), (32, 48)), bins.centres())
    depth = torch.zeros(1, bins.num, 4, 6)
    depth[0, 7, 1, 2] = 1.0  # bin 7 = [8, 9) m, centre 8.5 m, on the optical axis
    context = torch.arange(1.0, 4.0).view(1, 3, 1, 1).expand(1, 3, 4, 6)
    out = splat_frustum(depth, context, pts, torch.tensor([0]), GRID, 1, num_agents=1)
    row, col = int((-0.2 + 12.8) // 0.4), int((0.5 + 8.5 + 12.8) // 0.4)
    torch.testing.assert_close(out[0, :, row, col], torch.tensor([1.0, 2.0, 3.0]))
    assert out.abs().sum() == pytest.approx(6.0)


def _obs(agent_id: str, yaws: list[float], hw=(64, 96), seed: int = 0, t=(0.5, -0.2, 1.0)) -> AgentObservation:
    rng = np.random.default_rng(seed)
    k_big = K * np.array([[2.0], [2.0], [1.0]])
    cams = tuple(Camera(f"camera{i}", k_big, _mount(y, t), rng.integers(0, 256, (*hw, 3), dtype=np.uint8))
                 for i, y in enumerate(yaws))
    return AgentObservation(agent_id, AgentKind.VEHICLE, np.eye(4), np.zeros((0, 4), np.float32), cams)


def test_camera_batch_from_observations_pads_and_scales():
    obs = [_obs("a", [0.0, 90.0]), _obs("b", [180.0]), _obs("c", [])]
    obs[1].cameras[0].image[:] = 255  # white
    batch = camera_batch(obs, (32, 48))
    assert batch.images.shape == (3, 2, 3, 32, 48)
    assert batch.camera_mask.tolist() == [[True, True], [True, False], [False, False]]
    assert batch.image_scale[0, 0].tolist() == [0.5, 0.5]
    white = (1.0 - torch.tensor(IMAGE_MEAN)) / torch.tensor(IMAGE_STD)
    torch.testing.assert_close(batch.images[1, 0, :, 5, 5], white)
    torch.testing.assert_close(batch.flat_cameras()[1][0], _t(K))
    with pytest.raises(ConfigError, match="no image"):
        camera_batch([AgentObservation("d", AgentKind.VEHICLE, np.eye(4), np.zeros((0, 4)),
                                       (Camera("cam", K, np.eye(4)),))], (32, 48))


def test_output_contract_matches_pointpillars():
    torch.manual_seed(0)
    enc = CameraEncoder(GRID, **SMALL)
    out = enc(camera_batch([_obs("a", [0.0, 90.0]), _obs("b", [180.0])], (32, 48)))
    assert isinstance(out, BEVFeatures) and out.grid == GRID
    assert out.features.shape == (2, enc.out_channels, *GRID.feature_shape(enc.stride)) == (2, 16, 32, 32)
    bb = {k: v for k, v in SMALL.items() if k in ("layer_nums", "layer_strides", "num_filters", "upsample_strides",
                                                   "num_upsample_filters")}
    lidar = PointPillarsEncoder(GRID, **bb)
    assert (lidar.stride, lidar.out_channels) == (enc.stride, enc.out_channels)
    assert ENCODERS["camera"] is CameraEncoder


def test_agents_with_different_camera_counts():
    torch.manual_seed(0)
    enc = CameraEncoder(GRID, **SMALL).eval()
    batch = camera_batch([_obs("a", [0.0, 90.0]), _obs("b", [180.0]), _obs("c", [])], (32, 48))
    bev, logits = enc.lift_splat(batch)
    assert logits.shape == (3, 12, 4, 6)  # three real cameras
    assert bev[0].abs().sum() > 0 and bev[1].abs().sum() > 0 and bev[2].abs().sum() == 0
    # Agent b's camera looks backwards (-x): its features lie at x < 0.5 m only.
    xs = torch.tensor(GRID.cell_centers(1)[0], dtype=torch.float32)
    assert bev[1][:, :, xs > 0.6].abs().sum() == 0
    # Padding slots are ignored whatever they hold.
    batch.images[1, 1] = torch.randn(3, 32, 48)
    torch.testing.assert_close(enc.lift_splat(batch)[0], bev)


def test_gradients_flow_and_depth_loss():
    torch.manual_seed(0)
    enc = CameraEncoder(GRID, **SMALL)
    batch = camera_batch([_obs("a", [0.0, 90.0])], (32, 48))
    out, logits = enc.forward_with_depth(batch)
    _, k, lidar_from_cam, agent = batch.flat_cameras()
    cloud = torch.tensor([[6.5, -0.2, 1.0, 0.3]])
    targets = depth_bin_targets([cloud], k, lidar_from_cam, agent, (32, 48), (4, 6), enc.bins)
    loss = out.features.square().mean() + depth_loss(logits, targets)
    loss.backward()
    for p in (enc.image_net.stem[0][0].weight, enc.depth_head.weight, enc.backbone.blocks[0][0].weight):
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_depth_bin_targets():
    bins = DepthBins(1.0, 13.0, 1.0)
    k, mounts = _t(np.stack([K, K])), _t(np.stack([_mount(0.0), _mount(90.0)]))
    cloud_a = torch.tensor([[6.5, -0.2, 1.0, 0.0],     # 6 m ahead on camera 0's axis -> bin 5
                            [3.0, -0.2, 1.0, 0.0],     # same ray, 2.5 m: nearer, wins -> bin 1
                            [-6.0, -0.2, 1.0, 0.0],    # behind camera 0, beside camera 1: not in view
                            [0.5, 9.7, 1.0, 0.0]])     # 9.9 m along camera 1's axis -> bin 8
    cloud_b = torch.tensor([[6.5, -0.2, 1.0, 0.0]])  # agent 1 has no camera here: ignored
    t = depth_bin_targets([cloud_a, cloud_b], k, mounts, torch.tensor([0, 0]), (32, 48), (4, 6), bins)
    assert t.shape == (2, 4, 6)
    assert int(t[0, 1, 2]) == 1 and int(t[1, 1, 2]) == 8
    assert int((t >= 0).sum()) == 2
    logits = torch.zeros(2, bins.num, 4, 6, requires_grad=True)
    loss = depth_loss(logits, t)
    assert loss.item() == pytest.approx(math.log(bins.num))
    assert depth_loss(logits, torch.full_like(t, -1)).item() == 0.0


def test_invalid_configurations_raise():
    with pytest.raises(ConfigError, match="depth bins"):
        DepthBins(5.0, 1.0, 1.0)
    with pytest.raises(ConfigError, match="multiple"):
        CameraEncoder(BEVGrid((-12.4, -12.4, -2.0, 12.4, 12.4, 2.0), (0.4, 0.4, 4.0)), **SMALL)  # 62 cells
    enc = CameraEncoder(GRID, **SMALL)
    with pytest.raises(ConfigError, match="image size"):
        enc(CameraBatch(torch.zeros(1, 1, 3, 30, 48), _t(K)[None, None], _t(_mount(0.0))[None, None]))
    with pytest.raises(ConfigError, match="image_scale"):
        CameraBatch(torch.zeros(1, 2, 3, 32, 48), _t(np.stack([K, K]))[None], _t(np.stack([np.eye(4)] * 2))[None],
                    torch.ones(3, 2))


@pytest.mark.gpu
@pytest.mark.usefixtures("no_tf32")
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    torch.manual_seed(0)
    enc = CameraEncoder(GRID, **SMALL).eval()
    # Mounts off the cell boundaries: frustum points exactly on a boundary may round either way.
    t = (0.53, -0.17, 1.01)
    batch = camera_batch([_obs("a", [0.0, 90.0], t=t), _obs("b", [180.0], t=t)], (32, 48))
    ref_bev, ref_logits = enc.lift_splat(batch)
    ref = enc(batch).features
    enc = enc.cuda()
    bev, logits = enc.lift_splat(batch.to("cuda"))
    torch.testing.assert_close(logits.cpu(), ref_logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(bev.cpu(), ref_bev, atol=1e-4, rtol=1e-4)
    out = enc(batch.to("cuda")).features.cpu()
    torch.testing.assert_close(out, ref, atol=1e-4 * float(ref.abs().max()), rtol=1e-4)
