"""Small simulator configs shared by the simulator tests (16 beams, a tiny town)."""

from __future__ import annotations

import pytest

from coperception.sim.scenarios import load_sim_config

TINY = {
    "town": {"block_size": 70.0, "outer_band": 15.0},
    "traffic": {"vehicles": 20, "cyclists": 2, "pedestrians": 6},
    "lidar": {"channels": 16, "firing_rate_hz": 9000.0},
}


def tiny(preset: str = "town", **extra):
    """A validated tiny config of ``preset``; ``extra`` are nested overrides merged on top."""
    from coperception.config import merge
    return load_sim_config(preset=preset, overrides=merge(TINY, extra))


@pytest.fixture(scope="session")
def tiny_config():
    return tiny
