"""Every registered component, by looping over the registries: it builds, runs a tiny forward (and
backward where it learns) and keeps its declared contract. A new encoder, fusion, head, strategy
or representation is tested here the moment it is registered."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from coperception.comm.represent import REPRESENTATIONS, Representation
from coperception.comm.select import SampleView
from coperception.comm.strategies import STRATEGIES, build_strategy
from coperception.comm.wire import decode, encode
from coperception.data.cameras import ModalityConfig
from coperception.data.dataset import CooperativeDataset
from coperception.data.formats.opv2v import OPV2VReader
from coperception.data.voxelize import pillarize, voxelize
from coperception.encoders import ENCODERS, Encoder
from coperception.fusion import FUSIONS
from coperception.geometry.grid import BEVGrid
from coperception.heads import HEADS, Head
from coperception.heads.detection_head import AnchorHead
from coperception.models.detector import CooperativeDetector
from coperception.structures.bev import BEVFeatures
from coperception.structures.records import Detections

GRID = BEVGrid((-12.8, -12.8, -3.0, 12.8, 12.8, 1.0), (0.4, 0.4, 4.0))  # 64 x 64 cells
VOXEL_GRID = BEVGrid((-12.8, -12.8, -3.0, 12.8, 12.8, 1.0), (0.2, 0.2, 0.5))
BACKBONE = dict(layer_nums=(1, 1), layer_strides=(2, 2), num_filters=(8, 16), upsample_strides=(1, 2),
                num_upsample_filters=(8, 8))
CAMERA = dict(image_channels=(8, 16, 16, 16), neck_channels=16, context_channels=8, depth_bins=(1.0, 41.0, 1.0),
              **BACKBONE)
#: a small instance of every encoder: (grid, constructor args, the dataset modality it needs)
ENCODER_CASES = {
    "pointpillars": (GRID, dict(vfe_filters=(8,), **BACKBONE), None),
    "second": (VOXEL_GRID, dict(sparse_channels=(4, 8), sparse_blocks=(1, 1), sparse_out_channels=8, backend="torch",
                                layer_nums=(1,), layer_strides=(1,),
                                num_filters=(16,), upsample_strides=(1,), num_upsample_filters=(16,)), None),
    "camera": (GRID, CAMERA, ModalityConfig(vehicle="camera", infrastructure="camera", image_hw=(48, 64))),
    "multimodal": (GRID, dict(lidar=dict(vfe_filters=(8,), **BACKBONE), camera=CAMERA),
                   ModalityConfig(vehicle="lidar_camera", infrastructure="lidar", image_hw=(48, 64))),
}
C, STRIDE = 8, 2


def test_every_registry_entry_has_a_test_case():
    assert set(ENCODER_CASES) == set(ENCODERS)


def _batch(root, grid: BEVGrid, cells: str | None, modality, placement: str):
    """A batch voxelised in the loader, or carrying raw clouds for the detector to voxelise."""
    reader = OPV2VReader(root, "train", load_cameras=modality is not None)
    voxelization = "none" if placement == "device" or cells is None else cells
    ds = CooperativeDataset(reader, grid, modality=modality, voxelization=voxelization, max_points_per_pillar=8)
    return ds.collate_fn()([ds[0]])


@pytest.mark.parametrize("name", sorted(ENCODER_CASES))
def test_encoder_contract_with_both_voxelisation_placements(name, camera_dataset):
    grid, args, modality = ENCODER_CASES[name]
    cls = ENCODERS[name]
    assert issubclass(cls, Encoder) and cls.name == name
    torch.manual_seed(0)
    enc = cls(grid, **args).eval()
    assert enc.out_channels >= 1 and enc.stride >= 1 and enc.grid == grid
    cells = cls.cells_for(args)
    maker = None
    if cells is not None:
        maker = (lambda c: voxelize(c, grid, 8)) if cells == "voxels" else (lambda c: pillarize(c, grid, 8))
    model = CooperativeDetector(enc, AnchorHead(enc.out_channels, grid, enc.stride), None, mode="single",
                                voxelizer=maker).eval()
    outputs = {}
    for placement in ("loader", "device"):
        batch = _batch(camera_dataset, grid, cells, modality, placement)
        with torch.no_grad():
            feats = model.encode(batch)
        assert isinstance(feats, BEVFeatures)
        assert feats.features.shape == (int(batch.agents_per_sample.sum()), enc.out_channels,
                                         *grid.feature_shape(enc.stride))
        outputs[placement] = feats.features
    torch.testing.assert_close(outputs["loader"], outputs["device"])  # one result wherever cells are made


@pytest.mark.parametrize("name", sorted(FUSIONS))
def test_fusion_contract(name):
    fusion = FUSIONS[name](GRID, STRIDE)
    h, w = GRID.feature_shape(STRIDE)
    feats = torch.randn(5, C, h, w, requires_grad=True)
    counts = torch.tensor([3, 2])
    poses = torch.eye(4).repeat(5, 1, 1)
    poses[1, 0, 3] = 1.6
    scores = torch.randn(5, 1, h, w) if fusion.needs_scores else None
    out = fusion(feats, counts, poses, None, scores=scores) if scores is not None else fusion(feats, counts, poses, None)
    assert out.shape == (2, C, h, w) and torch.isfinite(out).all()
    out.sum().backward()
    assert feats.grad is not None and feats.grad.abs().sum() > 0


@pytest.mark.parametrize("name", sorted(HEADS))
def test_head_contract(name):
    head = HEADS[name](C, GRID, STRIDE)
    assert isinstance(head, Head) and head.name == name
    h, w = GRID.feature_shape(STRIDE)
    maps = torch.randn(2, C, h, w)
    preds = head(maps)
    gt = torch.tensor([[[1.0, 2.0, -1.0, 4.5, 2.0, 1.6, 0.3]], [[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]]])
    losses = head.loss(preds, head.targets_padded(gt, torch.tensor([[True], [False]])))
    total = sum(losses.values())
    assert all(k.startswith("loss") for k in losses) and torch.isfinite(total)
    total.backward()
    conf = head.confidence_map(head(maps)).detach()
    assert conf.shape == (2, 1, h, w) and float(conf.min()) >= 0.0 and float(conf.max()) <= 1.0
    dets = head.decode(head(maps), score_threshold=0.0)
    assert len(dets) == 2 and all(isinstance(d, Detections) for d in dets)


def _view(n: int = 3) -> SampleView:
    g = torch.Generator().manual_seed(1)
    h, w = GRID.feature_shape(STRIDE)
    poses = torch.eye(4).repeat(n, 1, 1)
    poses[1:, 0, 3] = 2.4
    dets = [Detections(np.array([[1.0, 2.0, -1.0, 4.5, 2.0, 1.6, 0.1]]), np.array([0.8]), frame=f"agent:{i}")
            for i in range(n)]
    occ = torch.randint(0, 5, (n, 1, h, w), generator=g).float()
    return SampleView([str(i) for i in range(n)], 7, torch.randn(n, C, h, w, generator=g),
                      torch.rand(n, 1, h, w, generator=g), poses, occ, dets, None)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
@pytest.mark.parametrize("budget", [None, 600])
def test_strategy_contract(name, budget):
    strat = build_strategy(name, C, GRID, STRIDE).eval()
    assert strat.name == name and STRATEGIES[name] is type(strat)
    view = _view()
    sends = strat.transmit(view, budget)
    per_agent: dict[str, int] = {}
    for s in sends:
        assert s.nbytes == len(encode(s.message))  # bytes are the real encoding's length
        per_agent[s.message.sender_id] = per_agent.get(s.message.sender_id, 0) + s.nbytes
    assert budget is None or max(per_agent.values()) <= budget
    arrived = [decode(s.data) for s in sends if "0" in s.receivers and s.message.sender_id != "0"]
    rx = strat.receive(arrived, "cpu")
    assert len(rx.features) == len(rx.masks) == len(rx.poses)
    if budget is None:  # unlimited: every strategy delivers what it is for
        assert rx.features if strat.sends_features else (rx.boxes and not rx.features)
    h, w = GRID.feature_shape(STRIDE)
    feats = torch.randn(5, C, h, w)
    out, mask, aux = strat.train().simulate(feats, torch.rand(5, 1, h, w), torch.tensor([3, 2]))
    assert out.shape == feats.shape and (mask is None or mask.shape == (5, 1, h, w))
    assert all(torch.isfinite(v) for v in aux.values())


@pytest.mark.parametrize("name", sorted(REPRESENTATIONS))
def test_representation_contract(name):
    rep = REPRESENTATIONS[name](C) if name != "compressor" else REPRESENTATIONS[name](C, 2)
    assert isinstance(rep, Representation)
    h, w = GRID.feature_shape(STRIDE)
    feats = torch.randn(C, h, w)
    cells = torch.tensor([0, 5, h * w - 1])
    payload = rep.payload(feats, cells)
    back, mask = rep.restore(payload, "cpu")
    assert back.shape == (C, h, w) and mask.shape == (1, h, w)
    assert mask.flatten().nonzero().flatten().tolist() == cells.tolist()
    out, aux = rep.roundtrip(feats[None])
    assert out.shape == (1, C, h, w) and all(torch.isfinite(v) for v in aux.values())
