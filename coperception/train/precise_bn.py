"""Precise BatchNorm statistics (as detectron2's ``update_bn_stats``).

BatchNorm's running statistics are an exponential average over past batches, computed while
the weights were still moving. After short or high-learning-rate training (an overfit check, a
brief demo run) they lag the final weights and eval-mode outputs drift from train-mode ones.
Re-estimating them with the final weights, as a plain average over a few batches, fixes that.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn


@torch.no_grad()
def update_bn_stats(model: nn.Module, batches: Iterable) -> int:
    """Recompute every BatchNorm's running mean/var as the average over ``batches``.

    ``model(batch)`` is called in train mode (its losses are ignored); returns the number of
    batches used. The model is left in eval mode.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average = plain mean over the batches
    model.train()
    count = 0
    for batch in batches:
        model(batch)
        count += 1
    for m, momentum in zip(norms, saved):
        m.momentum = momentum
    model.eval()
    return count
