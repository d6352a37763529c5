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
