"""The communication runtime: one exchange outside any model (select -> encode -> deliver ->
decode -> rebuild), what the closed loop runs once per tick."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from coperception.comm.channel import Channel
from coperception.comm.message import DenseFeatures, Empty, Message, SparseCells
from coperception.comm.runtime import check_channel, deliver, exchange, has_content, occupancy_maps
from coperception.comm.select import SampleView, sent
from coperception.comm.strategies import build_strategy
from coperception.comm.wire import encode
from coperception.errors import ConfigError
from coperception.geometry.grid import BEVGrid
from coperception.structures.cells import Pillars
from coperception.structures.records import Detections

GRID = BEVGrid((-6.4, -6.4, -3.0, 6.4, 6.4, 1.0), (0.4, 0.4, 4.0))  # 32 x 32 cells
C, STRIDE = 4, 2


def _view(world: bool = False) -> SampleView:
    g = torch.Generator().manual_seed(0)
    h, w = GRID.feature_shape(STRIDE)
    feats = torch.randn(3, C, h, w, generator=g)
    conf = torch.rand(3, 1, h, w, generator=g)
    poses = torch.eye(4).repeat(3, 1, 1)
    poses[1, 0, 3], poses[2, 1, 3] = 2.0, -1.6
    dets = [Detections(np.array([[1.0, 2.0, -1.0, 4.5, 2.0, 1.6, 0.1]]), np.array([0.9]), frame=f"agent:{a}")
            for a in ("ego", "b", "c")]
    world_from = poses.double() if world else None
    return SampleView(("ego", "b", "c"), 5, feats, conf, poses, None, dets, world_from)


def test_perfect_link_rebuilds_each_collaborators_dense_map_from_its_bytes():
    strat = build_strategy("dense", C, GRID, STRIDE)
    view = _view()
    out = exchange(strat, view, None)
    assert [s.message.sender_id for s in out.sent] == ["b", "c"]
    assert all(s.nbytes == len(encode(s.message)) for s in out.sent)
    assert len(out.received.features) == 2
    for row, rebuilt in zip((1, 2), out.received.features):
        torch.testing.assert_close(rebuilt, view.features[row])  # fp32 maps: lossless


def test_late_strategy_delivers_boxes_and_a_lossy_channel_drops_them():
    strat = build_strategy("late", C, GRID, STRIDE)
    out = exchange(strat, _view(), None)
    assert len(out.received.boxes) == 2 and not out.received.features
    lossy = Channel(seed=0, loss_prob=1.0)
    out = exchange(strat, _view(), None, lossy)
    assert len(out.sent) == 2 and not out.received.boxes  # sent, counted, never arrived


def test_stale_message_pose_is_relative_to_the_receivers_current_pose():
    world_sender_then = np.eye(4)
    world_sender_then[:3, 3] = [100.0, 50.0, 0.0]
    world_ego_now = np.eye(4)
    world_ego_now[:3, 3] = [90.0, 50.0, 0.0]
    msg = Message("7", 3, world_sender_then, DenseFeatures(np.ones((2, 4, 4), np.float32)))
    (out,) = deliver([sent(msg, ["1"])], "1", None, 4, world_ego_now)
    np.testing.assert_allclose(out.world_from_lidar[:3, 3], [10.0, 0.0, 0.0])


def test_messages_without_content_and_to_others_are_not_delivered():
    empty = Message("b", 0, np.eye(4), Empty())
    no_cells = Message("c", 0, np.eye(4), SparseCells((0, 4, 4), torch.zeros(0, dtype=torch.long),
                                                      np.zeros((0, 0), np.float32)))
    dense = Message("d", 0, np.eye(4), DenseFeatures(np.ones((2, 4, 4), np.float32)))
    assert not has_content(empty) and not has_content(no_cells) and has_content(dense)
    got = deliver([sent(empty, ["ego"]), sent(no_cells, ["ego"]), sent(dense, ["other"])], "ego", None, 0, None)
    assert got == []


def test_a_delaying_channel_needs_one_frame_at_a_time_with_world_poses():
    check_channel(Channel(seed=0), 4, False)  # no latency: anything goes
    with pytest.raises(ConfigError, match="batch size 1"):
        check_channel(Channel(seed=0, latency_frames=2), 2, True)
    with pytest.raises(ConfigError, match="world poses"):
        check_channel(Channel(seed=0, latency_frames=2), 1, False)


def test_occupancy_counts_points_per_feature_cell():
    # agent 0: 5 points in grid cell (row 0, col 0) and 3 in (row 3, col 3); agent 1: 2 in (2, 5)
    coords = torch.tensor([[0, 0, 0], [0, 3, 3], [1, 2, 5]])
    cells = Pillars(torch.zeros(3, 32, 4), coords, torch.tensor([5, 3, 2]), 2)
    occ = occupancy_maps(cells, 2, GRID, STRIDE)
    assert occ.shape == (2, 1, 16, 16)
    assert occ[0, 0, 0, 0] == 5 and occ[0, 0, 1, 1] == 3 and occ[1, 0, 1, 2] == 2 and occ.sum() == 10
    with pytest.raises(ConfigError, match="voxelised cells"):
        occupancy_maps(None, 2, GRID, STRIDE)
