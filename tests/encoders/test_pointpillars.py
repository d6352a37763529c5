"""PointPillars encoder: decorations, scatter, backbone strides, output contract, registry smoke test."""

import pytest
import torch

from coperception.encoders import ENCODERS, BEVBackbone, PointPillarsEncoder, scatter_to_bev
from coperception.encoders.pointpillars import PillarFeatureNet, scatter_conv2d
from coperception.errors import ConfigError
from coperception.geometry.grid import BEVGrid
from coperception.structures.bev import BEVFeatures
from coperception.structures.cells import Pillars

GRID = BEVGrid((-12.8, -6.4, -3.0, 12.8, 6.4, 1.0), (0.4, 0.4, 4.0))  # 64 x 32 cells
SMALL = dict(layer_nums=(1, 1), layer_strides=(2, 2), num_filters=(16, 32), upsample_strides=(1, 2),
             num_upsample_filters=(16, 16))


def random_pillars(num_agents=2, per_agent=40, max_points=8, seed=0) -> Pillars:
    """Unique random cells per agent, points inside their cells, random valid counts."""
    g = torch.Generator().manual_seed(seed)
    ny, nx = GRID.feature_shape(1)
    coords, points, counts = [], [], []
    for a in range(num_agents):
        cells = torch.randperm(ny * nx, generator=g)[:per_agent]
        rows, cols = cells // nx, cells % nx
        coords.append(torch.stack([torch.full_like(rows, a), rows, cols], 1))
        n = torch.randint(1, max_points + 1, (per_agent,), generator=g)
        u = torch.rand(per_agent, max_points, 4, generator=g)
        xyz = torch.stack([GRID.lidar_range[0] + (cols[:, None] + u[..., 0]) * 0.4,
                           GRID.lidar_range[1] + (rows[:, None] + u[..., 1]) * 0.4,
                           -3.0 + 4.0 * u[..., 2], u[..., 3]], -1)
        xyz = xyz * (torch.arange(max_points) < n[:, None]).unsqueeze(-1)
        points.append(xyz)
        counts.append(n)
    return Pillars(torch.cat(points).float(), torch.cat(coords), torch.cat(counts).int(), num_agents)


def test_decorations_match_a_per_pillar_loop():
    pillars = random_pillars(num_agents=1, per_agent=6)
    feats, valid = PillarFeatureNet(GRID).decorate(pillars)
    assert feats.shape == (6, 8, 10)
    for p in range(6):
        n = int(pillars.num_points[p])
        pts = pillars.points[p, :n]
        row, col = int(pillars.coords[p, 1]), int(pillars.coords[p, 2])
        centre = torch.tensor([-12.8 + (col + 0.5) * 0.4, -6.4 + (row + 0.5) * 0.4, -1.0])
        expected = torch.cat([pts, pts[:, :3] - pts[:, :3].mean(0), pts[:, :3] - centre], 1)
        torch.testing.assert_close(feats[p, :n], expected, atol=1e-5, rtol=0)
        assert torch.all(feats[p, n:] == 0) and valid[p].sum() == n
        # Centre offsets stay inside the pillar: |x_p|, |y_p| <= half a voxel.
        assert feats[p, :n, 7:9].abs().max() <= 0.2 + 1e-5


def test_padding_rows_do_not_change_pillar_features():
    torch.manual_seed(0)
    vfe = PillarFeatureNet(GRID).eval()
    with torch.no_grad():
        vfe.layers[0].norm.running_mean.uniform_(-1, 1)  # make BN(0) != 0 so pads would matter
    pillars = random_pillars(per_agent=10, max_points=4)
    padded = Pillars(torch.cat([pillars.points, torch.zeros(len(pillars), 12, 4)], 1), pillars.coords,
                     pillars.num_points, pillars.num_agents)
    torch.testing.assert_close(vfe(pillars), vfe(padded))


def test_pfn_max_matches_a_padded_reference_forward_and_backward():
    """The PFN's per-pillar max (a scatter over the valid point rows) equals the textbook
    zero-padded (P, M, C) max, values and gradients (train mode: batch statistics)."""
    from coperception.encoders.pointpillars import PFNLayer
    torch.manual_seed(1)
    layer = PFNLayer(10, 32).train()
    x = torch.randn(50, 8, 10, requires_grad=True)
    valid = torch.rand(50, 8) < 0.4
    valid[:, 0] = True  # every pillar has a point
    out = layer(x, valid)
    grad = torch.randn_like(out)
    (gx,) = torch.autograd.grad(out, x, grad)

    def reference(x):
        h = torch.relu(layer.norm(layer.linear(x[valid])))
        dense = h.new_zeros(*valid.shape, h.shape[-1])
        dense[valid] = h
        return dense.amax(dim=1)
    ref = reference(x)
    (gref,) = torch.autograd.grad(ref, x, grad)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(gx, gref)


def test_scatter_puts_each_pillar_in_its_cell():
    coords = torch.tensor([[0, 3, 5], [1, 0, 0], [1, 7, 9], [2, 4, 1]])
    feats = torch.arange(12, dtype=torch.float32).view(4, 3) + 1
    canvas = scatter_to_bev(feats, coords, num_agents=4, shape=(8, 10))
    assert canvas.shape == (4, 3, 8, 10)
    for (a, r, c), f in zip(coords.tolist(), feats):
        assert torch.equal(canvas[a, :, r, c], f)
    assert canvas.abs().sum() == feats.sum()  # nothing else written; agent 3 stays empty
    with pytest.raises(ConfigError, match="outside"):
        scatter_to_bev(feats, torch.tensor([[0, 8, 0]] * 4), num_agents=4, shape=(8, 10))


@pytest.mark.parametrize("kernel, stride, padding, dilation, bias", [
    (3, 2, 1, 1, False), (3, 1, 1, 1, True), (1, 1, 0, 1, False), (3, 2, 0, 1, False), (5, 3, 2, 1, False),
    (3, 1, 2, 2, True), ((3, 1), (2, 1), (1, 0), 1, False)])
def test_scatter_conv_equals_the_dense_convolution_of_the_canvas(kernel, stride, padding, dilation, bias):
    # Forward, feature gradient and weight/bias gradients against conv(scatter_to_bev(...)),
    # with pillars on every border (where taps fall into the padding).
    g = torch.Generator().manual_seed(3)
    h, w, agents = 9, 13, 3
    cells = torch.randperm(agents * h * w, generator=g)[:60]
    border = torch.tensor([[0, 0, 0], [0, h - 1, w - 1], [1, 0, w - 1], [2, h - 1, 0]])
    coords = torch.cat([torch.stack([cells // (h * w), cells % (h * w) // w, cells % w], 1), border]).unique(dim=0)
    feats = torch.randn(len(coords), 5, generator=g, dtype=torch.float64, requires_grad=True)
    conv = torch.nn.Conv2d(5, 7, kernel, stride, padding, dilation, bias=bias).double()
    dense = conv(scatter_to_bev(feats, coords, agents, (h, w)))
    sparse = scatter_conv2d(feats, coords, agents, (h, w), conv)
    assert sparse.shape == dense.shape and sparse.is_contiguous()
    torch.testing.assert_close(sparse, dense)
    up = torch.randn(dense.shape, generator=g, dtype=torch.float64)
    params = [feats, *conv.parameters()]
    for a, b in zip(torch.autograd.grad(sparse, params, up), torch.autograd.grad(dense, params, up)):
        torch.testing.assert_close(a, b)
    with pytest.raises(ConfigError, match="outside"):
        scatter_conv2d(feats, coords + torch.tensor([0, h, 0]), agents, (h, w), conv)
    with pytest.raises(ConfigError, match="ungrouped"):
        scatter_conv2d(feats, coords, agents, (h, w), torch.nn.Conv2d(5, 5, 3, groups=5))


def test_encoder_on_the_cpu_equals_the_dense_canvas_path():
    # The CPU forward starts the backbone from the pillars; it must equal running the backbone
    # on the scattered pseudo-image, features and parameter gradients alike.
    torch.manual_seed(0)
    enc = PointPillarsEncoder(GRID, vfe_filters=(16,), **SMALL).double()
    pillars = random_pillars(num_agents=3)
    pillars = Pillars(pillars.points.double(), pillars.coords, pillars.num_points, pillars.num_agents)
    fast = enc(pillars).features
    dense = enc.backbone(enc.pseudo_image(pillars))
    torch.testing.assert_close(fast, dense)
    params = list(enc.parameters())
    for a, b in zip(torch.autograd.grad(fast.square().sum(), params), torch.autograd.grad(dense.square().sum(), params)):
        torch.testing.assert_close(a, b)


def test_encoder_output_contract_and_geometry():
    torch.manual_seed(0)
    enc = PointPillarsEncoder(GRID, vfe_filters=(16,), **SMALL)
    pillars = random_pillars(num_agents=3)
    out = enc(pillars)
    assert isinstance(out, BEVFeatures)
    assert out.stride == enc.stride == 2 and out.grid == GRID
    assert out.features.shape == (3, 32, 16, 32) == (3, enc.out_channels, *GRID.feature_shape(2))
    assert out.cell_size == pytest.approx((0.8, 0.8))
    assert torch.isfinite(out.features).all()


def test_empty_agent_and_empty_batch():
    enc = PointPillarsEncoder(GRID, vfe_filters=(16,), **SMALL)
    one = random_pillars(num_agents=1)
    with_empty = Pillars(one.points, one.coords, one.num_points, num_agents=2)  # agent 1 has no points
    assert enc(with_empty).features.shape[0] == 2
    empty = Pillars(torch.zeros(0, 8, 4), torch.zeros(0, 3, dtype=torch.long), torch.zeros(0, dtype=torch.int32), 2)
    out = enc(empty)
    assert out.features.shape == (2, 32, 16, 32) and torch.isfinite(out.features).all()
    single = Pillars(torch.ones(1, 8, 4), torch.tensor([[0, 2, 3]]), torch.ones(1, dtype=torch.int32), 1)
    assert torch.isfinite(enc(single).features).all()  # one point: no batch statistics, no crash


def test_stacked_pfn_layers():
    vfe = PillarFeatureNet(GRID, num_filters=(32, 64))
    assert vfe(random_pillars()).shape == (80, 64)


def test_backbone_strides_and_shrink():
    x = torch.randn(2, 8, 32, 64)
    bb = BEVBackbone(8, upsample_strides=(0.5, 1, 2), num_upsample_filters=(4, 4, 4), num_filters=(8, 8, 8),
                     layer_nums=(1, 1, 1))
    assert bb.stride == 4 and bb(x).shape == (2, 12, 8, 16)
    shrunk = BEVBackbone(8, shrink_channels=6, shrink_stride=2, **SMALL)
    assert shrunk.stride == 4 and shrunk(x).shape == (2, 6, 8, 16)
    assert [t.shape[-1] for t in shrunk.forward_levels(x)] == [32, 16]
    with pytest.raises(ConfigError, match="one integer stride"):
        BEVBackbone(8, upsample_strides=(1, 1), num_upsample_filters=(4, 4), layer_nums=(1, 1),
                    layer_strides=(2, 2), num_filters=(8, 8))
    with pytest.raises(ConfigError, match="multiple"):
        PointPillarsEncoder(BEVGrid((0, 0, -3, 10, 10, 1), (0.4, 0.4, 4)))  # 25 x 25 cells, stride 8


def test_bev_features_rejects_wrong_shape():
    with pytest.raises(ConfigError, match="expected"):
        BEVFeatures(torch.zeros(1, 4, 10, 10), GRID, 2)


def test_default_architecture_matches_opencood_parameter_count():
    opencood_pp = pytest.importorskip("opencood.models.point_pillar")
    grid = BEVGrid((-140.8, -40, -3, 140.8, 40, 1), (0.4, 0.4, 4))
    args = dict(voxel_size=[0.4, 0.4, 4], lidar_range=list(grid.lidar_range), anchor_number=2, anchor_num=2,
                pillar_vfe=dict(use_norm=True, with_distance=False, use_absolute_xyz=True, num_filters=[64]),
                point_pillar_scatter=dict(num_features=64, grid_size=[704, 200, 1]),
                base_bev_backbone=dict(layer_nums=[3, 5, 8], layer_strides=[2, 2, 2], num_filters=[64, 128, 256],
                                       upsample_strides=[1, 2, 4], num_upsample_filter=[128, 128, 128]))
    theirs = sum(p.numel() for p in opencood_pp.PointPillar(args).parameters())
    from coperception.heads import AnchorHead

    enc = PointPillarsEncoder(grid)
    head = AnchorHead(enc.out_channels, grid, enc.stride, use_direction=False)
    ours = sum(p.numel() for m in (enc, head) for p in m.parameters())
    assert ours == theirs


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_registry_forward_backward(name):
    if name != "pointpillars":
        pytest.skip(f"{name} has its own smoke test")
    enc = ENCODERS[name](GRID, vfe_filters=(16,), **SMALL)
    out = enc(random_pillars())
    out.features.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in enc.parameters())
