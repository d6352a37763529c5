"""The worked examples of docs/architecture.md run as written: each adds a component with its
file (the first code block), one registry line and one YAML, and the result trains / infers."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from coperception.comm.strategies import STRATEGIES
from coperception.encoders import ENCODERS
from coperception.fusion import FUSIONS
from coperception.heads import HEADS
from coperception.models.build import build_dataset, build_detector
from coperception.models.config import load_experiment

ROOT = Path(__file__).parents[1]
DOC = ROOT / "docs" / "architecture.md"
SECTIONS = {"Adding an encoder": "occupancy", "Adding a fusion": "mean",
            "Adding a communication strategy": "strided", "Adding a head": "peak_anchor"}
SMALL_RANGE = (-12.8, -12.8, -3.0, 12.8, 12.8, 1.0)


def _blocks(section: str) -> tuple[list[str], str]:
    text = DOC.read_text()
    start = text.index(f"## {section}")
    end = text.find("\n## ", start + 1)
    body = text[start:end if end > 0 else None]
    python = re.findall(r"```python\n(.*?)```", body, re.S)
    (yaml_text,) = re.findall(r"```yaml\n(.*?)```", body, re.S)
    return python, yaml_text


@pytest.fixture
def registries():
    """Registries restored after the test (the examples add entries)."""
    saved = [dict(r) for r in (ENCODERS, FUSIONS, STRATEGIES, HEADS)]
    yield {"ENCODERS": ENCODERS, "FUSIONS": FUSIONS, "STRATEGIES": STRATEGIES, "HEADS": HEADS}
    for r, s in zip((ENCODERS, FUSIONS, STRATEGIES, HEADS), saved):
        r.clear()
        r.update(s)


@pytest.mark.parametrize("section", sorted(SECTIONS))
def test_worked_example(section, registries, camera_dataset, tmp_path):
    python, yaml_text = _blocks(section)
    assert len(python) == 2, "a component file and its registry line"
    namespace = {"torch": torch, **registries}
    for code in python:
        exec(compile(code, f"{DOC.name}:{section}", "exec"), namespace)
    name = SECTIONS[section]
    assert any(name in r for r in registries.values())
    path = tmp_path / "example.yaml"
    path.write_text(yaml_text.replace("base: _base.yaml", f"base: {ROOT / 'models' / '_base.yaml'}"))
    cfg = load_experiment(path)
    cfg = replace(cfg, data=replace(cfg.data, root=str(camera_dataset), lidar_range=SMALL_RANGE, augment=None,
                                    voxelize_on="loader"))
    torch.manual_seed(0)
    model = build_detector(cfg)
    ds = build_dataset(cfg, cfg.data.train_split, train=True)
    batch = ds.collate_fn()([ds[0]])
    losses = model.train()(batch)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    out = model.eval().infer(batch, "intermediate", budget=20_000, score_threshold=0.0)
    assert len(out.detections) == 1
    if section == "Adding a communication strategy":
        sent = [s.nbytes for s in out.sent[0]]
        assert sent and max(sent) <= 20_000
