"""A tiny generated dataset reads back through our OPV2V and DAIR-V2X readers (and OpenCOOD's own
OPV2V dataset class) with the poses, points and objects the simulator produced."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest

from coperception.data.formats import open_reader
from coperception.sim.generator import assign_splits, generate, scenario_seed
from coperception.sim.simulation import Simulation


def _originals(cfg, seed, index, frames):
    return list(Simulation(cfg, scenario_seed(seed, index), f"{cfg.preset}_{index:04d}").frames(frames))


def _assert_same_points(got, want):
    assert got.shape == want.shape
    order_g, order_w = np.lexsort(got[:, :3].T), np.lexsort(want[:, :3].T)
    np.testing.assert_allclose(got[order_g, :3], want[order_w, :3], atol=2e-3)
    np.testing.assert_allclose(got[order_g, 3], want[order_w, 3], atol=1.0 / 255 + 1e-6)


@pytest.fixture(scope="module")
def opv2v_root(tmp_path_factory, tiny_config):
    cfg = tiny_config(agents={"cavs": 2, "rsus": 1})
    root = tmp_path_factory.mktemp("sim_opv2v")
    summary = generate(root, cfg, scenarios=2, frames=2, fmt="opv2v", seed=5, split_ratios=(0.5, 0.0, 0.5))
    return root, cfg, summary


def test_generate_summary(opv2v_root):
    _, _, summary = opv2v_root
    assert (summary.scenarios, summary.frames, summary.agents) == (2, 4, 6)
    assert summary.splits == {"train": 1, "test": 1} and summary.objects > 40
    assert 0 < summary.in_range and summary.ego_visible + summary.collaborator_only <= summary.in_range
    assert dict(summary.rows())["frames"] == "4"


def test_opv2v_read_back(opv2v_root):
    root, cfg, _ = opv2v_root
    split_of = assign_splits(2, (0.5, 0.0, 0.5), 5)
    for index in range(2):
        reader = open_reader("opv2v", root, split_of[index])
        keys = reader.keys()
        assert len(keys) == 2
        for key, want in zip(sorted(keys), _originals(cfg, 5, index, 2)):
            got = reader.read(key)
            assert key == (want.scenario, want.timestamp)
            assert got.ego_id == want.ego_id and sorted(got.agent_ids) == sorted(want.agent_ids)
            for agent_id, obs in want.observations.items():
                np.testing.assert_allclose(got.observations[agent_id].world_from_lidar, obs.world_from_lidar, atol=1e-5)
                _assert_same_points(got.observations[agent_id].points, obs.points)
            seen = np.any([v > 0 for v in want.visibility.values()], axis=0)  # OPV2V lists seen objects only
            assert sorted(got.objects.ids) == sorted(want.objects.ids[seen])
            order = np.argsort(want.objects.ids[seen])
            np.testing.assert_allclose(got.objects.boxes[np.argsort(got.objects.ids)][:, :6],
                                       want.objects.boxes[seen][order][:, :6], atol=1e-4)


def test_dair_v2x_read_back(tmp_path, tiny_config):
    cfg = tiny_config(agents={"cavs": 1, "rsus": 1})
    generate(tmp_path, cfg, scenarios=1, frames=2, fmt="dair-v2x", seed=3, split_ratios=(1, 0, 0))
    reader = open_reader("dair-v2x", tmp_path, "train")
    assert len(reader.keys()) == 2
    for key, want in zip(reader.keys(), _originals(cfg, 3, 0, 2)):
        got = reader.read(key)
        veh, inf = got.ego, next(o for o in got.observations.values() if o.is_infrastructure)
        want_inf = next(o for o in want.observations.values() if o.is_infrastructure)
        np.testing.assert_allclose(veh.world_from_lidar, want.ego.world_from_lidar, atol=1e-5)
        np.testing.assert_allclose(inf.world_from_lidar, want_inf.world_from_lidar, atol=1e-5)
        _assert_same_points(veh.points, want.ego.points)
        _assert_same_points(inf.points, want_inf.points)
        # Cooperative labels (world frame): every labelled object is one of ours, same size and class.
        assert len(got.objects) >= 0.5 * len(want.objects)
        d = np.linalg.norm(got.objects.boxes[:, None, :3] - want.objects.boxes[None, :, :3], axis=2)
        match = d.argmin(1)
        assert d.min(1).max() < 1e-3
        np.testing.assert_allclose(got.objects.boxes[:, 3:6], want.objects.boxes[match, 3:6], atol=1e-4)
        np.testing.assert_array_equal(got.objects.classes, want.objects.classes[match])


def test_opencood_dataset_loads_generated_opv2v(tmp_path, tiny_config):
    datasets = pytest.importorskip("opencood.data_utils.datasets")
    import opencood
    from opencood.hypes_yaml.yaml_utils import load_point_pillar_params, load_yaml
    cfg = tiny_config(agents={"cavs": 2, "rsus": 0})  # opencoodx would make an RSU '-1' the ego
    generate(tmp_path, cfg, scenarios=1, frames=2, fmt="opv2v", seed=8, split_ratios=(0, 0, 1))
    hypes = Path(opencood.__file__).parent / "hypes_yaml" / "point_pillar_early_fusion.yaml"
    params = copy.deepcopy(load_yaml(str(hypes)))
    lidar_range = [-51.2, -40.0, -3.0, 51.2, 40.0, 1.0]
    params.update(root_dir=str(tmp_path / "test"), validate_dir=str(tmp_path / "test"), data_augment=[])
    params["preprocess"]["cav_lidar_range"] = lidar_range
    params["postprocess"]["anchor_args"]["cav_lidar_range"] = lidar_range
    params = load_point_pillar_params(params)
    theirs = datasets.build_dataset(params, visualize=False, train=False)
    assert len(theirs) == 2
    originals = _originals(cfg, 8, 0, 2)
    for idx, want in enumerate(originals):
        item = theirs[idx]["ego"]
        mask = item["object_bbx_mask"] == 1
        ids = {int(i) for i in item["object_ids"]}
        assert int(mask.sum()) == len(ids) >= 3
        assert ids <= set(int(i) for i in want.objects.ids)
        assert item["processed_lidar"]["voxel_features"].shape[0] > 100


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["opv2v", "dair-v2x"])
def test_parallel_generation_writes_the_same_files(tmp_path, tiny_config, fmt):
    """Workers write OPV2V scenarios themselves and stream DAIR-V2X frames to the parent; either
    way the files equal a serial run's (scenario seeds do not depend on the worker count)."""
    cfg = tiny_config(agents={"cavs": 2, "rsus": 1})
    runs = {}
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        summary = generate(out, cfg, scenarios=3, frames=2, fmt=fmt, seed=1, split_ratios=(2, 1, 0), workers=workers)
        runs[workers] = (summary, {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()})
    (s1, files1), (s2, files2) = runs[1], runs[2]
    assert (s1.frames, s1.objects, s1.collaborator_only) == (s2.frames, s2.objects, s2.collaborator_only)
    assert sorted(files1) == sorted(files2) and len(files1) > 10
    assert all(files1[k] == files2[k] for k in files1)
