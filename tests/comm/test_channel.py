"""The seeded channel (coperception/comm/channel.py): budget, loss, corruption, latency, pose noise."""

import numpy as np
import pytest

from coperception.comm.channel import Channel, latest_per_sender
from coperception.comm.message import Boxes, DenseFeatures, Empty, Message, SparseCells
from coperception.comm.wire import encode, min_message_bytes
from coperception.errors import BudgetError, ConfigError
from coperception.geometry.pose import se3_from_xyz_rpy, yaw_of


def _pose(t):
    """A sender driving along x at 10 m/s (1 m per frame at 10 Hz)."""
    return se3_from_xyz_rpy(100.0 + t, 20.0, 1.5, yaw=0.3)


def _data(sender, t, n=3):
    boxes = np.tile([[5.0, 1.0, -1.0, 4.0, 1.8, 1.5, 0.1]], (n, 1))
    return encode(Message(sender, t, _pose(t), Boxes(boxes, np.full(n, 0.9), np.zeros(n))))


def test_perfect_channel_delivers_decoded_messages_and_counts_len_of_encoding():
    ch = Channel(seed=0)
    sizes = []
    for t in range(3):
        for s in ("cav_1", "rsu_2"):
            data = _data(s, t, n=t + 1)
            sizes.append(len(data))
            ch.send(t, s, "ego", data)
        got = ch.deliver(t, "ego")
        assert [m.sender_id for m in got] == ["cav_1", "rsu_2"] and all(m.timestamp == t for m in got)
        np.testing.assert_array_equal(got[0].world_from_lidar[:3, 3], _pose(t)[:3, 3])
    st = ch.link_stats("cav_1", "ego")
    assert st.sent_messages == st.delivered_messages == 3
    total = st.sent_bytes + ch.link_stats("rsu_2", "ego").sent_bytes
    assert total == sum(sizes) == ch.volume.summary().total_bytes


def test_latency_delivers_late_with_the_capture_pose():
    ch = Channel(seed=1, latency_frames=2)
    ch.send(5, "cav_1", "ego", _data("cav_1", 5))
    assert ch.deliver(5, "ego") == [] and ch.deliver(6, "ego") == []
    (msg,) = ch.deliver(7, "ego")
    assert msg.timestamp == 5
    # the stale message carries the pose at capture (frame 5), not the sender's pose now (frame 7)
    np.testing.assert_allclose(msg.world_from_lidar, _pose(5), atol=1e-6)
    assert ch.pending("ego") == 0


def test_stale_messages_are_dropped_and_fusion_falls_back_to_what_arrived():
    ch = Channel(seed=2, latency_frames=1, latency_jitter_frames=3, max_staleness_frames=2)
    for t in range(40):
        ch.send(t, "cav_1", "ego", _data("cav_1", t))
    delivered = []
    for t in range(45):
        delivered += [(t, m) for m in ch.deliver(t, "ego")]
    st = ch.link_stats("cav_1", "ego")
    assert st.late_messages > 0 and st.delivered_messages > 0
    assert st.late_messages + st.delivered_messages == 40
    assert all(0 <= t - m.timestamp <= 2 for t, m in delivered)


def test_corrupted_messages_fail_the_crc_and_other_links_still_deliver():
    ch = Channel(seed=3, corrupt_prob=0.5)
    receipts = [ch.send(t, "cav_1", "ego", _data("cav_1", t)) for t in range(60)]
    got = [m for t in range(60) for m in ch.deliver(t, "ego")]
    n_corrupt = sum(r.corrupted for r in receipts)
    assert 10 < n_corrupt < 50
    st = ch.link_stats("cav_1", "ego")
    assert st.corrupt_messages == n_corrupt and len(got) == 60 - n_corrupt
    assert sorted(m.timestamp for m in got) == [r.frame_index for r in receipts if not r.corrupted]
    clean = Channel(seed=3, corrupt_prob=1.0)
    clean.send(0, "cav_1", "ego", _data("cav_1", 0))
    clean.send(0, "rsu_2", "ego", b"")  # empty bytes cannot be flipped; dropped as undecodable
    assert clean.deliver(0, "ego") == [] and clean.link_stats("rsu_2", "ego").corrupt_messages == 1


def test_loss_is_seeded_per_event_and_independent_of_payload_and_other_links():
    def pattern(seed, payload_n, extra_link):
        ch = Channel(seed=seed, loss_prob=0.3)
        out = []
        for t in range(200):
            if extra_link:
                ch.send(t, "rsu_2", "ego", _data("rsu_2", t))
            out.append(ch.send(t, "cav_1", "ego", _data("cav_1", t, payload_n)).lost)
        return out

    a = pattern(4, 1, False)
    assert a == pattern(4, 25, True)
    assert a != pattern(5, 1, False)
    assert 0.2 < np.mean(a) < 0.4


def test_budget_is_enforced_per_link_per_frame():
    data = _data("cav_1", 0)
    ch = Channel(seed=0, budget_bytes_per_link=len(data) + 10)
    ch.send(0, "cav_1", "ego", data)
    with pytest.raises(BudgetError, match="fit the payload"):
        ch.send(0, "cav_1", "ego", data)  # second message of the frame would overrun
    ch.send(0, "cav_1", "rsu_2", data)  # another link has its own budget
    ch.send(1, "cav_1", "ego", data)  # the next frame starts afresh
    st = ch.link_stats("cav_1", "ego")
    assert (st.sent_messages, st.refused_messages, st.refused_bytes) == (2, 1, len(data))
    assert st.sent_bytes <= 2 * ch.budget


def test_budget_below_the_smallest_message_is_a_clear_error():
    floor = min_message_bytes("cav_1")
    empty = encode(Message("cav_1", 0, np.eye(4), Empty()))
    assert len(empty) == floor
    Channel(budget_bytes_per_link=floor).send(0, "cav_1", "ego", empty)  # an explicit empty message fits
    with pytest.raises(BudgetError, match="smallest message"):
        Channel(budget_bytes_per_link=floor - 1).send(0, "cav_1", "ego", empty)


def test_broadcast_is_one_transmission_for_the_agent_and_checks_every_link():
    data = _data("cav_1", 0)
    ch = Channel(seed=0, budget_bytes_per_link=len(data))
    ch.broadcast(0, "cav_1", ["ego", "rsu_2"], data)
    summary = ch.volume.summary()
    assert summary.bytes_per_agent_frame == len(data) and summary.links == 2
    with pytest.raises(BudgetError):
        ch.broadcast(0, "cav_1", ["cav_3", "ego"], data)  # ego's link is full: nothing is sent
    assert ch.link_stats("cav_1", "cav_3").sent_messages == 0


def test_pose_noise_statistics_and_same_noise_for_every_receiver():
    ch = Channel(seed=6, pose_noise_xyz_std=0.5, pose_noise_yaw_std=np.radians(1.0))
    dxyz, dyaw = [], []
    for t in range(400):
        data = _data("cav_1", t, n=1)
        ch.send(t, "cav_1", "ego", data)
        ch.send(t, "cav_1", "rsu_2", data)
        (a,), (b,) = ch.deliver(t, "ego"), ch.deliver(t, "rsu_2")
        np.testing.assert_array_equal(a.world_from_lidar, b.world_from_lidar)
        dxyz.append(a.world_from_lidar[:3, 3] - _pose(t)[:3, 3])
        dyaw.append(yaw_of(a.world_from_lidar) - yaw_of(_pose(t)))
    np.testing.assert_allclose(np.std(dxyz, axis=0), 0.5, rtol=0.15)
    assert abs(np.std(dyaw) - np.radians(1.0)) < np.radians(0.15)
    assert abs(np.mean(dyaw)) < np.radians(0.2)


def test_latest_per_sender_and_bad_configuration():
    ch = Channel(seed=0, latency_frames=0)
    for t in (0, 1):
        ch.send(t, "cav_1", "ego", _data("cav_1", t))
    ch.send(1, "rsu_2", "ego", encode(Message("rsu_2", 1, np.eye(4), SparseCells((2, 4, 4), [3], [[1.0, 2.0]]))))
    newest = latest_per_sender(ch.deliver(1, "ego"))
    assert sorted((m.sender_id, m.timestamp) for m in newest) == [("cav_1", 1), ("rsu_2", 1)]
    for bad in ({"loss_prob": 1.5}, {"latency_frames": -1}, {"budget_bytes_per_link": -3}, {"pose_noise_yaw_std": -1}):
        with pytest.raises(ConfigError):
            Channel(**bad)
    with pytest.raises(TypeError):
        ch.send(2, "cav_1", "ego", Message("cav_1", 2, np.eye(4), DenseFeatures(np.zeros((1, 2, 2)))))
