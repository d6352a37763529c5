"""The torch ray caster (used where Open3D is missing, e.g. GPU machines) against Embree."""

from __future__ import annotations

import numpy as np
import pytest

from coperception.errors import ConfigError
from coperception.sim import raycast
from coperception.sim.raycast import INVALID_ID, Mesh, RayBatch, box_mesh, cast_torch, quad_mesh


def _scene(seed: int = 0):
    rng = np.random.default_rng(seed)
    n = 40
    centers = np.column_stack([rng.uniform(-30, 30, n), rng.uniform(-30, 30, n), rng.uniform(0.5, 1.5, n)])
    sizes = np.column_stack([rng.uniform(1, 6, n), rng.uniform(1, 3, n), rng.uniform(1, 3, n)])
    boxes = box_mesh(centers, sizes, rng.uniform(-np.pi, np.pi, n))
    quads = quad_mesh([[0.0, 0.0, 0.01], [10.0, -5.0, 0.02]], [[8.0, 3.0], [4.0, 4.0]], [0.3, -1.0])
    mesh = Mesh.concat([boxes, quads])
    origins = np.array([[0.0, 0.0, 1.8], [12.0, -7.0, 4.0], [-20.0, 15.0, 1.0]])
    per = 3000
    az = rng.uniform(-np.pi, np.pi, 3 * per)
    el = rng.uniform(-0.5, 0.2, 3 * per)
    dirs = np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)]).astype(np.float32)
    return mesh, RayBatch(origins, np.array([0, per, 2 * per, 3 * per]), dirs)


def test_torch_caster_matches_embree():
    o3d = pytest.importorskip("open3d")
    mesh, rays = _scene()
    ours = cast_torch(mesh, rays, device="cpu", chunk_pairs=1 << 20)  # several chunks per group
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(mesh.vertices), o3d.core.Tensor(mesh.triangles))
    out = scene.cast_rays(o3d.core.Tensor.from_numpy(rays.aos()))
    t, ids, normals = out["t_hit"].numpy(), out["primitive_ids"].numpy(), out["primitive_normals"].numpy()
    hit = np.isfinite(t)
    assert 0.2 < hit.mean() < 0.95  # a scene with both hits and misses
    assert np.array_equal(np.isfinite(ours["t_hit"]), hit)
    np.testing.assert_allclose(ours["t_hit"][hit], t[hit], atol=1e-4)
    same = ours["primitive_ids"] == ids
    assert same.mean() > 0.999  # only rays through a shared edge may pick the other triangle
    assert (ours["primitive_ids"][~hit] == INVALID_ID).all() and (ours["primitive_normals"][~hit] == 0).all()
    cos = np.abs((ours["primitive_normals"][same & hit] * normals[same & hit]).sum(1))
    np.testing.assert_allclose(cos, 1.0, atol=1e-5)  # the same unit normal up to its sign


def test_torch_caster_without_any_hit_and_backend_choice(monkeypatch):
    mesh, rays = _scene(1)
    away = RayBatch(rays.origins[:1], np.array([0, 2]), np.array([[0.0, 0.0], [0.0, 0.0], [1.0, 1.0]], np.float32))
    out = cast_torch(mesh, away, device="cpu")
    assert np.isinf(out["t_hit"]).all() and (out["primitive_ids"] == INVALID_ID).all()
    empty = cast_torch(Mesh.empty(), rays, device="cpu")
    assert np.isinf(empty["t_hit"]).all()
    monkeypatch.setenv("COPERCEPTION_RAYCAST", "torch")
    assert raycast.raycast_backend() == "torch"
    monkeypatch.setenv("COPERCEPTION_RAYCAST", "optix")
    with pytest.raises(ConfigError, match="COPERCEPTION_RAYCAST"):
        raycast.raycast_backend()
    monkeypatch.setattr(raycast, "o3d", None)
    monkeypatch.setenv("COPERCEPTION_RAYCAST", "embree")
    with pytest.raises(ConfigError, match="open3d"):
        raycast.raycast_backend()
    monkeypatch.delenv("COPERCEPTION_RAYCAST")
    assert raycast.raycast_backend() == "torch"  # no Open3D: the torch caster


def test_a_simulated_frame_through_the_torch_caster(monkeypatch):
    """The whole sensing path runs on the torch caster and gives the same clouds as Embree."""
    pytest.importorskip("open3d")
    from coperception.config import merge
    from coperception.sim.scenarios import load_sim_config
    from coperception.sim.simulation import Simulation

    cfg = load_sim_config(preset="rsu_blind_corner", overrides=merge(
        {"lidar": {"channels": 16, "firing_rate_hz": 3000.0}, "traffic": {"vehicles": 8, "cyclists": 0, "pedestrians": 0}}, {}))
    embree = Simulation(cfg, seed=5).step()
    monkeypatch.setenv("COPERCEPTION_RAYCAST", "torch")
    torch_frame = Simulation(cfg, seed=5).step()
    for agent, obs in embree.observations.items():
        other = torch_frame.observations[agent].points
        assert abs(len(other) - len(obs.points)) <= max(3, len(obs.points) // 1000)
        if len(other) == len(obs.points):  # a ray grazing an edge may hit the neighbouring surface
            close = np.abs(other[:, :3] - obs.points[:, :3]).max(axis=1) < 2e-3
            assert close.mean() > 0.999
    for agent in embree.visibility:
        diff = np.abs(np.asarray(embree.visibility[agent]) - np.asarray(torch_frame.visibility[agent]))
        assert diff.max() <= 2
