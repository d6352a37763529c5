"""Occlusion comes from the ray casts: a car behind a building gets no points from an agent whose
view it blocks and points from one that sees it; the analytic ground equals a triangle ground."""

from __future__ import annotations

import numpy as np

from coperception.geometry.pose import se3_from_xyz_rpy
from coperception.sim.config import LidarConfig, TownConfig
from coperception.sim.generator import frame_visibility
from coperception.sim.ground import CURB, CURB_HEIGHT, FIELD, ROAD, SIDEWALK, Ground
from coperception.sim.lidar import lidar_model, lidar_returns, rotate_rows
from coperception.sim.objects import CLASS_INDEX, PARTS_PER_OBJECT, part_boxes
from coperception.sim.raycast import Mesh, RayBatch, box_mesh, cast_rays, count_hits, quad_mesh
from coperception.sim.roads import build_road_network
from coperception.sim.simulation import Simulation
from coperception.sim.world import _block_cells


def _batch(poses, model):
    rows = model.directions_rows
    dirs = np.concatenate([rotate_rows(rows, p[:3, :3], np.empty_like(rows)) for p in poses], axis=1)
    starts = np.arange(len(poses) + 1) * model.rays
    return RayBatch(np.array([p[:3, 3] for p in poses]), starts, dirs)


def test_building_hides_a_car_from_one_agent_only():
    # A 10 m tall building at x 10..20; a car at x = 30 behind it (seen from the origin); a second
    # sensor at (30, 25) looks down a street at the car.
    building = box_mesh([[15.0, 0.0, 5.0]], [[10.0, 20.0, 10.0]], [0.0], 0.5)
    ground = quad_mesh([[0.0, 0.0, 0.0]], [[400.0, 400.0]], [0.0], 0.12)
    static = Mesh.concat([ground, building])
    car = np.array([[30.0, 0.0, 0.75, 4.5, 1.9, 1.5, 0.3]])
    centres, sizes, yaws = part_boxes(car, [CLASS_INDEX["car"]])
    dynamic = box_mesh(centres, sizes, yaws, np.repeat([0.6], PARTS_PER_OBJECT))
    model = lidar_model(32, 1800)
    poses = [se3_from_xyz_rpy(0.0, 0.0, 1.9), se3_from_xyz_rpy(30.0, 25.0, 1.9, yaw=-np.pi / 2)]
    rays = _batch(poses, model)
    hits = cast_rays(static, dynamic, rays)
    cfg = LidarConfig(channels=32, noise_std=0.0, dropout=0.0)
    local = np.tile(model.directions_rows, (1, 2))
    points, agent, obj = lidar_returns(hits, local, np.full(2, -2), cfg, np.random.default_rng(0))
    counts = count_hits(obj, agent, 2, 1)
    assert counts[0, 0] == 0 and counts[1, 0] > 50
    # The hidden side's rays stop at the building instead: many returns at x in [10, 20].
    world = points[agent == 0, :3] @ poses[0][:3, :3].T + poses[0][:3, 3]
    front = (np.abs(world[:, 0] - 10.0) < 0.05) & (np.abs(world[:, 1]) < 10) & (world[:, 2] > 0.2)
    assert front.sum() > 200


def _reference_ground_mesh(town: TownConfig) -> Mesh:
    """The ground of ``town`` as triangles: a plane, curb-high block boxes and painted quads."""
    roads = build_road_network(town)
    cells = _block_cells(roads, town)
    parts = [quad_mesh([[0, 0, 0.0]], [[2000.0, 2000.0]], [0.0], 0.12),
             box_mesh(np.c_[(cells[:, :2] + cells[:, 2:]) / 2, np.full(len(cells), CURB_HEIGHT / 2)],
                      np.c_[cells[:, 2:] - cells[:, :2], np.full(len(cells), CURB_HEIGHT)], np.zeros(len(cells)), 0.35)]
    hs, lw, L = town.road_half_width, town.lane_width, town.lanes_per_direction
    lines = []
    for c, legs in zip(roads.centers, roads.legs):
        for side, (dx, dy) in ((0, (0, 1)), (1, (1, 0))):
            if legs[side]:
                mid = c + np.array([dx, dy]) * town.block_size / 2
                for o in [0.12, -0.12] + [s * k * lw for k in range(1, L + 1) for s in (-1, 1)]:
                    off = np.array([-dy, dx]) * o
                    lines.append(((*(mid + off), 2e-4), (town.segment_length, 0.12), np.arctan2(dy, dx)))
        for side, (sx, sy) in enumerate(((0, 1), (1, 0), (0, -1), (-1, 0))):
            if legs[side]:
                d = -np.array([sx, sy], float)
                right = np.array([d[1], -d[0]])
                p = c + np.array([sx, sy]) * (hs + 0.3) + right * L * lw / 2
                lines.append(((*p, 2e-4), (0.4, L * lw), np.arctan2(d[1], d[0])))
    parts.append(quad_mesh([ln[0] for ln in lines], [ln[1] for ln in lines], [ln[2] for ln in lines], 0.8))
    return Mesh.concat(parts)


def test_analytic_ground_equals_triangle_ground():
    town = TownConfig(roads_x=3, roads_y=2, block_size=60.0, outer_band=10.0)
    roads = build_road_network(town)
    ground = Ground.from_town(town, np.unique(roads.centers[:, 0]), np.unique(roads.centers[:, 1]))
    model = lidar_model(32, 720)
    rng = np.random.default_rng(1)
    poses = [se3_from_xyz_rpy(*rng.uniform(-60, 60, 2), rng.uniform(1.0, 6.0), yaw=rng.uniform(-3, 3),
                              pitch=rng.uniform(-0.2, 0.2)) for _ in range(6)]
    rays = _batch(poses, model)
    reference = cast_rays(_reference_ground_mesh(town), Mesh.empty(), rays)
    t_ref = reference.t
    t, material, _ = ground.intersect(rays)
    far = (t > 500) & (t_ref > 500)  # the reference plane is finite (2 km), the analytic one is not
    close = np.isclose(t, t_ref, rtol=1e-4, atol=2e-3) | far
    assert close.mean() > 0.999, f"{(~close).sum()} of {len(t)} rays differ"
    hit = np.isfinite(t) & (t < 200) & close
    assert hit.sum() > 0.5 * len(t) and len(np.unique(material[hit])) >= 4
    # Same surface kind: asphalt (or field), concrete block, or paint.
    _, refl_ref, _, _ = reference.surface()
    kind = np.select([material == ROAD, material == FIELD, np.isin(material, (SIDEWALK, CURB))], [0, 0, 1], 2)
    kind_ref = np.select([refl_ref < 0.2, refl_ref < 0.5], [0, 1], 2)
    assert (kind[hit] == kind_ref[hit]).mean() > 0.995


def test_presets_hide_objects_that_collaborators_see():
    frame = None
    for frame in Simulation(_small("blocked_intersection"), seed=0).frames(3):  # noqa: B007 (the last one is used)
        pass
    n, ego, only = frame_visibility(frame, 50.0)
    assert n > 5 and only >= 2, (n, ego, only)
    hidden = frame.visibility[frame.ego_id] == 0
    assert any((v[hidden] > 0).any() for k, v in frame.visibility.items() if k != frame.ego_id)


def _small(preset):
    from coperception.sim.scenarios import load_sim_config
    return load_sim_config(preset=preset, overrides={"lidar": {"channels": 16, "firing_rate_hz": 9000.0}})
