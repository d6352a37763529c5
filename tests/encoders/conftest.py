"""Fixtures shared by the encoder tests."""

import pytest
import torch


@pytest.fixture
def no_tf32():
    """Compare CUDA with CPU in full fp32 (cuDNN convolutions default to TF32)."""
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


@pytest.fixture
def one_thread():
    """spconv's CPU kernels race when run on several threads (rare lost updates): compare on one."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
