"""LiDAR model: beam tables, ray counts, and points that are really in the LiDAR frame."""

from __future__ import annotations

import numpy as np
import pytest

from coperception.errors import ConfigError
from coperception.sim.lidar import BEAM_TABLES_DEG, beam_elevations, lidar_model, rotate_rows
from coperception.sim.simulation import Simulation


@pytest.mark.parametrize("channels, top, bottom, spacing", [
    (64, 2.0, -24.9, None), (32, 10.67, -30.67, 1.3333), (16, 15.0, -15.0, 2.0)])
def test_beam_tables(channels, top, bottom, spacing):
    table = BEAM_TABLES_DEG[channels]
    assert len(table) == channels
    assert table[0] == pytest.approx(top) and table[-1] == pytest.approx(bottom)
    assert np.all(np.diff(table) < 0)  # top beam first, strictly descending
    if spacing is not None:
        np.testing.assert_allclose(-np.diff(table), spacing, atol=1e-3)
    else:  # HDL-64E-like: 1/3 deg upper block, about 1/2 deg lower block
        np.testing.assert_allclose(-np.diff(table[:32]), 10.33 / 31, atol=1e-3)
        assert 0.45 < -np.diff(table[32:]).mean() < 0.55


def test_unknown_beam_count_is_a_config_error():
    with pytest.raises(ConfigError, match="beam table"):
        beam_elevations(0)


def test_64_beam_scan_is_115k_unit_rays_with_table_elevations():
    model = lidar_model(64, 1800)
    assert model.rays == 115_200 and model.directions.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(model.directions, axis=1), 1.0, atol=1e-6)
    elev = np.degrees(np.arcsin(model.directions[:, 2])).reshape(1800, 64)
    np.testing.assert_allclose(elev, np.broadcast_to(BEAM_TABLES_DEG[64], (1800, 64)), atol=1e-4)
    az = np.degrees(np.arctan2(model.directions[::64, 1], model.directions[::64, 0])) % 360
    np.testing.assert_allclose(az, np.arange(1800) * 0.2, atol=1e-3)


def test_rotate_rows_matches_a_matrix_product():
    rng = np.random.default_rng(0)
    rows = lidar_model(16, 90).directions_rows
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    out = np.empty_like(rows)
    np.testing.assert_allclose(rotate_rows(rows, q, out), q @ rows, atol=1e-6)


def _world_points(obs):
    p = obs.world_from_lidar
    return obs.points[:, :3].astype(np.float64) @ p[:3, :3].T + p[:3, 3]


def _inside(points, box, margin):
    x, y, z, l, w, h, yaw = box
    d = points - [x, y, z]
    c, s = np.cos(yaw), np.sin(yaw)
    u, v = c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1]
    # Above the bottom 5 cm so that ground/curb returns under a body do not count.
    return (np.abs(u) <= l / 2 + margin) & (np.abs(v) <= w / 2 + margin) & (d[:, 2] <= h / 2 + margin) \
        & (d[:, 2] >= -h / 2 + 0.05)


def test_points_are_in_the_lidar_frame_and_land_on_their_boxes(tiny_config):
    """With no noise, the points counted on an object lie inside its box once mapped to the world."""
    cfg = tiny_config(lidar={"noise_std": 0.0, "dropout": 0.0})
    frame = Simulation(cfg, seed=3).step()
    checked = 0
    for agent_id, obs in frame.observations.items():
        pts = _world_points(obs)
        vis = frame.visibility[agent_id]
        inside = np.stack([_inside(pts, b, 0.02) for b in frame.objects.boxes])
        counted = inside.sum(1)
        seen = vis > 0
        assert np.all(counted[seen] >= vis[seen]), agent_id
        # Points in a box that are not that object's own returns: ground patches under bodies only.
        assert (counted[seen] - vis[seen]).sum() <= 0.05 * vis[seen].sum() + 5
        checked += int(seen.sum())
        ground = ~inside.any(0)
        # Everything else is the static world: ground at z 0 or the curb at 0.15 m, or higher.
        assert pts[ground, 2].min() > -0.01
    assert checked >= 20


def test_noise_dropout_and_intensity(tiny_config):
    clean = Simulation(tiny_config(lidar={"noise_std": 0.0, "dropout": 0.0}), seed=5).step()
    noisy = Simulation(tiny_config(lidar={"noise_std": 0.05, "dropout": 0.3}), seed=5).step()
    for agent_id, obs in clean.observations.items():
        n_clean, n_noisy = len(obs.points), len(noisy.observations[agent_id].points)
        assert 0.6 < n_noisy / n_clean < 0.8  # 30% dropout
        # ranges from the physical sensor: an RSU reports in a virtual frame below its mount
        lidar = tiny_config().lidar
        mount = np.array([0.0, 0.0, lidar.rsu_height - lidar.height if obs.is_infrastructure else 0.0])
        r = np.linalg.norm(obs.points[:, :3] - mount, axis=1)
        assert r.min() >= 0.5 - 1e-4 and r.max() <= 120.0 + 1e-3
        i = obs.points[:, 3]
        assert i.min() >= 0.005 and i.max() <= 1.0 and i.std() > 0.02
        road = _world_points(obs)[:, 2] < 0.01  # flat asphalt: no noise means exactly z = 0
        assert road.sum() > 100
        noisy_z = _world_points(noisy.observations[agent_id])[:, 2]
        assert noisy_z[noisy_z < 0.5].std() > 0.005
        flat = np.abs(_world_points(obs)[road, 2]) < 1e-3  # the rest: the foot of curb faces
        assert flat.mean() > 0.99


def test_vehicle_lidar_is_at_roof_height_and_rsu_mounted_high(tiny_config):
    cfg = tiny_config()
    frame = Simulation(cfg, seed=1).step()
    for obs in frame.observations.values():
        z = obs.world_from_lidar[2, 3]
        if obs.is_infrastructure:
            # mounted at rsu_height, pitched; reported in a level virtual frame at vehicle LiDAR height
            assert cfg.lidar.rsu_height >= 4.0 and int(obs.agent_id) < 0
            assert z == pytest.approx(cfg.lidar.height)
            assert np.allclose(obs.world_from_lidar[:3, :3] @ [0, 0, 1], [0, 0, 1])
            top = obs.points[:, 2].max()
            assert top > cfg.lidar.rsu_height - cfg.lidar.height  # sees buildings above its mount
            ground = _world_points(obs)[:, 2]
            assert (np.abs(ground) < 0.05).sum() > 500          # road hits land on z = 0 in the world
        else:
            assert 1.85 <= z <= 3.5 and int(obs.agent_id) > 0
        assert obs.lidar_channels == 16
    assert frame.ego_id == list(frame.observations)[0] and not frame.ego.is_infrastructure
