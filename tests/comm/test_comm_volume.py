"""Communication-volume accounting (coperception/comm/volume.py)."""

import math

import numpy as np
import pytest

from coperception.comm.message import Message, SparseCells
from coperception.comm.volume import CommStats, log2_bytes, mbps
from coperception.comm.wire import encode
from coperception.errors import ConfigError


def test_units():
    assert log2_bytes(1024) == 10.0 and log2_bytes(0) == -math.inf
    assert mbps(125_000) == pytest.approx(10.0)  # 125 kB per frame at 10 Hz = 10 Mbit/s
    assert mbps(125_000, hz=20) == pytest.approx(20.0)
    with pytest.raises(ValueError):
        log2_bytes(-1)
    with pytest.raises(ConfigError):
        CommStats(hz=0)


def test_summary_by_hand():
    s = CommStats()
    s.record(0, "a", ["ego"], 1000)
    s.record(0, "a", ["ego"], 500)  # a second message on the same link in the same frame
    s.record(0, "b", ["ego", "a"], 2000)  # one broadcast heard by two receivers
    s.record(1, "a", ["ego"], 3000)
    s.record(1, "b", [], 0)  # present, sent nothing
    out = s.summary()
    # agent-frames: (0,a)=1500, (0,b)=2000, (1,a)=3000, (1,b)=0 -> mean 1625
    assert out.bytes_per_agent_frame == 1625 and out.log2_bytes_per_agent_frame == pytest.approx(math.log2(1625))
    # link-frames: (0,a,ego)=1500, (0,b,ego)=2000, (0,b,a)=2000, (1,a,ego)=3000 -> mean 2125
    assert out.bytes_per_link_frame == 2125 and out.mbps_per_link == pytest.approx(2125 * 8 * 10 / 1e6)
    # per link: a->ego 2250, b->ego 2000, b->a 2000
    assert s.per_link()[("a", "ego")] == 2250 and out.max_mbps_per_link == pytest.approx(mbps(2250))
    assert s.per_agent() == {"a": 2250, "b": 1000}
    assert (out.frames, out.agents, out.links, out.messages, out.total_bytes) == (2, 2, 3, 4, 6500)
    assert set(out.as_dict()) >= {"bytes_per_agent_frame", "log2_bytes_per_agent_frame", "mbps_per_link"}


def test_empty_stats_and_real_message_sizes():
    assert CommStats().summary().log2_bytes_per_agent_frame == -math.inf
    rng = np.random.default_rng(0)
    idx = rng.choice(100 * 352, 1760, replace=False)
    data = encode(Message("cav_1", 0, np.eye(4), SparseCells((64, 100, 352), idx, rng.random((1760, 64)), "fp16")))
    s = CommStats()
    s.record(0, "cav_1", ["ego"], len(data))
    # 1760 cells x 64 channels x 2 bytes plus the index set, header, pose and CRC
    assert 1760 * 64 * 2 < s.summary().bytes_per_agent_frame < 1760 * 64 * 2 + 2000
