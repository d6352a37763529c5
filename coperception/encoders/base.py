"""The encoder contract: what an encoder reads, and the map it returns.

Every encoder subclasses :class:`Encoder` and declares, as code rather than prose:

* ``name`` -- its registry name (:data:`coperception.encoders.ENCODERS` is built from these);
* ``input_kind`` -- what ``forward`` reads: ``"pillars"`` / ``"voxels"`` (LiDAR cells),
  ``"cameras"`` (a :class:`~coperception.structures.camera.CameraBatch`) or ``"batch"`` (the
  whole :class:`~coperception.structures.batch.CooperativeBatch`, for encoders of several sensors);
* ``out_channels`` and ``stride`` -- the width and the grid cells per map cell of its output
  :class:`~coperception.structures.bev.BEVFeatures`, set by ``__init__``.

:meth:`Encoder.encode_batch` is the one way the detector calls an encoder: it hands over the
part of the batch the encoder declared it reads, with a clear error when the batch lacks it.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar, Literal

from torch import nn

from coperception.errors import ConfigError
from coperception.geometry.grid import BEVGrid
from coperception.structures.batch import CooperativeBatch
from coperception.structures.bev import BEVFeatures
from coperception.structures.cells import Voxels

InputKind = Literal["pillars", "voxels", "cameras", "batch"]
INPUT_KINDS: tuple[str, ...] = ("pillars", "voxels", "cameras", "batch")


class Encoder(nn.Module, abc.ABC):
    """Base of every sensor -> BEV encoder (see the module docstring)."""

    name: ClassVar[str] = ""
    input_kind: ClassVar[InputKind] = "pillars"
    #: some rows of a batch may not reach every parameter (a branch for a sensor no agent of the
    #: batch has): DDP must then look for unused parameters (the trainer reads this flag).
    may_leave_parameters_unused: ClassVar[bool] = False

    grid: BEVGrid
    out_channels: int
    stride: int

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if cls.input_kind not in INPUT_KINDS:
            raise TypeError(f"{cls.__name__}.input_kind must be one of {INPUT_KINDS}, got {cls.input_kind!r}")

    @classmethod
    def cells_for(cls, args: dict[str, Any]) -> str | None:
        """The LiDAR cells (``"pillars"`` / ``"voxels"``) this encoder built with ``args`` reads,
        None when it reads no LiDAR (what the dataset or the detector must voxelise into)."""
        return cls.input_kind if cls.input_kind in ("pillars", "voxels") else None

    @abc.abstractmethod
    def forward(self, x) -> BEVFeatures:
        """Its declared input -> one BEV map per agent."""

    def encode_batch(self, batch: CooperativeBatch) -> BEVFeatures:
        """The maps of every agent of ``batch`` (cells already made when the encoder reads them)."""
        kind = self.input_kind
        if kind == "batch":
            return self(batch)
        if kind == "cameras":
            if batch.cameras is None:
                raise ConfigError(f"encoder {self.name!r} reads cameras, but the batch has none: give the "
                                  f"dataset a camera modality (data.modality)")
            return self(batch.cameras)
        if batch.cells is None:
            raise ConfigError(f"encoder {self.name!r} reads {kind}, but the batch has no voxelised cells")
        if (kind == "voxels") != isinstance(batch.cells, Voxels):
            raise ConfigError(f"encoder {self.name!r} reads {kind}, but the batch carries "
                              f"{type(batch.cells).__name__.lower()}")
        return self(batch.cells)
