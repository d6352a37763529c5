"""Fixtures shared across the test suite."""

from pathlib import Path

import pytest
import torch

#: A small town, 16-beam LiDAR and two 96 x 128 cameras on every agent.
SIM_WITH_CAMERAS = {
    "town": {"block_size": 70.0, "outer_band": 15.0},
    "traffic": {"vehicles": 20, "cyclists": 0, "pedestrians": 0},
    "lidar": {"channels": 16, "firing_rate_hz": 9000.0},
    "camera": {"enabled": True, "count": 2, "width": 128, "height": 96},
}


@pytest.fixture(scope="session")
def camera_dataset(tmp_path_factory) -> Path:
    """One simulated scenario, two frames, LiDAR and cameras on every agent (OPV2V format, all in
    the train split)."""
    from coperception.config import merge
    from coperception.sim.generator import generate
    from coperception.sim.scenarios import load_sim_config

    root = tmp_path_factory.mktemp("camera_dataset")
    generate(root, load_sim_config(preset="rsu_blind_corner", overrides=merge(SIM_WITH_CAMERAS, {})), scenarios=1,
             frames=2, fmt="opv2v", seed=3, split_ratios=(1.0, 0.0, 0.0))
    return root


@pytest.fixture
def one_thread():
    """Run a test on one torch thread: spconv's CPU kernels race on several (rare lost updates), and
    tiny convolutions are faster and immune to oversubscription on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
