"""Warping agent BEV maps into the ego frame: cells land where the geometry says they must."""

import math

import numpy as np
import pytest
import torch

from coperception.errors import ConfigError
from coperception.geometry.grid import BEVGrid
from coperception.geometry.pose import se3_from_xyz_rpy
from coperception.geometry.warp import warp_to_ego, warp_with_valid

# 16 x 16 cells of 1 m centred on the origin: cell centres at -7.5, -6.5, ..., 7.5.
GRID = BEVGrid((-8.0, -8.0, -3.0, 8.0, 8.0, 1.0), (1.0, 1.0, 4.0))


def _tfm(x=0.0, y=0.0, yaw=0.0, z=0.0, roll=0.0, pitch=0.0) -> torch.Tensor:
    return torch.from_numpy(se3_from_xyz_rpy(x, y, z, roll=roll, pitch=pitch, yaw=yaw)).float()


def _cell_of(grid: BEVGrid, stride: int, x: float, y: float) -> tuple[float, float]:
    """Continuous (row, col) of a metric point: centres are at integers."""
    sx, sy = grid.cell_size(stride)
    return (y - grid.lidar_range[1]) / sy - 0.5, (x - grid.lidar_range[0]) / sx - 0.5


def _centre_of(grid: BEVGrid, stride: int, row: int, col: int) -> tuple[float, float]:
    xs, ys = grid.cell_centers(stride)
    return float(xs[col]), float(ys[row])


def _blob_map(row: int, col: int, channels: int = 3) -> torch.Tensor:
    x = torch.zeros(1, channels, 16, 16)
    x[0, :, row, col] = torch.arange(1, channels + 1, dtype=torch.float32)
    return x


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
@pytest.mark.parametrize("x, y, yaw", [(3.0, -2.0, 0.0), (0.0, 0.0, math.pi / 2), (0.0, 0.0, -math.pi / 2),
                                       (0.0, 0.0, math.pi), (2.0, 1.0, math.pi / 2), (-1.0, 4.0, -math.pi)])
def test_blob_lands_on_the_analytic_ego_cell(mode, x, y, yaw):
    row_a, col_a = 8, 11
    px, py = _centre_of(GRID, 1, row_a, col_a)
    # ego point = R(yaw) p_agent + t, computed by hand rather than through the code under test.
    ex = math.cos(yaw) * px - math.sin(yaw) * py + x
    ey = math.sin(yaw) * px + math.cos(yaw) * py + y
    row_e, col_e = (round(v) for v in _cell_of(GRID, 1, ex, ey))
    out = warp_to_ego(_blob_map(row_a, col_a), _tfm(x, y, yaw)[None], GRID, 1, mode)
    hits = (out[0, 0] > 0.5).nonzero().tolist()
    assert hits == [[row_e, col_e]]
    torch.testing.assert_close(out[0, :, row_e, col_e], torch.tensor([1.0, 2.0, 3.0]), atol=1e-4, rtol=0)
    assert float(out.abs().sum()) == pytest.approx(6.0, abs=1e-3)


def test_quarter_turn_by_hand():
    # Agent cell (row 8, col 11) is the point (3.5, 0.5); turned by +90 deg it is (-0.5, 3.5): row 11, col 7.
    out = warp_to_ego(_blob_map(8, 11, 1), _tfm(yaw=math.pi / 2)[None], GRID, 1, "nearest")
    assert out[0, 0].nonzero().tolist() == [[11, 7]]


@pytest.mark.parametrize("grid, stride", [
    (BEVGrid((-10.0, -10.0, -3.0, 10.0, 10.0, 1.0), (0.5, 0.5, 4.0)), 1),
    (BEVGrid((-10.0, -10.0, -3.0, 10.0, 10.0, 1.0), (0.25, 0.25, 4.0)), 2),
    (BEVGrid((-8.0, -10.0, -3.0, 24.0, 10.0, 1.0), (0.4, 0.25, 4.0)), 1),  # off-centre, non-square cells
])
@pytest.mark.parametrize("x, y, yaw", [(2.3, -1.7, math.radians(37.0)), (-3.1, 0.6, math.radians(-121.0))])
def test_arbitrary_pose_moves_a_smooth_field_analytically(grid, stride, x, y, yaw):
    """A Gaussian centred on q_a in the agent map must become a Gaussian centred on R q_a + t."""
    xs, ys = grid.cell_centers(stride)
    sigma = 2.0
    rot = np.array([[math.cos(yaw), -math.sin(yaw)], [math.sin(yaw), math.cos(yaw)]])
    # Centre the ego blob on a cell centre whose agent-frame point is well inside the agent map.
    gx, gy = np.meshgrid(xs, ys)
    back = np.einsum("ji,hwj->hwi", rot, np.stack([gx - x, gy - y], -1))  # R^T (p_e - t)
    margin = 2.5 * sigma
    lo, hi = np.array(grid.lidar_range[:2]) + margin, np.array(grid.lidar_range[3:5]) - margin
    ok = ((back >= lo) & (back <= hi)).all(-1)
    assert ok.any()
    row_e, col_e = (int(v) for v in np.argwhere(ok)[len(np.argwhere(ok)) // 2])
    q_e, q_a = np.array([xs[col_e], ys[row_e]]), back[row_e, col_e]

    def field(centre):
        gx, gy = np.meshgrid(xs, ys)
        return np.exp(-((gx - centre[0]) ** 2 + (gy - centre[1]) ** 2) / (2 * sigma ** 2))

    agent_map = torch.from_numpy(field(q_a)).float()[None, None]
    out, valid = warp_with_valid(agent_map, _tfm(x, y, yaw)[None], grid, stride, "bilinear")
    expected = torch.from_numpy(field(q_e)).float()
    inside = valid[0, 0]
    assert inside[row_e, col_e]
    assert float((out[0, 0] - expected)[inside].abs().max()) < 0.03
    peak = int(torch.argmax(out[0, 0]))
    assert divmod(peak, len(xs)) == (row_e, col_e)


def test_roll_and_pitch_are_ignored_and_z_translation_too():
    x = torch.randn(1, 2, 16, 16)
    planar = warp_to_ego(x, _tfm(1.0, 2.0, 0.3)[None], GRID, 1)
    tilted = warp_to_ego(x, _tfm(1.0, 2.0, 0.3, z=5.0, roll=0.02, pitch=-0.03)[None], GRID, 1)
    # A tilt changes the rotation's x axis slightly, hence the yaw read from it; stays within ~1e-3.
    torch.testing.assert_close(planar, tilted, atol=0.05, rtol=0)


def test_identity_is_exact_even_with_float_noise():
    torch.manual_seed(0)
    x = torch.randn(3, 5, 16, 16)
    world_from_ego = se3_from_xyz_rpy(101.3, -42.7, 1.9, yaw=2.1)
    noisy_identity = torch.from_numpy(np.linalg.inv(world_from_ego) @ world_from_ego).float()
    tfms = torch.stack([torch.eye(4), noisy_identity, _tfm(0.5, 0.0, 0.0)])
    out, valid = warp_with_valid(x, tfms, GRID, 1)
    assert torch.equal(out[0], x[0]) and torch.equal(out[1], x[1])
    assert bool(valid[:2].all())
    assert not torch.equal(out[2], x[2])


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_out_of_view_is_zero_and_invalid(mode):
    x = torch.ones(1, 2, 16, 16)
    # Shifted 12 m along x, the agent covers ego x in [4, 20]: ego columns 12..15.
    out, valid = warp_with_valid(x, _tfm(12.0, 0.0, 0.0)[None], GRID, 1, mode)
    assert bool((out[0, :, :, :12] == 0).all()) and not bool(valid[0, :, :, :12].any())
    torch.testing.assert_close(out[0, :, :, 12:], torch.ones(2, 16, 4))
    assert bool(valid[0, :, :, 12:].all())


def test_mask_zeroes_and_invalidates_unsent_cells():
    x = torch.ones(2, 1, 16, 16)
    mask = torch.ones(2, 1, 16, 16)
    mask[:, :, :, :8] = 0  # nobody sends its x < 0 half
    tfms = torch.stack([torch.eye(4), _tfm(yaw=math.pi)])  # the second agent faces the other way
    out, valid = warp_with_valid(x, tfms, GRID, 1, "nearest", mask)
    assert torch.equal(valid[0, 0, :, 8:], torch.ones(16, 8, dtype=torch.bool))
    assert not bool(valid[0, 0, :, :8].any())
    # Turned by 180 deg, the agent's x >= 0 half is the ego's x < 0 half.
    assert bool(valid[1, 0, :, :8].all()) and not bool(valid[1, 0, :, 8:].any())
    assert torch.equal(out, valid.float())


def test_gradients_reach_the_input_and_low_precision_matches_float32():
    x = torch.randn(2, 3, 16, 16, requires_grad=True)
    tfms = torch.stack([torch.eye(4), _tfm(1.3, -0.4, 0.7)])
    warp_to_ego(x, tfms, GRID, 1).square().sum().backward()
    assert x.grad is not None and float(x.grad[1].abs().sum()) > 0
    ref = warp_to_ego(x.detach(), tfms, GRID, 1)
    low = warp_to_ego(x.detach().bfloat16(), tfms, GRID, 1)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), ref, atol=0.05, rtol=0.02)


def test_bad_shapes_and_settings_are_rejected():
    x = torch.zeros(2, 1, 16, 16)
    with pytest.raises(ValueError, match="ego_from_agent"):
        warp_to_ego(x, torch.eye(4)[None], GRID, 1)
    with pytest.raises(ConfigError, match="stride 2"):
        warp_to_ego(x, torch.eye(4).repeat(2, 1, 1), GRID, 2)
    with pytest.raises(ConfigError, match="mode"):
        warp_to_ego(x, torch.eye(4).repeat(2, 1, 1), GRID, 1, "bicubic")
    with pytest.raises(ValueError, match="mask"):
        warp_with_valid(x, torch.eye(4).repeat(2, 1, 1), GRID, 1, mask=torch.ones(2, 1, 8, 8))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    torch.manual_seed(1)
    x = torch.randn(3, 4, 16, 16)
    tfms = torch.stack([torch.eye(4), _tfm(1.3, -0.4, 0.7), _tfm(-5.0, 2.0, -2.0)])
    mask = (torch.rand(3, 1, 16, 16) > 0.3).float()
    cpu = warp_with_valid(x, tfms, GRID, 1, "bilinear", mask)
    gpu = warp_with_valid(x.cuda(), tfms.cuda(), GRID, 1, "bilinear", mask.cuda())
    torch.testing.assert_close(gpu[0].cpu(), cpu[0], atol=1e-5, rtol=1e-5)
    assert torch.equal(gpu[1].cpu(), cpu[1])
    assert torch.equal(gpu[0][0].cpu(), x[0] * mask[0])
