"""The ground's interval-table classification equals the exact block / paint rules, and the
background writer keeps order and reports errors."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from coperception.sim.config import TownConfig
from coperception.sim.generator import BackgroundCalls
from coperception.sim.ground import _BLOCK, Ground, _AxisIntervals
from coperception.sim.roads import build_road_network


def _ground(**town) -> Ground:
    cfg = TownConfig(**town)
    roads = build_road_network(cfg)
    return Ground.from_town(cfg, np.unique(roads.centers[:, 0]), np.unique(roads.centers[:, 1]))


@pytest.mark.parametrize("town", [{}, {"roads_x": 2, "roads_y": 4, "block_size": 55.0, "lanes_per_direction": 1}])
def test_classification_matches_the_exact_rules(town):
    ground = _ground(**town)
    rng = np.random.default_rng(0)
    x0, y0, x1, y1 = ground.extent
    n = 400_000
    x = rng.uniform(x0 - 30, x1 + 30, n).astype(np.float32)
    y = rng.uniform(y0 - 30, y1 + 30, n).astype(np.float32)
    near = rng.random(n) < 0.5  # half of them across roads, where the paint edges are
    x[near] = (ground.xs[rng.integers(0, len(ground.xs), near.sum())] + rng.uniform(-10, 10, near.sum()))
    exact = np.where(ground.in_block(x, y), _BLOCK, ground.road_material(x, y))
    got = ground._classify(x, y)
    ax, ay, _ = ground._tables
    edge = np.minimum(np.abs(x[:, None] - ax.bounds).min(1), np.abs(y[:, None] - ay.bounds).min(1))
    assert np.all((got == exact) | (edge < 1e-4))
    assert len(np.unique(exact)) >= 4  # blocks, road, both paints, field


def test_axis_intervals_at_and_between_boundaries():
    axis = _AxisIntervals.of(np.array([5.0, -1.0, 2.0, 2.0, 2.03]))
    v = np.array([-50.0, -1.0, -0.999, 1.99, 2.0, 2.01, 2.03, 4.0, 5.0, 80.0], np.float32)
    np.testing.assert_array_equal(axis.index(v), np.searchsorted(axis.bounds, v, side="right"))
    assert len(axis.midpoints()) == len(axis.bounds) + 1 == 5


def test_background_calls_run_in_order_and_raise():
    seen, threads = [], set()
    calls = BackgroundCalls(depth=2)
    for i in range(20):
        calls.submit(lambda k: (seen.append(k), threads.add(threading.get_ident())), i)
    calls.drain()
    assert seen == list(range(20)) and threading.get_ident() not in threads

    def fail():
        raise OSError("disk full")

    calls.submit(fail)
    with pytest.raises(OSError, match="disk full"):
        calls.close()
