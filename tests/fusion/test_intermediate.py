"""Intermediate (BEV-map) fusion: every registered method, plus the exact semantics of each."""

import math

import pytest
import torch

from coperception.errors import ConfigError
from coperception.fusion import (
    FUSIONS,
    AttentionFusion,
    ConfidenceFusion,
    FCooperFusion,
    MaxFusion,
    MultiScaleFusion,
    stack_agents,
)
from coperception.geometry.grid import BEVGrid
from coperception.geometry.pose import se3_from_xyz_rpy
from coperception.geometry.warp import warp_to_ego, warp_with_valid

GRID = BEVGrid((-8.0, -8.0, -3.0, 8.0, 8.0, 1.0), (1.0, 1.0, 4.0))  # 16 x 16 cells of 1 m
COUNTS = torch.tensor([3, 1, 2])


def _tfm(x=0.0, y=0.0, yaw=0.0) -> torch.Tensor:
    return torch.from_numpy(se3_from_xyz_rpy(x, y, 0.0, yaw=yaw)).float()


def _batch(seed: int = 0, channels: int = 4):
    """Three samples with 3, 1 and 2 agents (ego first, identity); random maps and poses."""
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(6, channels, 16, 16, generator=g)
    tfms = torch.stack([torch.eye(4), _tfm(3.0, -1.0, 0.4), _tfm(-2.5, 4.0, -2.0),
                        torch.eye(4), torch.eye(4), _tfm(1.0, 1.0, math.pi / 2)])
    return feats, tfms


class _Scored(torch.nn.Module):
    """A fusion that ``needs_scores``, fed a per-agent score derived from each agent's own map (as
    the detector derives it from the shared head), so the generic tests below cover it too."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, feats, counts, tfms, mask=None):
        return self.inner(feats, counts, tfms, mask, scores=3.0 * feats[:, :1] - feats[:, 1:2])


def _build(name: str):
    module = FUSIONS[name](GRID, 1)
    return _Scored(module) if module.needs_scores else module


@pytest.mark.parametrize("name", sorted(FUSIONS))
def test_registry_forward_backward_shapes(name):
    feats, tfms = _batch()
    feats.requires_grad_(True)
    mask = (torch.rand(6, 1, 16, 16, generator=torch.Generator().manual_seed(3)) > 0.2).float()
    for m in (None, mask):
        out = _build(name)(feats, COUNTS, tfms, m)
        assert out.shape == (3, 4, 16, 16) and torch.isfinite(out).all()
        feats.grad = None
        out.square().sum().backward()
        assert torch.isfinite(feats.grad).all()
        # Every agent, collaborators included, receives gradient.
        assert all(float(feats.grad[i].abs().sum()) > 0 for i in range(6)), name


@pytest.mark.parametrize("name", sorted(FUSIONS))
def test_single_agent_returns_the_ego_map(name):
    feats, _ = _batch()
    ego = feats[:1]
    out = _build(name)(ego, torch.tensor([1]), torch.eye(4)[None])
    assert torch.equal(out, ego)


@pytest.mark.parametrize("name", sorted(FUSIONS))
def test_order_of_collaborators_does_not_matter(name):
    feats, tfms = _batch(seed=1)
    mask = (torch.rand(6, 1, 16, 16, generator=torch.Generator().manual_seed(4)) > 0.3).float()
    perm = torch.tensor([0, 2, 1, 3, 4, 5])  # swap the two collaborators of sample 0
    module = _build(name)
    a = module(feats, COUNTS, tfms, mask)
    b = module(feats[perm], COUNTS, tfms[perm], mask[perm])
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    # Swapping the ego out changes the result (the ego is special for attention; for max it moves the frame).
    c = module(feats[[1, 0, 2, 3, 4, 5]], COUNTS, tfms[[1, 0, 2, 3, 4, 5]])
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("name", sorted(FUSIONS))
@pytest.mark.parametrize("counts", [[3, 1, 2], [2, 2, 2], [1, 1, 1, 1, 1, 1]])
def test_a_batch_equals_its_samples_fused_one_by_one(name, counts):
    feats, tfms = _batch(seed=13)
    mask = (torch.rand(6, 1, 16, 16, generator=torch.Generator().manual_seed(14)) > 0.3).float()
    tfms = tfms.clone()
    starts = [sum(counts[:i]) for i in range(len(counts))]
    tfms[starts] = torch.eye(4)  # every sample's first agent is its ego
    module = _build(name)
    batch = module(feats, torch.tensor(counts), tfms, mask)
    for i, (s, n) in enumerate(zip(starts, counts)):
        one = module(feats[s:s + n], torch.tensor([n]), tfms[s:s + n], mask[s:s + n])
        torch.testing.assert_close(batch[i:i + 1], one, atol=1e-6, rtol=1e-6)


def test_max_fusion_is_the_elementwise_max_of_the_warped_maps():
    feats, tfms = _batch(seed=2)
    out = MaxFusion(GRID, 1)(feats, COUNTS, tfms)
    warped = warp_to_ego(feats, tfms, GRID, 1)
    assert torch.equal(out[0], warped[0:3].amax(0))
    assert torch.equal(out[1], feats[3])
    assert torch.equal(out[2], warped[4:6].amax(0))


def test_max_fusion_matches_opencood_spatial_fusion():
    fcooper = pytest.importorskip("opencood.models.fuse_modules.f_cooper_fuse")
    feats, tfms = _batch(seed=5)
    warped = warp_to_ego(feats, tfms, GRID, 1)
    ref = fcooper.SpatialFusion()(warped, COUNTS)
    assert torch.equal(MaxFusion(GRID, 1)(feats, COUNTS, tfms), ref)


def _attention_reference(warped, present, counts):
    """Full L x L self-attention at every location (as OpenCOOD computes it), ego row kept.

    Keys an agent does not have at a location are excluded; no key at all gives zeros.
    """
    out, start = [], 0
    for n in counts.tolist():
        x, ok = warped[start:start + n], present[start:start + n, 0]
        tokens = x.flatten(2).permute(2, 0, 1)                      # (HW, n, C)
        scores = tokens @ tokens.transpose(1, 2) / math.sqrt(x.shape[1])
        scores = scores.masked_fill(~ok.flatten(1).T[:, None, :], float("-inf"))
        weights = torch.nan_to_num(torch.softmax(scores, dim=-1), nan=0.0)
        fused = (weights @ tokens)[:, 0]                             # (HW, C)
        out.append(fused.T.reshape(x.shape[1:]))
        start += n
    return torch.stack(out)


def test_attention_matches_full_self_attention_with_and_without_key_masking():
    feats, tfms = _batch(seed=6)
    mask = (torch.rand(6, 1, 16, 16, generator=torch.Generator().manual_seed(7)) > 0.3).float()
    warped, valid = warp_with_valid(feats, tfms, GRID, 1, "bilinear", mask)
    masked = AttentionFusion(GRID, 1, mask_invalid=True)(feats, COUNTS, tfms, mask)
    torch.testing.assert_close(masked, _attention_reference(warped, valid, COUNTS), atol=1e-5, rtol=1e-5)
    everyone = torch.ones_like(valid)
    unmasked = AttentionFusion(GRID, 1, mask_invalid=False)(feats, COUNTS, tfms, mask)
    torch.testing.assert_close(unmasked, _attention_reference(warped, everyone, COUNTS), atol=1e-5, rtol=1e-5)


def test_hand_written_backward_of_attention_and_weighted_sum_matches_autograd():
    # The fusion's custom autograd functions against the plain broadcast formulation autograd
    # differentiates, with masked keys, a padding row and cells no agent covers; then gradcheck.
    from coperception.fusion.intermediate import _AttendEgo, _WeightedSum
    g = torch.Generator().manual_seed(11)
    x = torch.randn(2, 3, 5, 4, 6, generator=g, dtype=torch.float64, requires_grad=True)
    keys = torch.rand(2, 3, 4, 6, generator=g) > 0.3
    keys[:, 0, :2] = True
    keys[1, 2] = False      # padding row
    keys[0, :, 3, 5] = False  # nobody covers this cell
    w = torch.rand(2, 3, 4, 6, generator=g, dtype=torch.float64, requires_grad=True)

    def reference(x, keys):
        scores = (x * x[:, :1]).sum(dim=2) / math.sqrt(x.shape[2])
        weights = torch.softmax(scores.masked_fill(~keys, -1e30), dim=1) * keys.any(dim=1, keepdim=True)
        return (weights.unsqueeze(2) * x).sum(dim=1)

    upstream = torch.randn(2, 5, 4, 6, generator=g, dtype=torch.float64)
    ours = _AttendEgo.apply(x, keys)
    torch.testing.assert_close(ours, reference(x, keys))
    torch.testing.assert_close(torch.autograd.grad(ours, x, upstream)[0],
                               torch.autograd.grad(reference(x, keys), x, upstream)[0])
    assert ours[0, :, 3, 5].abs().max() == 0
    summed = _WeightedSum.apply(x, w)
    ref_sum = (w.unsqueeze(2) * x).sum(dim=1)
    torch.testing.assert_close(summed, ref_sum)
    for a, b in zip(torch.autograd.grad(summed, (x, w), upstream), torch.autograd.grad(ref_sum, (x, w), upstream)):
        torch.testing.assert_close(a, b)
    assert torch.autograd.gradcheck(lambda t: _AttendEgo.apply(t, keys), (x,))
    assert torch.autograd.gradcheck(_WeightedSum.apply, (x, w))


def test_unmasked_attention_matches_opencood_attfuse():
    self_attn = pytest.importorskip("opencood.models.fuse_modules.self_attn")
    feats, tfms = _batch(seed=8)
    warped = warp_to_ego(feats, tfms, GRID, 1)
    ref = self_attn.AttFusion(feats.shape[1])(warped, COUNTS)
    ours = AttentionFusion(GRID, 1, mask_invalid=False)(feats, COUNTS, tfms)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_confidence_fusion_follows_the_most_confident_agent():
    # Ego and a collaborator shifted 4 m east with constant maps; scores favour the ego on the
    # left half of the ego map and the collaborator on the right half.
    feats = torch.stack([torch.full((2, 16, 16), 1.0), torch.full((2, 16, 16), 5.0)])
    feats[1, 1] = -2.0
    tfms = torch.stack([torch.eye(4), _tfm(4.0, 0.0, 0.0)])
    scores = torch.zeros(2, 1, 16, 16)
    scores[0, :, :, :8] = 20.0  # ego sure on its left half
    scores[1, :, :, :] = 10.0   # collaborator fairly sure everywhere it sees
    out = ConfidenceFusion(GRID, 1)(feats, torch.tensor([2]), tfms, scores=scores)[0]
    # Columns 0..3: the collaborator (shifted 4 m) does not cover them -> the ego's vector exactly.
    torch.testing.assert_close(out[:, :, :4], feats[0, :, :, :4])
    # Columns 4..7: both cover, ego's logit 20 vs 10 -> weights sigmoid(10) : sigmoid(-10).
    w = torch.sigmoid(torch.tensor(10.0))
    torch.testing.assert_close(out[0, :, 4:8], torch.full((16, 4), float(w * 1.0 + (1 - w) * 5.0)))
    # Columns 8..15: ego 0 vs collaborator 10 -> (almost) the collaborator's vector.
    w = torch.sigmoid(torch.tensor(-10.0))
    torch.testing.assert_close(out[1, :, 9:], torch.full((16, 7), float(w * 1.0 + (1 - w) * -2.0)))
    # A lower temperature sharpens the same choice; a masked-out cell never takes part.
    sharp = ConfidenceFusion(GRID, 1, temperature=0.1)(feats, torch.tensor([2]), tfms, scores=scores)[0]
    assert (sharp[0, :, 4:8] - 1.0).abs().max() < (out[0, :, 4:8] - 1.0).abs().max()
    mask = torch.ones(2, 1, 16, 16)
    mask[1, :, :, 8:] = 0  # collaborator columns 8.. = ego columns 12..
    masked = ConfidenceFusion(GRID, 1)(feats, torch.tensor([2]), tfms, mask, scores=scores)[0]
    torch.testing.assert_close(masked[:, :, 12:], feats[0, :, :, 12:])
    with pytest.raises(ConfigError, match="temperature"):
        ConfidenceFusion(GRID, 1, temperature=0.0)
    with pytest.raises(ValueError, match="needs scores"):
        ConfidenceFusion(GRID, 1)(feats, torch.tensor([2]), tfms)


def test_fcooper_spatial_ignores_agents_that_do_not_see_a_cell():
    # Negative features: an out-of-view zero wins plain max fusion but must not win F-Cooper's maxout.
    feats = -torch.ones(2, 2, 16, 16)
    feats[1] = -3.0
    tfms = torch.stack([torch.eye(4), _tfm(12.0, 0.0, 0.0)])  # the collaborator covers ego columns 12..15
    counts = torch.tensor([2])
    fc = FCooperFusion(GRID, 1, "spatial")(feats, counts, tfms)
    mx = MaxFusion(GRID, 1)(feats, counts, tfms)
    assert torch.equal(fc, -torch.ones(1, 2, 16, 16))
    feats_pos = feats.clone()
    feats_pos[1] = 5.0
    fc_pos = FCooperFusion(GRID, 1, "spatial")(feats_pos, counts, tfms)
    torch.testing.assert_close(fc_pos[0, :, :, 12:], torch.full((2, 16, 4), 5.0))
    assert bool((fc_pos[0, :, :, :12] == -1.0).all())
    assert bool((mx[0, :, :, 12:] == -1.0).all()) and bool((mx[0, :, :, :12] == 0.0).all())


def test_fcooper_voxel_uses_occupied_voxels_and_moves_them_without_blending():
    torch.manual_seed(9)
    feats = torch.zeros(2, 3, 16, 16)
    feats[0, :, 2, 3] = torch.tensor([1.0, -2.0, 0.5])    # ego voxel
    feats[1, :, 5, 5] = torch.tensor([-4.0, -4.0, -4.0])  # collaborator voxel, negative everywhere
    feats[1, :, 9, 9] = torch.tensor([2.0, 3.0, 4.0])
    # 90 deg turn: agent cell (r, c) -> ego cell (c, 15 - r) on this centred grid.
    tfms = torch.stack([torch.eye(4), _tfm(yaw=math.pi / 2)])
    out = FCooperFusion(GRID, 1, "voxel")(feats, torch.tensor([2]), tfms)[0]
    assert torch.equal(out[:, 2, 3], feats[0, :, 2, 3])
    assert torch.equal(out[:, 5, 10], feats[1, :, 5, 5])   # an empty ego voxel does not mask it with zeros
    assert torch.equal(out[:, 9, 6], feats[1, :, 9, 9])
    assert int((out.abs().sum(0) > 0).sum()) == 3
    # Same location in both agents: element-wise maxout.
    feats[1, :, 12, 3] = torch.tensor([0.0, 7.0, -1.0])   # lands on ego (3, 3)
    feats[0, :, 3, 3] = torch.tensor([2.0, 1.0, -5.0])
    out = FCooperFusion(GRID, 1, "voxel")(feats, torch.tensor([2]), tfms)[0]
    assert torch.equal(out[:, 3, 3], torch.tensor([2.0, 7.0, -1.0]))
    # Arbitrary rotation: every output value is some input voxel's value (nearest, no interpolation).
    tfms = torch.stack([torch.eye(4), _tfm(0.7, -1.2, 0.61)])
    rich = torch.randn(2, 3, 16, 16) * (torch.rand(2, 1, 16, 16) > 0.7)
    out = FCooperFusion(GRID, 1, "voxel")(rich, torch.tensor([2]), tfms)
    assert bool(torch.isin(out, torch.cat([rich.flatten(), torch.zeros(1)])).all())


def test_masked_out_collaborator_cells_take_no_part():
    feats = torch.ones(2, 1, 16, 16)
    feats[1] = 9.0
    mask = torch.ones(2, 1, 16, 16)
    mask[1, :, :8] = 0.0  # the collaborator sends only rows 8..15
    tfms = torch.eye(4).repeat(2, 1, 1)
    for fusion in (MaxFusion(GRID, 1), FCooperFusion(GRID, 1), AttentionFusion(GRID, 1)):
        out = fusion(feats, torch.tensor([2]), tfms, mask)[0, 0]
        assert bool((out[:8] == 1.0).all()), type(fusion).__name__
        assert bool((out[8:] > 8.9).all()), type(fusion).__name__


def test_stack_agents_pads_and_rejects_bad_counts():
    x = torch.arange(6.0)[:, None]
    stacked, slots = stack_agents(x, COUNTS)
    assert stacked.shape == (3, 3, 1)
    assert stacked[:, :, 0].tolist() == [[0, 1, 2], [3, 0, 0], [4, 5, 0]]
    assert slots.tolist() == [[True, True, True], [True, False, False], [True, True, False]]
    with pytest.raises(ValueError, match="sums to 5"):
        stack_agents(x, torch.tensor([3, 2]))
    with pytest.raises(ValueError, match=">= 1"):
        stack_agents(x, torch.tensor([6, 0]))


def test_multiscale_fuses_each_level_with_its_own_stride():
    grid = BEVGrid((-8.0, -8.0, -3.0, 8.0, 8.0, 1.0), (0.5, 0.5, 4.0))  # 32 x 32 at stride 1
    strides = (1, 2, 4)
    ms = MultiScaleFusion.for_strides(AttentionFusion, grid, strides)
    _, tfms = _batch()
    levels = [torch.randn(6, 2 * (i + 1), 32 // s, 32 // s) for i, s in enumerate(strides)]
    out = ms(levels, COUNTS, tfms)
    assert [tuple(o.shape) for o in out] == [(3, 2, 32, 32), (3, 4, 16, 16), (3, 6, 8, 8)]
    for level, s, fused in zip(levels, strides, out):
        torch.testing.assert_close(fused, AttentionFusion(grid, s)(level, COUNTS, tfms))
    # One fine mask is resized to every level; a list masks level by level.
    mask = torch.ones(6, 1, 32, 32)
    mask[1:3, :, :, :16] = 0
    resized = ms(levels, COUNTS, tfms, mask)
    for level, s, fused in zip(levels, strides, resized):
        small = mask[:, :, ::s, ::s]
        torch.testing.assert_close(fused, AttentionFusion(grid, s)(level, COUNTS, tfms, small))
    first_only = ms(levels, COUNTS, tfms, [mask, None, None])
    torch.testing.assert_close(first_only[1], out[1])
    with pytest.raises(ValueError, match="levels"):
        ms(levels[:2], COUNTS, tfms)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", sorted(FUSIONS))
def test_cuda_matches_cpu(name):
    feats, tfms = _batch(seed=11)
    mask = (torch.rand(6, 1, 16, 16, generator=torch.Generator().manual_seed(12)) > 0.3).float()
    module = _build(name)
    cpu = module(feats, COUNTS, tfms, mask)
    gpu = module.cuda()(feats.cuda(), COUNTS.cuda(), tfms.cuda(), mask.cuda())
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=1e-4)
    with torch.autocast("cuda", dtype=torch.float16):
        half = module(feats.cuda().half(), COUNTS.cuda(), tfms.cuda(), mask.cuda())
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.float().cpu(), cpu, atol=0.05, rtol=0.02)
