"""SECOND encoder: output contract, backend choice, spconv/torch agreement, gradients."""

from __future__ import annotations

import importlib.util
import logging

import pytest
import torch

from coperception.data.voxelize import voxelize
from coperception.encoders import ENCODERS
from coperception.encoders import second as second_mod
from coperception.encoders.second import SECONDEncoder, mean_vfe, resolve_backend
from coperception.encoders.sparse_conv import set_method
from coperception.errors import ConfigError
from coperception.geometry.grid import BEVGrid
from coperception.structures.bev import BEVFeatures
from coperception.structures.cells import Voxels

HAS_SPCONV = importlib.util.find_spec("spconv") is not None
GRID = BEVGrid((-3.2, -3.2, -2.0, 3.2, 3.2, 1.2), (0.2, 0.2, 0.4))  # 32 x 32 x 8 voxels
SMALL_2D = dict(layer_nums=(1, 1), layer_strides=(1, 2), num_filters=(16, 32), upsample_strides=(1, 2),
                num_upsample_filters=(16, 16))
SMALL_3D = dict(sparse_channels=(8, 8, 16, 16), sparse_blocks=(1, 1, 1, 1), sparse_out_channels=16)


def _clouds(seed: int, sizes=(900, 600)) -> list[torch.Tensor]:
    """Points on a ground plane plus a few box-like clusters, so voxels have neighbours."""
    g = torch.Generator().manual_seed(seed)
    clouds = []
    for n in sizes:
        ground = torch.rand(n, 3, generator=g) * torch.tensor([6.2, 6.2, 0.3]) + torch.tensor([-3.1, -3.1, -1.9])
        box = torch.rand(n // 3, 3, generator=g) * torch.tensor([1.5, 0.8, 1.5]) + torch.tensor([0.5, -1.0, -1.6])
        xyz = torch.cat([ground, box])
        clouds.append(torch.cat([xyz, torch.rand(len(xyz), 1, generator=g)], dim=1))
    return clouds


def _encoder(backend: str = "torch") -> SECONDEncoder:
    torch.manual_seed(0)
    return SECONDEncoder(GRID, backend=backend, **SMALL_3D, **SMALL_2D)




def test_registered():
    assert ENCODERS["second"] is SECONDEncoder


def test_output_contract():
    enc = _encoder()
    voxels = voxelize(_clouds(0), GRID)
    out = enc(voxels)
    assert isinstance(out, BEVFeatures)
    assert enc.stride == 8 and out.stride == 8 and out.grid == GRID
    assert out.features.shape == (2, enc.out_channels, *GRID.feature_shape(8)) == (2, 32, 4, 4)
    assert out.cell_size == pytest.approx((1.6, 1.6))
    # OpenPCDet's depth rule: 8 z voxels -> 9 -> 5 -> 3 -> 1 (z padding 0) -> 1 (kernel 1).
    assert enc.sparse.input_shape == (9, 32, 32) and enc.sparse.output_shape == (1, 4, 4)
    assert torch.isfinite(out.features).all()


def test_default_geometry_matches_pointpillars_defaults():
    """HEAL m3 voxels (0.1 m) at stride 8 give the cells of PointPillars at 0.4 m and stride 2."""
    grid = BEVGrid((-12.8, -6.4, -3.0, 12.8, 6.4, 1.0), (0.1, 0.1, 0.1))
    enc = SECONDEncoder(grid, backend="torch")
    assert enc.sparse.input_shape == (41, 128, 256) and enc.sparse.output_shape == (2, 16, 32)
    assert enc.sparse.bev_channels == 256 and enc.out_channels == 384 and enc.stride == 8
    assert grid.cell_size(enc.stride) == pytest.approx((0.8, 0.8))


def test_mean_vfe_and_empty_agent():
    pts = torch.tensor([[0.05, 0.05, 0.0, 1.0], [0.15, 0.1, 0.1, 0.0]])  # one voxel, two points
    voxels = voxelize([pts, torch.zeros(0, 4)], GRID)
    assert len(voxels) == 1
    torch.testing.assert_close(mean_vfe(voxels), torch.tensor([[0.1, 0.075, 0.05, 0.5]]))
    enc = _encoder()
    bev = enc.bev_input(voxelize(_clouds(1, sizes=(500, 0)), GRID))
    assert bev[0].abs().sum() > 0 and bev[1].abs().sum() == 0  # the agent without points stays empty


def test_no_voxels_at_all_runs():
    enc = _encoder("auto")
    out = enc(voxelize([torch.zeros(0, 4)], GRID))
    assert out.features.shape == (1, 32, 4, 4)


def test_gradients_flow():
    enc = _encoder()
    out = enc(voxelize(_clouds(2), GRID))
    out.features.square().mean().backward()
    first = enc.sparse.stages[0][0][0].weight
    for p in (first, enc.sparse.conv_out[0].weight, enc.backbone.blocks[0][0].weight):
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_backend_resolution(monkeypatch, caplog):
    cpu = torch.device("cpu")
    assert resolve_backend("torch", cpu) == "torch"
    assert resolve_backend("auto", cpu) == "torch"  # spconv's CPU path cannot train (see resolve_backend)
    with pytest.raises(ConfigError, match="backend"):
        resolve_backend("cuda-magic", cpu)
    with pytest.raises(ConfigError, match="backend"):
        SECONDEncoder(GRID, backend="fast")
    monkeypatch.setattr(second_mod, "spconv_usable", lambda device_type: False)
    with pytest.raises(ConfigError, match="spconv"):
        resolve_backend("spconv", cpu)
    assert resolve_backend("auto", torch.device("cuda")) == "torch"
    monkeypatch.setattr(second_mod, "spconv_usable", lambda device_type: True)
    assert resolve_backend("auto", torch.device("cuda")) == "spconv"
    monkeypatch.undo()
    with caplog.at_level(logging.INFO, logger="coperception.encoders.second"):
        _encoder("auto")(voxelize(_clouds(3), GRID))
    assert "torch sparse-conv backend on cpu" in caplog.text


def test_coords_outside_grid_raise():
    voxels = voxelize(_clouds(4), GRID)
    bad = Voxels(voxels.points, voxels.coords.clone(), voxels.num_points, voxels.num_agents)
    bad.coords[0, 2] = 99
    with pytest.raises(ConfigError, match="grids differ"):
        _encoder()(bad)


def test_grid_not_multiple_of_stride_raises():
    with pytest.raises(ConfigError, match="multiple"):
        SECONDEncoder(BEVGrid((-3.0, -3.0, -2.0, 3.0, 3.0, 1.2), (0.2, 0.2, 0.4)), **SMALL_3D, **SMALL_2D)


def test_torch_methods_agree_on_whole_forward():
    enc = _encoder()
    voxels = voxelize(_clouds(7), GRID)
    set_method(enc, "scatter")
    ref = enc(voxels).features
    set_method(enc, "gather")
    torch.testing.assert_close(enc(voxels).features, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.skipif(not HAS_SPCONV, reason="spconv is not installed")
@pytest.mark.parametrize("train", [True, False])
def test_backends_agree_on_whole_forward(one_thread, train):
    enc = _encoder()
    enc.train(train)
    voxels = voxelize(_clouds(5), GRID)
    enc.backend = "torch"
    out_torch = enc.bev_input(voxels), enc(voxels).features
    enc.backend = "spconv"
    out_spconv = enc.bev_input(voxels), enc(voxels).features
    assert out_torch[0].abs().sum() > 0
    torch.testing.assert_close(out_torch[0], out_spconv[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out_torch[1], out_spconv[1], atol=1e-4, rtol=1e-4)


@pytest.mark.gpu
@pytest.mark.usefixtures("no_tf32")
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("method", ["gather", "scatter"])
def test_cuda_torch_backend_matches_cpu(method):
    enc = _encoder()
    voxels = voxelize(_clouds(6), GRID)
    ref = enc(voxels).features
    set_method(enc, method)
    out = enc.cuda()(voxels.to("cuda")).features
    torch.testing.assert_close(out.cpu(), ref, atol=1e-4, rtol=1e-4)
    out.square().mean().backward()
    assert enc.sparse.stages[0][0][0].weight.grad.abs().sum() > 0
