"""collate_samples: shapes and offsets with a variable number of agents per sample."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from coperception.data.collate import collate_samples, merge_cells
from coperception.data.dataset import CooperativeDataset
from coperception.data.formats.memory import MemoryReader
from coperception.structures.records import AgentKind, AgentObservation, Frame, ObjectSet
from coperception.data.voxelize import pillarize
from coperception.geometry.grid import BEVGrid
from coperception.geometry.pose import se3_from_xyz_rpy

GRID = BEVGrid((-20.0, -20.0, -3.0, 20.0, 20.0, 1.0), (0.5, 0.5, 4.0))


def _frame(timestamp: int, num_agents: int, num_objects: int) -> Frame:
    rng = np.random.default_rng(timestamp)
    obs = {}
    for k in range(num_agents):
        pts = np.concatenate([rng.uniform(-15, 15, (300, 2)), rng.uniform(-2, 0, (300, 1)),
                              rng.uniform(0, 1, (300, 1))], axis=1).astype(np.float32)
        pose = se3_from_xyz_rpy(3.0 * k, -k, 0, yaw=0.2 * k)
        obs[f"cav{k}"] = AgentObservation(f"cav{k}", AgentKind.VEHICLE, pose, pts)
    boxes = np.column_stack([rng.uniform(-8, 8, (num_objects, 2)), np.full(num_objects, -1.0),
                             np.tile([4.0, 2.0, 1.5], (num_objects, 1)), rng.uniform(-3, 3, num_objects)])
    objects = ObjectSet(boxes, ids=100 * timestamp + np.arange(num_objects), classes=np.zeros(num_objects))
    return Frame("s", timestamp, "cav0", obs, objects)


FRAMES = [_frame(0, 3, 2), _frame(1, 1, 0), _frame(2, 4, 5)]


def _dataset(fusion, **kw):
    kw.setdefault("voxelize_in", "sample")
    return CooperativeDataset(MemoryReader(FRAMES), GRID, fusion=fusion, self_hit_box=None, **kw)


def _samples(fusion, **kw):
    ds = _dataset(fusion, **kw)
    return [ds[i] for i in range(len(ds))]


def test_intermediate_batch_shapes_and_agent_offsets():
    samples = _samples("intermediate")
    batch = collate_samples(samples)
    assert len(batch) == 3 and batch.fusion == "intermediate"
    assert batch.agents_per_sample.tolist() == [3, 1, 4] == batch.clouds_per_sample.tolist()
    assert batch.ego_from_agent.shape == (8, 4, 4) and batch.ego_from_agent_clean.shape == (8, 4, 4)
    assert batch.is_infrastructure.shape == (8,)
    assert batch.cells.num_agents == 8
    assert len(batch.cells) == sum(len(s.cells) for s in samples)
    expected_agent = torch.cat([s.cells.coords[:, 0] + off for s, off in zip(samples, [0, 3, 4])])
    assert torch.equal(batch.cells.coords[:, 0], expected_agent)
    assert torch.equal(batch.cells.points, torch.cat([s.cells.points for s in samples]))
    assert batch.gt_boxes.shape == (3, 5, 7) and batch.gt_mask.sum(1).tolist() == [len(s.gt.ids) for s in samples]
    assert (batch.gt_ids[~batch.gt_mask] == -1).all() and (batch.gt_boxes[~batch.gt_mask] == 0).all()
    assert batch.gt_ids[2, : len(samples[2].gt.ids)].tolist() == samples[2].gt.ids.tolist()
    assert batch.agent_gt_boxes is None and batch.points is None


@pytest.mark.parametrize("fusion", ["intermediate", "early"])
def test_batch_voxelisation_equals_joined_per_sample_cells(fusion):
    per_sample = collate_samples(_samples(fusion, max_pillars=150))
    ds = _dataset(fusion, voxelize_in="batch", max_pillars=150)
    samples = [ds[i] for i in range(len(ds))]
    assert all(s.cells is None and s.points is not None for s in samples)
    batched = ds.collate_fn()(samples)
    assert batched.cells.num_agents == per_sample.cells.num_agents
    for a, b in [(batched.cells.points, per_sample.cells.points), (batched.cells.coords, per_sample.cells.coords),
                 (batched.cells.num_points, per_sample.cells.num_points)]:
        assert torch.equal(a, b)
    whole = pillarize(batched.points, GRID, max_pillars=150)
    assert torch.equal(whole.coords, batched.cells.coords)
    with pytest.raises(ValueError, match="voxelize_in"):
        collate_samples(_samples(fusion), voxelizer=ds.voxelizer)


def test_late_batch_per_agent_ground_truth():
    samples = _samples("late")
    batch = collate_samples(samples)
    k = max(len(t.ids) for s in samples for t in s.agent_gt)
    assert batch.agent_gt_boxes.shape == (8, k, 7)
    assert batch.agent_gt_mask.shape == (8, k) and batch.agent_gt_ids.shape == (8, k)
    assert batch.agent_gt_mask.sum(1).tolist() == [len(t.ids) for s in samples for t in s.agent_gt]


def test_early_batch_has_one_cloud_per_sample():
    batch = collate_samples(_samples("early"))
    assert batch.clouds_per_sample.tolist() == [1, 1, 1]
    assert batch.agents_per_sample.tolist() == [3, 1, 4]
    assert batch.cells.num_agents == 3 and set(batch.cells.coords[:, 0].tolist()) == {0, 1, 2}


def test_fixed_padding_and_padded_transforms():
    batch = collate_samples(_samples("intermediate"), max_objects=100)
    assert batch.gt_boxes.shape == (3, 100, 7) and batch.gt_classes.shape == (3, 100)
    with pytest.raises(ValueError, match="max_objects"):
        collate_samples(_samples("intermediate"), max_objects=3)
    padded, mask = batch.padded_transforms()
    assert padded.shape == (3, 4, 4, 4) and mask.tolist() == [[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]]
    assert torch.equal(padded[2, :4], batch.ego_from_agent[4:8])
    assert torch.equal(padded[1, 1], torch.eye(4))


def test_points_only_batch_and_move():
    batch = collate_samples(_samples("intermediate", voxelization="none"))
    assert batch.cells is None and len(batch.points) == 8
    # "meta" is a real second device on every machine: every tensor must move, the host counts stay
    moved = batch.to("meta")
    assert all(p.is_meta for p in moved.points) and moved.gt_boxes.is_meta and moved.ego_from_agent.is_meta
    assert moved.points[0].shape == batch.points[0].shape and moved.gt_boxes.shape == batch.gt_boxes.shape
    assert not moved.agents_per_sample.is_meta and moved.agents_per_sample.tolist() == [3, 1, 4]
    assert not batch.gt_boxes.is_meta  # a copy: the original stays where it was
    with_cells = collate_samples(_samples("intermediate")).to("meta")
    assert with_cells.cells.num_agents == 8 and with_cells.cells.points.is_meta and with_cells.cells.coords.is_meta


def test_dataloader_with_workers_and_errors():
    ds = CooperativeDataset(MemoryReader(FRAMES), GRID, self_hit_box=None)
    loader = DataLoader(ds, batch_size=2, collate_fn=ds.collate_fn(max_objects=10), num_workers=1)
    batches = list(loader)
    assert [len(b) for b in batches] == [2, 1]
    assert [b.cells.num_agents for b in batches] == [4, 4] and batches[0].gt_boxes.shape == (2, 10, 7)
    with pytest.raises(ValueError):
        collate_samples([])
    with pytest.raises(ValueError, match="fusion"):
        collate_samples(_samples("early")[:1] + _samples("late")[:1])
    with pytest.raises(TypeError):
        merge_cells([_samples("intermediate")[0].cells, _samples("intermediate", voxelization="voxels")[0].cells])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_pin_and_move_to_cuda():
    batch = collate_samples(_samples("late", return_points=True))
    moved = batch.pin_memory().to("cuda", non_blocking=True)
    assert moved.cells.points.is_cuda and moved.cells.coords.is_cuda and moved.points[0].is_cuda
    assert moved.agent_gt_boxes.is_cuda and moved.gt_mask.is_cuda
    assert torch.equal(moved.cells.coords.cpu(), batch.cells.coords)


def test_bad_ground_truth_is_refused_at_collate_naming_the_frame():
    from dataclasses import replace as dc_replace

    from coperception.errors import BoxError
    samples = _samples("late")
    bad = samples[2].gt.boxes.clone()
    bad[0, 3] = float("nan")
    samples[2] = dc_replace(samples[2], gt=dc_replace(samples[2].gt, boxes=bad))
    with pytest.raises(BoxError, match=rf"frame {samples[2].key!r}.*finite".replace("(", r"\(").replace(")", r"\)")):
        collate_samples(samples)
    agent = _samples("late")
    box = agent[2].agent_gt[1].boxes.clone()
    box[0, 4] = 0.0
    agent[2].agent_gt[1] = dc_replace(agent[2].agent_gt[1], boxes=box)
    with pytest.raises(BoxError, match=rf"agent {agent[2].agent_ids[1]} ground truth"):
        collate_samples(agent)
