"""Traffic: signals cycle leg by leg, vehicles enter junctions only on green/yellow, never overlap,
keep moving, and the run is reproducible from its seed."""

from __future__ import annotations

import numpy as np
import pytest

from coperception.sim.config import LightConfig
from coperception.sim.roads import APPROACH
from coperception.sim.simulation import Simulation
from coperception.sim.traffic import GREEN, RED, YELLOW, TrafficLights


def test_lights_give_each_leg_its_own_green():
    legs = np.array([[True, True, True, True], [True, False, True, False]])
    lights = TrafficLights(legs, LightConfig(green=8.0, yellow=3.0, all_red=1.5), np.array([0.0, 5.0]))
    states = np.stack([lights.state(t) for t in np.arange(0.0, 100.0, 0.1)])  # (T, J, 4)
    not_red = states != RED
    assert not_red.sum(2).max() <= 1  # never two legs at once
    for j, n_legs in enumerate(legs.sum(1)):
        share = (states[:, j] == GREEN).mean(0)[legs[j]]
        np.testing.assert_allclose(share, 8.0 / (12.5 * n_legs), atol=0.03)
        assert not not_red[:, j, ~legs[j]].any()
    assert (states == YELLOW).any()


def _corners(boxes):
    x, y, l, w, yaw = boxes[:, 0], boxes[:, 1], boxes[:, 3], boxes[:, 4], boxes[:, 6]
    c, s = np.cos(yaw), np.sin(yaw)
    local = np.array([[0.5, 0.5], [0.5, -0.5], [-0.5, -0.5], [-0.5, 0.5]])
    lx, ly = local[None, :, 0] * l[:, None], local[None, :, 1] * w[:, None]
    c, s, x, y = c[:, None], s[:, None], x[:, None], y[:, None]
    return np.stack([x + c * lx - s * ly, y + s * lx + c * ly], -1)


def _overlapping_pairs(boxes):
    """Brute-force separating-axis test over all pairs of BEV rectangles -> list of (i, j)."""
    corners = _corners(boxes)
    n = len(boxes)
    i, j = np.triu_indices(n, 1)
    radius = np.hypot(boxes[:, 3], boxes[:, 4]) / 2
    near = np.hypot(*(boxes[i, :2] - boxes[j, :2]).T) < radius[i] + radius[j]
    i, j = i[near], j[near]
    separated = np.zeros(len(i), bool)
    for a, b in ((i, j), (j, i)):
        edges = corners[a][:, [1, 3]] - corners[a][:, [0, 0]]  # two edge directions of box a
        for e in range(2):
            axis = edges[:, e]
            pa = np.einsum("nkd,nd->nk", corners[a], axis)
            pb = np.einsum("nkd,nd->nk", corners[b], axis)
            separated |= (pa.max(1) < pb.min(1)) | (pb.max(1) < pa.min(1))
    return list(zip(i[~separated], j[~separated]))


@pytest.mark.parametrize("seed", [0, 1])
def test_vehicles_obey_lights_and_never_collide(tiny_config, seed):
    sim = Simulation(tiny_config(traffic={"vehicles": 30, "cyclists": 3}), seed=seed)
    roads, veh = sim.world.roads, sim.vehicles
    entries = red_entries = 0
    start_s, start_lane = veh.s.copy(), veh.lane.copy()
    travelled = np.zeros(len(veh))
    for _ in range(600):  # 30 s of 50 ms ticks
        state = sim.lights.state(sim.time)
        lane_before, s_before = veh.lane.copy(), veh.s.copy()
        front_before = s_before + veh.length / 2 - roads.lane_length[lane_before]  # < 0: before the stop line
        sim._tick()
        front_after = np.where(veh.lane == lane_before, veh.s + veh.length / 2 - roads.lane_length[veh.lane], np.inf)
        # A vehicle enters the junction when its front bumper crosses the stop line.
        entered = (roads.lane_kind[lane_before] == APPROACH) & (front_before < 0) & (front_after >= 0)
        light = state[roads.lane_junction[lane_before], roads.lane_side[lane_before]]
        entries += int(entered.sum())
        red_entries += int((entered & (light == RED)).sum())
        same = veh.lane == lane_before
        travelled += np.where(same, veh.s - s_before, 0.0)
        boxes, _ = sim.object_boxes()
        moving = boxes[: len(veh)]
        parked = sim.world.parked_boxes
        assert not _overlapping_pairs(np.concatenate([moving, parked])), f"collision at t={sim.time:.2f}"
    assert entries >= 10 and red_entries == 0
    assert np.median(travelled) > 20.0  # traffic flows
    assert np.all(travelled >= -1e-9)  # never backwards
    assert (veh.lane != start_lane).sum() > len(veh) // 3 or np.abs(veh.s - start_s).mean() > 20


def test_separating_axis_helper_detects_overlap():
    a = np.array([[0, 0, 0.75, 4.5, 1.9, 1.5, 0.0], [3.0, 0.5, 0.75, 4.5, 1.9, 1.5, 0.4], [20, 0, 0.75, 4, 2, 1.5, 0]])
    assert _overlapping_pairs(a) == [(0, 1)]


def test_vehicles_stay_on_their_lanes(tiny_config):
    sim = Simulation(tiny_config(), seed=2)
    for _ in range(100):
        sim._tick()
    veh = sim.vehicles
    xy, yaw = sim.world.roads.pose(veh.lane, veh.s)
    boxes, _ = sim.object_boxes()
    straight = np.abs(np.angle(np.exp(1j * (boxes[: len(veh), 6] - yaw)))) < 1e-6
    assert straight.mean() > 0.7  # most are on straight lanes, where the body centre is on the path
    np.testing.assert_allclose(boxes[: len(veh), :2][straight], xy[straight], atol=1e-6)
    # On curves the body is a chord: its centre stays within the sagitta of the path.
    assert np.hypot(*(boxes[: len(veh), :2] - xy).T).max() < 3.5
    assert np.all(veh.s >= 0) and np.all(veh.s <= sim.world.roads.lane_length[veh.lane] + 1e-9)
    assert np.all(veh.v >= 0) and veh.v.max() < 20.0
