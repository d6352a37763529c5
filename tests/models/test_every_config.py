"""One forward and backward per YAML in models/: every shipped experiment builds, reads a real
(tiny, simulated) batch with the sensors it needs, and trains -- on a shrunk grid, with its own
encoder, fusion, head and strategy."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from coperception.models.build import build_dataset, build_detector
from coperception.models.config import load_experiment

MODELS = sorted(p for p in (Path(__file__).parents[2] / "models").glob("*.yaml") if not p.name.startswith("_"))
#: ±12.8 m: 64 cells at 0.4 m (any backbone stride up to 8 divides it), 256 at SECOND's 0.1 m.
SMALL_RANGE = (-12.8, -12.8, -3.0, 12.8, 12.8, 1.0)
@pytest.mark.parametrize("path", MODELS, ids=lambda p: p.stem)
def test_config_trains_one_step(path, camera_dataset):
    cfg = load_experiment(path)
    modality = cfg.data.modality
    if modality is not None:
        modality = replace(modality, image_hw=(48, 64))
    data = replace(cfg.data, root=str(camera_dataset), lidar_range=SMALL_RANGE, augment=None, modality=modality,
                   voxelize_on="loader")
    cfg = replace(cfg, data=data)
    torch.manual_seed(0)
    model = build_detector(cfg).train()
    ds = build_dataset(cfg, cfg.data.train_split, train=True)
    batch = ds.collate_fn()([ds[0]])
    losses = model(batch)
    total = sum(losses.values())
    assert losses and torch.isfinite(total), {k: float(v) for k, v in losses.items()}
    total.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and any(bool(g.abs().sum() > 0) for g in grads)
