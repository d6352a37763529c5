"""Communication strategies on a synthetic three-agent scene: budgets, round trips, selection rules."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coperception.comm.message import Boxes, CodebookIndices, SparseCells
from coperception.comm.select import SampleView, gaussian_smooth
from coperception.comm.strategies import STRATEGIES, build_strategy
from coperception.comm.wire import decode, encode, min_message_bytes
from coperception.errors import BudgetError, ConfigError, WireError
from coperception.geometry.grid import BEVGrid
from coperception.geometry.warp import invert_rigid, warp_maps
from coperception.structures.records import Detections

GRID = BEVGrid((-12.8, -12.8, -3.0, 12.8, 12.8, 1.0), (0.4, 0.4, 4.0))
STRIDE, C = 2, 8
H, W = GRID.feature_shape(STRIDE)  # 32 x 32


def _pose(x: float, y: float, yaw: float) -> torch.Tensor:
    m = torch.eye(4)
    c, s = math.cos(yaw), math.sin(yaw)
    m[:2, :2] = torch.tensor([[c, -s], [s, c]])
    m[:2, 3] = torch.tensor([x, y])
    return m


def _view(seed: int = 0, with_occupancy: bool = True, spread: float = 0.0) -> SampleView:
    """Ego at the origin; collaborators at x = +spread and -spread metres (same heading)."""
    g = torch.Generator().manual_seed(seed)
    feats = torch.rand(3, C, H, W, generator=g)
    conf = torch.zeros(3, 1, H, W)
    conf[0, 0, 4:10, 4:10] = 0.9     # the ego is confident in one corner only
    conf[1, 0, 12:20, 12:20] = 0.8   # both collaborators see the middle
    conf[2, 0, 12:20, 12:20] = 0.6
    conf[1, 0, 24:28, 2:6] = 0.7
    conf += 0.001 * torch.rand(3, 1, H, W, generator=g)
    poses = torch.stack([torch.eye(4), _pose(spread, 0.0, 0.0), _pose(-spread, 0.0, 0.0)])
    occ = torch.zeros(3, 1, H, W)
    occ[0, 0, :, :16] = 40.0  # the ego's LiDAR covers the left half densely
    dets = [Detections(np.array([[1.0, 2.0, -1.0, 4.5, 2.0, 1.6, 0.3]] * 3) + np.arange(3)[:, None] * 6,
                       np.array([0.9, 0.5, 0.2])) for _ in range(3)]
    return SampleView(["ego", "1001", "-1"], 7, feats, conf, poses, occ if with_occupancy else None, dets)


def _strategy(name: str, **args):
    return build_strategy(name, C, GRID, STRIDE, **args).eval()


CONFIGS = [("dense", {}), ("dense", {"dtype": "fp16", "compress_ratio": 4}), ("where2comm", {}),
           ("where2comm", {"request": True}), ("supply_demand", {}), ("supply_demand", {"hybrid": True}),
           ("codebook", {}), ("codebook", {"solver": "none"}), ("late", {})]


@pytest.mark.parametrize("name,args", CONFIGS, ids=[f"{n}-{'-'.join(a)}" for n, a in CONFIGS])
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(budget=st.integers(min_value=90, max_value=40_000))
def test_every_agent_fits_its_budget_and_bytes_are_len_of_the_encoding(name, args, budget):
    sends = _strategy(name, **args).transmit(_view(), budget)
    per_agent: dict[str, int] = {}
    for s in sends:
        assert s.nbytes == len(encode(s.message)) == len(s.data)
        assert decode(s.data).sender_id == s.message.sender_id
        per_agent[s.message.sender_id] = per_agent.get(s.message.sender_id, 0) + s.nbytes
    assert max(per_agent.values()) <= budget
    assert {"1001", "-1"} <= set(per_agent)  # every collaborator sends (at least an Empty message)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_budget_below_the_smallest_message_is_a_clear_error(name):
    floor = min_message_bytes("1001")
    with pytest.raises(BudgetError, match=f"below the smallest message.*{floor - 4}|below the smallest"):
        _strategy(name).transmit(_view(), min_message_bytes("ego") - 1)


def test_more_budget_sends_more_cells_most_confident_first():
    strat = _strategy("where2comm", dtype="fp32")
    view = _view()
    counts = []
    for budget in (200, 1_000, 3_000, 10_000):
        msg = decode([s for s in strat.transmit(view, budget) if s.message.sender_id == "1001"][0].data)
        counts.append(0 if not isinstance(msg.payload, SparseCells) else msg.payload.num_cells)
        if counts[-1]:
            sent_conf = gaussian_smooth(view.confidence[1:2], 1.0).flatten()[torch.from_numpy(msg.payload.indices)]
            unsent = torch.ones(H * W, dtype=torch.bool)
            unsent[torch.from_numpy(msg.payload.indices)] = False
            assert sent_conf.min() >= gaussian_smooth(view.confidence[1:2], 1.0).flatten()[unsent].max() - 1e-6
    assert counts == sorted(counts) and counts[0] < counts[-1]


def test_receive_rebuilds_exactly_the_sent_cells():
    strat = _strategy("where2comm", dtype="fp32")
    view = _view()
    sends = strat.transmit(view, None)
    rx = strat.receive([decode(s.data) for s in sends], "cpu")
    assert len(rx.features) == 2
    for row, (feats, mask) in enumerate(zip(rx.features, rx.masks), start=1):
        sent = mask[0] > 0
        assert sent.any() and not sent.all()
        torch.testing.assert_close(feats[:, sent], view.features[row][:, sent])
        assert torch.all(feats[:, ~sent] == 0)
        smooth = gaussian_smooth(view.confidence[row:row + 1], 1.0)[0, 0]
        assert torch.equal(sent, smooth > 0.01)


def test_supply_demand_sends_only_cells_the_ego_lacks():
    strat = _strategy("supply_demand", threshold=0.05)
    sends = strat.transmit(_view(), None)
    assert sends[0].role == "request" and sends[0].message.sender_id == "ego"
    for s in sends[1:]:
        idx = decode(s.data).payload.indices
        assert idx.size > 0 and np.all(idx % W >= 16)  # the ego's dense left half is never requested


def test_codebook_information_filling_never_sends_a_cell_twice():
    view = _view(spread=2.4)  # 3 cells either side: the middle blobs overlap on 2 ego columns

    def ego_cells(sends) -> dict[str, set]:
        out = {}
        for s in sends:
            payload = decode(s.data).payload
            if s.role == "features":
                assert isinstance(payload, CodebookIndices) and payload.codes.shape[1] == 6
                shift = 3 if s.message.sender_id == "1001" else -3
                out[s.message.sender_id] = {(i // W, i % W + shift) for i in payload.indices.tolist()}
        return out

    sends = _strategy("codebook", demand_threshold=0.5).transmit(view, None)
    assert [s.role for s in sends] == ["request", "supply", "supply", "features", "features"]
    filled = ego_cells(sends)
    assert filled["1001"] and filled["-1"] and not (filled["1001"] & filled["-1"])  # overlap filled once
    both = ego_cells(_strategy("codebook", solver="none").transmit(view, None))
    overlap = both["1001"] & both["-1"]
    assert len(overlap) >= 16  # without the solver both senders spend bytes on the shared cells
    for r, c in overlap:  # with it, each shared cell comes from the nearer sender only
        nearer = "1001" if GRID.cell_centers(STRIDE)[0][c] > 0 else "-1"
        assert (r, c) in filled[nearer]


def test_codebook_rejects_codes_of_another_codebook():
    a, b = _strategy("codebook"), _strategy("codebook")
    with torch.no_grad():
        b.rep.codes.add_(0.5)
    msg = decode([s for s in a.transmit(_view(), None) if s.role == "features"][0].data)
    assert isinstance(msg.payload, CodebookIndices)
    assert len(a.receive([msg], "cpu").features) == 1
    with pytest.raises(WireError, match="codebook"):
        b.receive([msg], "cpu")


def test_codebook_training_reduces_reconstruction_error():
    torch.manual_seed(0)
    strat = build_strategy("codebook", C, GRID, STRIDE, size=16)
    x = torch.rand(4, C, 8, 8) * torch.rand(4, 1, 8, 8)
    opt = torch.optim.Adam(strat.parameters(), lr=1e-2)
    first = None
    for _ in range(150):
        _, aux = strat.rep.roundtrip(x)
        loss = sum(aux.values())
        first = float(aux["loss_comm_recon"].detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    strat.eval()
    out, aux = strat.rep.roundtrip(x)
    assert float(aux["loss_comm_recon"]) < 0.5 * first
    # the byte path restores what the training path computes (same codes, same restore head)
    view = SampleView(["e", "s"], 0, torch.cat([x[:1], x[1:2]]).repeat(1, 1, 4, 4),
                      torch.ones(2, 1, 32, 32), torch.eye(4).repeat(2, 1, 1))
    sends = strat.transmit(view, None)
    rx = strat.receive([decode(s.data) for s in sends if s.role == "features"], "cpu")
    ref, _ = strat.rep.roundtrip(view.features[1:2])
    sent = rx.masks[0][0] > 0
    torch.testing.assert_close(rx.features[0][:, sent], ref[0][:, sent], atol=1e-5, rtol=1e-5)


def test_hybrid_sends_confident_boxes_and_features():
    strat = _strategy("supply_demand", hybrid=True, box_threshold=0.3)
    sends = strat.transmit(_view(), None)
    rx = strat.receive([decode(s.data) for s in sends if s.role == "features"], "cpu")
    assert len(rx.boxes) == 2 and len(rx.features) == 2
    payload, _ = rx.boxes[0]
    assert isinstance(payload, Boxes) and np.allclose(payload.scores, [0.9, 0.5])


def test_late_keeps_the_highest_scores_under_a_small_budget():
    strat = _strategy("late")
    small = min_message_bytes("1001") + 4 + 33 * 2  # header + two boxes (7 f32 + score + label each)
    msg = decode(strat.transmit(_view(), small)[0].data)
    assert isinstance(msg.payload, Boxes) and np.allclose(msg.payload.scores, [0.9, 0.5])


def test_training_simulation_masks_only_collaborators_and_returns_aux_losses():
    torch.manual_seed(0)
    view = _view()
    per_sample = torch.tensor([3])
    for name in ("where2comm", "codebook", "dense"):
        strat = build_strategy(name, C, GRID, STRIDE, **({"compress_ratio": 2} if name == "dense" else {}))
        feats = view.features.clone().requires_grad_(True)
        out, mask, aux = strat.simulate(feats, view.confidence, per_sample)
        assert out.shape == feats.shape
        if name == "dense":
            assert mask is None and "loss_comm_recon" in aux
        else:
            assert mask.shape == (3, 1, H, W) and torch.all(mask[0] == 1)
            assert set(torch.unique(mask).tolist()) <= {0.0, 1.0}
        torch.testing.assert_close(out[0], feats[0])  # the ego's own map never goes through the wire
        (out.sum() + sum(aux.values(), torch.zeros(()))).backward()
        assert feats.grad is not None


def test_warp_helpers_round_trip_a_mask():
    mask = torch.zeros(1, 1, H, W)
    mask[0, 0, 10:14, 20:24] = 1
    tf = _pose(2.4, -1.6, math.pi / 2)[None]
    back = warp_maps(warp_maps(mask, tf, GRID, STRIDE), invert_rigid(tf), GRID, STRIDE)
    assert torch.equal(back, mask)


def test_unknown_strategy_and_bad_arguments_are_config_errors():
    with pytest.raises(ConfigError, match="unknown communication strategy 'x'"):
        build_strategy("x", C, GRID, STRIDE)
    with pytest.raises(ConfigError, match="train_selection"):
        build_strategy("where2comm", C, GRID, STRIDE, train_selection="sometimes")
    with pytest.raises(ConfigError, match="needs LiDAR occupancy"):
        _strategy("supply_demand").transmit(_view(with_occupancy=False), None)
