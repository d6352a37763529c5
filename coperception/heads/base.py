"""The head contract: BEV maps -> predictions -> losses against padded ground truth, or boxes.

Every head subclasses :class:`Head`; the detector and the communication strategies use only
these methods, so a new head (a centre-point head, a multi-class head) plugs in through the
:data:`~coperception.heads.HEADS` registry without touching them.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import torch
from torch import nn

from coperception.geometry.grid import BEVGrid
from coperception.structures.records import Detections


class Head(nn.Module, abc.ABC):
    """grid / stride: the maps it reads (from the encoder); ``name``: its registry name."""

    name: ClassVar[str] = ""
    grid: BEVGrid
    stride: int

    @abc.abstractmethod
    def forward(self, features: torch.Tensor) -> Any:
        """(N, C, H, W) maps -> predictions (the head's own typed record)."""

    @abc.abstractmethod
    def targets_padded(self, gt_boxes: torch.Tensor, valid: torch.Tensor) -> Any:
        """Training targets of every map at once from (N, M, 7) boxes and an (N, M) validity mask."""

    @abc.abstractmethod
    def loss(self, preds: Any, targets: Any) -> dict[str, torch.Tensor]:
        """Named losses (``loss_*``) of ``preds`` against ``targets``."""

    @abc.abstractmethod
    def confidence_map(self, preds: Any) -> torch.Tensor:
        """(N, 1, H, W) objectness in [0, 1] per map cell (what message selection reads)."""

    @abc.abstractmethod
    def decode(self, preds: Any, score_threshold: float = 0.2, nms_threshold: float = 0.15) -> list[Detections]:
        """Boxes per map, in that map's frame, after score filtering and NMS."""
