"""Typed messages that one agent sends to another in one frame, before they become bytes.

A :class:`Message` is what :mod:`coperception.comm.wire` encodes: the sender's id, the frame
index at capture time, the sender's ``world_from_lidar`` pose *at capture time* (so that a stale
message is warped with the pose the features were computed in) and one payload. The payload
kinds cover the strategies of communication-efficient collaborative perception:

- :class:`DenseFeatures` -- the whole BEV map (F-Cooper / V2VNet style intermediate fusion);
- :class:`SparseCells` -- the feature vectors of selected BEV cells (Where2comm, "Where2comm:
  Communication-Efficient Collaborative Perception via Spatial Confidence Maps", NeurIPS 2022);
  with ``C = 0`` it carries only the cell set (e.g. a request / demand map);
- :class:`CodebookIndices` -- integer codes into a shared codebook for selected cells
  (CodeFilling, "Communication-Efficient Collaborative Perception via Information Filling with
  Codebook", CVPR 2024);
- :class:`Boxes` -- detections for late fusion, in the sender's LiDAR frame;
- :class:`Empty` -- explicitly nothing (the budget is below the smallest message carrying data,
  or the strategy chose to send nothing but still announce its pose);
- :class:`Composite` -- several of the above in one message (hybrid strategies, e.g. boxes plus
  a few feature cells).

Constructors validate and normalise: arrays become numpy of the wire precision (float32 values,
int64 indices), sparse indices are sorted (their values permuted alongside), and any invalid
shape, range or non-finite value raises :class:`~coperception.errors.WireError` naming the field.
Torch tensors are accepted and detached to numpy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import ClassVar, Union

import numpy as np

from coperception.errors import WireError

#: Element types a feature payload can travel in.
FEATURE_DTYPES: tuple[str, ...] = ("fp32", "fp16", "int8")


class PayloadKind(IntEnum):
    """Wire code of each payload kind (one byte in the header)."""

    EMPTY = 0
    DENSE = 1
    SPARSE = 2
    CODEBOOK = 3
    BOXES = 4
    COMPOSITE = 5


def _numpy(x, name: str) -> np.ndarray:
    """Torch tensor or array-like -> numpy array (no copy when already numpy)."""
    if hasattr(x, "detach"):  # torch.Tensor without importing torch
        x = x.detach().cpu()
        try:
            x = x.numpy()
        except TypeError:  # bfloat16 has no numpy dtype
            x = x.float().numpy()
    try:
        return np.asarray(x)
    except (TypeError, ValueError) as exc:
        raise WireError(f"{name}: cannot convert {type(x).__name__} to an array ({exc})") from exc


def _floats(x, name: str, ndim: int) -> np.ndarray:
    arr = _numpy(x, name)
    if arr.ndim != ndim:
        raise WireError(f"{name} must have {ndim} dimensions, got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise WireError(f"{name} must be numeric, got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.all(np.isfinite(arr)):
        raise WireError(f"{name} has non-finite values (after conversion to float32)")
    return arr


def _ints(x, name: str, ndim: int, low: int, high: int) -> np.ndarray:
    """Integer array with every value in ``[low, high)``, as contiguous int64."""
    arr = _numpy(x, name)
    if arr.ndim != ndim:
        raise WireError(f"{name} must have {ndim} dimensions, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if not np.issubdtype(arr.dtype, np.floating) or not np.all(arr == np.round(arr)):
            raise WireError(f"{name} must hold integers, got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.int64)
    if arr.size and (arr.min() < low or arr.max() >= high):
        raise WireError(f"{name} values must lie in [{low}, {high}), got [{arr.min()}, {arr.max()}]")
    return arr


def _dims(shape, name: str, n: int, allow_zero_first: bool = False) -> tuple[int, ...]:
    try:
        dims = tuple(int(d) for d in shape)
    except (TypeError, ValueError) as exc:
        raise WireError(f"{name} must be {n} integers, got {shape!r}") from exc
    if len(dims) != n:
        raise WireError(f"{name} must be {n} integers, got {dims}")
    for i, d in enumerate(dims):
        if d < (0 if (allow_zero_first and i == 0) else 1):
            raise WireError(f"{name} has an invalid size {d} in {dims}")
    return dims


def _check_dtype(dtype: str, name: str) -> None:
    if dtype not in FEATURE_DTYPES:
        raise WireError(f"{name}.dtype must be one of {FEATURE_DTYPES}, got {dtype!r}")


def _sorted_cells(indices, n_cells: int, name: str) -> tuple[np.ndarray, np.ndarray | None]:
    """(K,) flattened cell indices -> sorted unique int64 and the sorting permutation (None if sorted)."""
    idx = _ints(indices, f"{name}.indices", 1, 0, n_cells)
    if idx.size > 1 and not np.all(idx[1:] > idx[:-1]):
        order = np.argsort(idx, kind="stable")
        idx = idx[order]
        if np.any(idx[1:] == idx[:-1]):
            raise WireError(f"{name}.indices has duplicate cells")
        return idx, order
    return idx, None


@dataclass(frozen=True, eq=False)
class Empty:
    """Explicitly nothing: a message that only announces sender, time and pose."""

    kind: ClassVar[PayloadKind] = PayloadKind.EMPTY


@dataclass(frozen=True, eq=False)
class DenseFeatures:
    """A whole BEV feature map.

    tensor: (C, H, W) float32 features (rows index y, columns x; see ``geometry.grid``).
    dtype: wire precision. ``fp32`` is exact; ``fp16`` has relative error <= 2**-11 (values must be
        within +-65504); ``int8`` is affine per channel: ``x ~ offset_c + scale_c * (q + 128)`` with
        ``scale_c = (max_c - min_c) / 255``, so ``|error| <= scale_c / 2`` (plus float32 rounding).
    """

    tensor: np.ndarray
    dtype: str = "fp32"
    kind: ClassVar[PayloadKind] = PayloadKind.DENSE

    def __post_init__(self) -> None:
        _check_dtype(self.dtype, "DenseFeatures")
        t = _floats(self.tensor, "DenseFeatures.tensor", 3)
        if min(t.shape) < 1:
            raise WireError(f"DenseFeatures.tensor must be non-empty, got shape {t.shape}")
        object.__setattr__(self, "tensor", t)


@dataclass(frozen=True, eq=False)
class SparseCells:
    """Feature vectors of selected BEV cells.

    shape: (C, H, W) of the full map the cells come from (C may be 0: only the cell set travels).
    indices: (K,) flattened row-major cell indices ``row * W + col``, unique; sorted on construction.
    values: (K, C) float32 features of those cells (same precision rules as :class:`DenseFeatures`,
        the int8 scale/offset being per channel over the K cells).
    """

    shape: tuple[int, int, int]
    indices: np.ndarray
    values: np.ndarray
    dtype: str = "fp32"
    kind: ClassVar[PayloadKind] = PayloadKind.SPARSE

    def __post_init__(self) -> None:
        _check_dtype(self.dtype, "SparseCells")
        c, h, w = _dims(self.shape, "SparseCells.shape", 3, allow_zero_first=True)
        idx, order = _sorted_cells(self.indices, h * w, "SparseCells")
        vals = _floats(self.values, "SparseCells.values", 2)
        if vals.shape != (idx.size, c):
            raise WireError(f"SparseCells.values must have shape {(idx.size, c)}, got {vals.shape}")
        if order is not None:
            vals = np.ascontiguousarray(vals[order])
        object.__setattr__(self, "shape", (c, h, w))
        object.__setattr__(self, "indices", idx)
        object.__setattr__(self, "values", vals)

    @property
    def num_cells(self) -> int:
        return int(self.indices.size)


@dataclass(frozen=True, eq=False)
class CodebookIndices:
    """Integer codes into a codebook shared by all agents, for selected BEV cells.

    shape: (H, W) of the BEV grid.
    indices: (K,) flattened row-major selected cells, unique; sorted on construction.
    codes: (K, G) integers in ``[0, codebook_size)`` -- G codebook groups x residual stages
        (CodeFilling's multi-group, multi-stage quantiser: e.g. 2 groups x 3 stages = 6 columns).
    codebook_size: number of codes per codebook (<= 65536).
    codebook_id: identifier/version of the codebook (u32), so a receiver can refuse codes of a
        codebook it does not hold.
    """

    shape: tuple[int, int]
    indices: np.ndarray
    codes: np.ndarray
    codebook_size: int
    codebook_id: int = 0
    kind: ClassVar[PayloadKind] = PayloadKind.CODEBOOK

    def __post_init__(self) -> None:
        h, w = _dims(self.shape, "CodebookIndices.shape", 2)
        size, cid = int(self.codebook_size), int(self.codebook_id)
        if not 1 <= size <= 1 << 16:
            raise WireError(f"CodebookIndices.codebook_size must be in [1, 65536], got {size}")
        if not 0 <= cid < 1 << 32:
            raise WireError(f"CodebookIndices.codebook_id must fit in u32, got {cid}")
        idx, order = _sorted_cells(self.indices, h * w, "CodebookIndices")
        codes = _ints(self.codes, "CodebookIndices.codes", 2, 0, size)
        if codes.shape[0] != idx.size or codes.shape[1] < 1:
            raise WireError(f"CodebookIndices.codes must have shape ({idx.size}, G>=1), got {codes.shape}")
        if order is not None:
            codes = np.ascontiguousarray(codes[order])
        for name, value in (("shape", (h, w)), ("indices", idx), ("codes", codes)):
            object.__setattr__(self, name, value)
        object.__setattr__(self, "codebook_size", size)
        object.__setattr__(self, "codebook_id", cid)

    @property
    def num_cells(self) -> int:
        return int(self.indices.size)

    @property
    def num_groups(self) -> int:
        return int(self.codes.shape[1])


@dataclass(frozen=True, eq=False)
class Boxes:
    """Detections for late fusion, in the sender's LiDAR frame (the message pose maps them to world).

    boxes: (N, 7) float32 ``[x, y, z, l, w, h, yaw]`` metres / radians, z = box centre.
    scores: (N,) float32 confidences.
    labels: (N,) int64 class indices in [0, 256) (see ``structures.records.OBJECT_CLASSES``).
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    kind: ClassVar[PayloadKind] = PayloadKind.BOXES

    def __post_init__(self) -> None:
        b = _floats(self.boxes, "Boxes.boxes", 2)
        if b.shape[1] != 7:
            raise WireError(f"Boxes.boxes must have shape (N, 7), got {b.shape}")
        s = _floats(self.scores, "Boxes.scores", 1)
        lab = _ints(self.labels, "Boxes.labels", 1, 0, 256)
        if s.shape[0] != b.shape[0] or lab.shape[0] != b.shape[0]:
            raise WireError(f"Boxes: {b.shape[0]} boxes but {s.shape[0]} scores and {lab.shape[0]} labels")
        object.__setattr__(self, "boxes", b)
        object.__setattr__(self, "scores", s)
        object.__setattr__(self, "labels", lab)

    def __len__(self) -> int:
        return int(self.boxes.shape[0])


LeafPayload = Union[DenseFeatures, SparseCells, CodebookIndices, Boxes]
_LEAF_TYPES = (DenseFeatures, SparseCells, CodebookIndices, Boxes)


@dataclass(frozen=True, eq=False)
class Composite:
    """Several non-empty payloads in one message (no nesting), e.g. ``(Boxes, SparseCells)``."""

    parts: tuple[LeafPayload, ...]
    kind: ClassVar[PayloadKind] = PayloadKind.COMPOSITE

    def __post_init__(self) -> None:
        parts = tuple(self.parts)
        if not parts:
            raise WireError("Composite.parts is empty: send an Empty payload instead")
        for i, p in enumerate(parts):
            if not isinstance(p, _LEAF_TYPES):
                raise WireError(f"Composite.parts[{i}] must be a data payload, got {type(p).__name__}")
        object.__setattr__(self, "parts", parts)


Payload = Union[Empty, DenseFeatures, SparseCells, CodebookIndices, Boxes, Composite]
PAYLOAD_TYPES: dict[PayloadKind, type] = {
    PayloadKind.EMPTY: Empty,
    PayloadKind.DENSE: DenseFeatures,
    PayloadKind.SPARSE: SparseCells,
    PayloadKind.CODEBOOK: CodebookIndices,
    PayloadKind.BOXES: Boxes,
    PayloadKind.COMPOSITE: Composite,
}

_ORTHO_TOL = 1e-3


def check_pose(pose, name: str = "world_from_lidar") -> np.ndarray:
    """Validate a rigid (4, 4) transform (finite, orthonormal rotation, last row 0 0 0 1) -> float64."""
    m = _numpy(pose, name)
    if m.shape != (4, 4):
        raise WireError(f"{name} must be a (4, 4) matrix, got shape {m.shape}")
    m = np.array(m, dtype=np.float64)
    if not np.all(np.isfinite(m)):
        raise WireError(f"{name} has non-finite values")
    if not np.array_equal(m[3], [0.0, 0.0, 0.0, 1.0]):
        raise WireError(f"{name} last row must be [0, 0, 0, 1], got {m[3].tolist()}")
    rot = m[:3, :3]
    if np.abs(rot).max() > 1.5:
        raise WireError(f"{name} rotation has entries beyond +-1: not a rotation")
    err = float(np.abs(rot.T @ rot - np.eye(3)).max())
    if err > _ORTHO_TOL or np.linalg.det(rot) < 0:
        raise WireError(f"{name} rotation is not a proper rotation (|R^T R - I| = {err:.2e})")
    return m


@dataclass(frozen=True, eq=False)
class Message:
    """What one agent sends in one frame.

    sender_id: agent id (non-empty UTF-8, at most ``WireLimits.max_sender_id_bytes`` bytes).
    timestamp: frame index at which the payload was captured (0 <= t < 2**32).
    world_from_lidar: (4, 4) float64 pose of the sender's LiDAR at capture time.
    payload: one of :data:`Payload`.
    """

    sender_id: str
    timestamp: int
    world_from_lidar: np.ndarray
    payload: Payload = field(default_factory=Empty)

    def __post_init__(self) -> None:
        if not isinstance(self.sender_id, str) or not self.sender_id:
            raise WireError(f"Message.sender_id must be a non-empty str, got {self.sender_id!r}")
        t = int(self.timestamp)
        if not 0 <= t < 1 << 32:
            raise WireError(f"Message.timestamp must be a frame index in [0, 2**32), got {t}")
        if not isinstance(self.payload, tuple(PAYLOAD_TYPES.values())):
            raise WireError(f"Message.payload has unknown type {type(self.payload).__name__}")
        object.__setattr__(self, "timestamp", t)
        object.__setattr__(self, "world_from_lidar", check_pose(self.world_from_lidar, "Message.world_from_lidar"))

    @property
    def kind(self) -> PayloadKind:
        return self.payload.kind
