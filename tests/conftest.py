"""Fixtures shared across the test suite."""

import pytest
import torch


@pytest.fixture
def one_thread():
    """Run a test on one torch thread: spconv's CPU kernels race on several (rare lost updates), and
    tiny convolutions are faster and immune to oversubscription on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
