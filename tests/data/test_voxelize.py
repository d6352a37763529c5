"""Pillar / voxel grouping against a brute-force Python reference and spconv's generator."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from coperception.data.voxelize import pillarize, voxelize
from coperception.geometry.grid import BEVGrid

GRID = BEVGrid((-4.0, -3.0, -2.0, 4.0, 3.0, 1.0), (1.0, 0.5, 1.0))


def _cloud(rng: np.random.Generator, n: int, spread: float = 5.0) -> torch.Tensor:
    """Random points, some outside GRID, with duplicates so that cells overflow."""
    xyz = rng.uniform(-spread, spread, size=(n, 3)).astype(np.float32)
    xyz[: n // 3] = xyz[: n // 3].round(0)  # pile points into few cells
    return torch.from_numpy(np.concatenate([xyz, rng.uniform(0, 1, (n, 1)).astype(np.float32)], 1))


def _reference(points_list, low, size, dims, max_points, max_cells):
    """Loop over points: {(agent, z, y, x): first-M points in input order} after the per-agent cap."""
    low, size = np.float32(low), np.float32(size)
    cells: dict[tuple, list] = {}
    first_seen: dict[tuple, int] = {}
    for agent, pts in enumerate(points_list):
        for i, p in enumerate(pts.numpy()):
            c = np.floor((p[:3] - low) / size).astype(np.int64)
            if not all(0 <= c[k] < dims[k] for k in range(3)):
                continue
            key = (agent, int(c[2]), int(c[1]), int(c[0]))
            cells.setdefault(key, []).append(p)
            first_seen.setdefault(key, i)
    if max_cells is not None:
        kept = set()
        for agent in range(len(points_list)):
            mine = sorted((first_seen[k], k) for k in cells if k[0] == agent)
            kept.update(k for _, k in mine[:max_cells])
        cells = {k: v for k, v in cells.items() if k in kept}
    return {k: np.stack(v[:max_points]) for k, v in cells.items()}


def _as_dict(grouped, coords, counts):
    out = {}
    for g, c, n in zip(grouped.numpy(), coords.tolist(), counts.tolist()):
        assert 1 <= n <= grouped.shape[1]
        assert not g[n:].any(), "padding must be zeros"
        out[tuple(c)] = g[:n]
    return out


def _assert_same(got: dict, want: dict):
    assert sorted(got) == sorted(want)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=f"cell {k}")


def _pillar_reference(points_list, grid, max_points, max_cells=None):
    r = grid.lidar_range
    ref = _reference(points_list, (r[0], r[1], r[2]), (grid.voxel_size[0], grid.voxel_size[1], r[5] - r[2]),
                     (grid.nx, grid.ny, 1), max_points, max_cells)
    return {(a, y, x): v for (a, _, y, x), v in ref.items()}


@pytest.mark.parametrize("seed", range(4))
def test_pillarize_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    clouds = [_cloud(rng, n) for n in (150, 0, 90)]
    pillars = pillarize(clouds, GRID, max_points_per_pillar=3)
    assert pillars.num_agents == 3
    assert pillars.points.dtype == torch.float32 and pillars.coords.dtype == torch.int64
    assert pillars.num_points.dtype == torch.int32
    _assert_same(_as_dict(pillars.points, pillars.coords, pillars.num_points), _pillar_reference(clouds, GRID, 3))


@pytest.mark.parametrize("seed", range(3))
def test_pillar_cap_keeps_earliest_touched_pillars_per_agent(seed):
    rng = np.random.default_rng(100 + seed)
    clouds = [_cloud(rng, 120), _cloud(rng, 60)]
    pillars = pillarize(clouds, GRID, max_points_per_pillar=2, max_pillars=7)
    assert (torch.bincount(pillars.coords[:, 0], minlength=2) <= 7).all()
    _assert_same(_as_dict(pillars.points, pillars.coords, pillars.num_points),
                 _pillar_reference(clouds, GRID, 2, max_cells=7))


@pytest.mark.parametrize("cap", [None, 9])
def test_voxelize_matches_brute_force(cap):
    rng = np.random.default_rng(7)
    clouds = [_cloud(rng, 200), _cloud(rng, 80)]
    vox = voxelize(clouds, GRID, max_points_per_voxel=2, max_voxels=cap)
    r = GRID.lidar_range
    want = _reference(clouds, r[:3], GRID.voxel_size, GRID.shape_xyz, 2, cap)
    _assert_same(_as_dict(vox.points, vox.coords, vox.num_points), want)
    assert vox.coords[:, 1].max() < GRID.shape_xyz[2]


def test_coords_sorted_by_agent_row_col():
    rng = np.random.default_rng(3)
    pillars = pillarize([_cloud(rng, 300), _cloud(rng, 300)], GRID)
    c = pillars.coords
    lin = (c[:, 0] * GRID.ny + c[:, 1]) * GRID.nx + c[:, 2]
    assert (lin[1:] > lin[:-1]).all()


def test_deterministic_including_overflow():
    rng = np.random.default_rng(11)
    clouds = [_cloud(rng, 500, spread=2.0) for _ in range(3)]
    a = pillarize(clouds, GRID, max_points_per_pillar=4, max_pillars=10)
    b = pillarize([c.clone() for c in clouds], GRID, max_points_per_pillar=4, max_pillars=10)
    assert int(a.num_points.max()) == 4, "the test must overflow some pillar"
    for x, y in [(a.points, b.points), (a.coords, b.coords), (a.num_points, b.num_points)]:
        assert torch.equal(x, y)


def test_points_outside_range_dropped_and_boundaries():
    xmin, ymin, zmin, xmax, ymax, zmax = GRID.lidar_range
    pts = torch.tensor([
        [xmin, ymin, zmin, 0.1],          # on the lower corner: kept
        [xmax, 0.0, 0.0, 0.2],            # on the upper x face: dropped
        [0.0, ymax, 0.0, 0.3],            # on the upper y face: dropped
        [0.0, 0.0, zmax, 0.4],            # at zmax: dropped
        [0.0, 0.0, zmin - 0.01, 0.5],     # below: dropped
        [xmin - 0.01, 0.0, 0.0, 0.6],     # left of range: dropped
        [xmax - 0.01, ymax - 0.01, zmax - 0.01, 0.7],  # just inside the upper corner: kept
    ])
    pillars = pillarize([pts], GRID)
    assert sorted(pillars.points[:, 0, 3].tolist()) == pytest.approx([0.1, 0.7])
    assert pillars.coords.tolist() == [[0, 0, 0], [0, GRID.ny - 1, GRID.nx - 1]]


def test_empty_inputs_keep_agent_count():
    far = torch.tensor([[100.0, 100.0, 0.0, 1.0]])
    pillars = pillarize([torch.zeros(0, 4), far], GRID, max_points_per_pillar=5, max_pillars=3)
    assert len(pillars) == 0 and pillars.num_agents == 2
    assert tuple(pillars.points.shape) == (0, 5, 4) and tuple(pillars.coords.shape) == (0, 3)


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match=r"points_list\[1\]"):
        pillarize([torch.zeros(3, 4), torch.zeros(3, 3)], GRID)
    with pytest.raises(ValueError):
        pillarize([], GRID)
    with pytest.raises(ValueError):
        pillarize([torch.zeros(3, 4)], GRID, max_points_per_pillar=0)


def test_matches_spconv_point_to_voxel():
    """OpenCOOD's SpVoxelPreprocessor uses spconv's generator: same cells, same kept points."""
    spconv_utils = pytest.importorskip("spconv.utils")
    tv = pytest.importorskip("cumm.tensorview")
    rng = np.random.default_rng(5)
    cloud = _cloud(rng, 400)
    r = GRID.lidar_range
    gen = spconv_utils.Point2VoxelCPU3d(vsize_xyz=list(GRID.voxel_size), coors_range_xyz=list(r),
                                        max_num_points_per_voxel=3, num_point_features=4, max_num_voxels=10_000)
    v, c, n = gen.point_to_voxel(tv.from_numpy(cloud.numpy()))
    theirs = {(0, *map(int, cc)): vv[:nn] for vv, cc, nn in zip(v.numpy(), c.numpy(), n.numpy())}
    ours = voxelize([cloud], GRID, max_points_per_voxel=3)
    _assert_same(_as_dict(ours.points, ours.coords, ours.num_points), theirs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_equals_cpu():
    rng = np.random.default_rng(9)
    clouds = [_cloud(rng, 2000) for _ in range(3)]
    cpu = pillarize(clouds, GRID, max_points_per_pillar=4, max_pillars=20)
    gpu = pillarize([c.cuda() for c in clouds], GRID, max_points_per_pillar=4, max_pillars=20)
    assert gpu.points.is_cuda
    for x, y in [(cpu.points, gpu.points), (cpu.coords, gpu.coords), (cpu.num_points, gpu.num_points)]:
        assert torch.equal(x, y.cpu())


def test_huge_grid_uses_wide_keys():
    """1e11 cells do not fit int32 keys: the int64 path must give the same grouping."""
    grid = BEVGrid((-50.0, -50.0, -5.0, 50.0, 50.0, 5.0), (0.01, 0.01, 0.01))
    rng = np.random.default_rng(21)
    clouds = [_cloud(rng, 120, spread=60.0), _cloud(rng, 50, spread=60.0)]
    vox = voxelize(clouds, grid, max_points_per_voxel=2)
    r = grid.lidar_range
    _assert_same(_as_dict(vox.points, vox.coords, vox.num_points),
                 _reference(clouds, r[:3], grid.voxel_size, grid.shape_xyz, 2, None))
