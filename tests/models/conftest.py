"""A tiny simulated OPV2V dataset shared by the model tests (16-beam LiDAR, small town)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from coperception.models.config import Component, load_experiment

TINY_SIM = {
    "town": {"block_size": 70.0, "outer_band": 15.0},
    "traffic": {"vehicles": 20, "cyclists": 0, "pedestrians": 0},
    "lidar": {"channels": 16, "firing_rate_hz": 9000.0},
}
TINY_ENCODER = Component("pointpillars", {
    "vfe_filters": [16], "layer_nums": [1, 1], "layer_strides": [2, 2], "num_filters": [16, 32],
    "upsample_strides": [1, 2], "num_upsample_filters": [32, 32]})


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    from coperception.config import merge
    from coperception.sim.generator import generate
    from coperception.sim.scenarios import load_sim_config

    root = tmp_path_factory.mktemp("tiny_opv2v")
    cfg = load_sim_config(preset="rsu_blind_corner", overrides=merge(TINY_SIM, {}))
    generate(root, cfg, scenarios=2, frames=3, fmt="opv2v", seed=3, split_ratios=(0.5, 0.0, 0.5))
    return root


@pytest.fixture
def tiny_experiment(tiny_dataset):
    """The demo experiment shrunk to a ±25.6 m grid and a two-stage backbone, on the tiny dataset."""
    cfg = load_experiment(Path(__file__).parents[2] / "models" / "demo.yaml")
    data = replace(cfg.data, root=str(tiny_dataset), lidar_range=(-25.6, -25.6, -3.0, 25.6, 25.6, 1.0),
                   augment=None, max_points_per_pillar=16)
    return replace(cfg, data=data, model=replace(cfg.model, encoder=TINY_ENCODER),
                   train=replace(cfg.train, epochs=1, batch_size=2, warmup_steps=0))
