"""The versioned binary wire format of :class:`~coperception.comm.message.Message` (version 1).

The bytes an agent sends are ``len(encode(message))``: header, sender id, pose, payload and
checksum all count. Layout, little-endian throughout::

    offset  size  field
    0       4     magic b"CPV2" (coperception V2X)
    4       2     u16 format version (1)
    6       1     u8 flags (reserved, must be 0)
    7       1     u8 payload kind (message.PayloadKind)
    8       4     u32 timestamp: frame index at capture
    12      4     u32 payload length P
    16      1     u8 sender id length S (1..limits.max_sender_id_bytes), then S bytes UTF-8
    17+S    24    pose translation: 3 x f64 (world_from_lidar[:3, 3], metres)
    41+S    36    pose rotation: 9 x f32 (world_from_lidar[:3, :3], row-major)
    77+S    P     payload body (below)
    77+S+P  4     u32 CRC-32 (zlib.crc32) of every byte before it

so the smallest message (an :class:`Empty` payload) is ``81 + S`` bytes. Pose: the receiver warps
the sender's features with it, so the translation travels as float64 -- world coordinates can be
UTM-sized (1e6 m), where float32's step is 6 cm, a visible systematic pose error -- while the
rotation travels as float32, whose 6e-8 rounding moves a point 100 m away by < 1e-5 m; 60 bytes
instead of 96. Checksum: CRC-32 detects every error burst up to 32 bits and misses random
corruption with probability 2**-32; it guards against channel errors, not against a forger
(authentication is out of scope). It is checked before anything else is parsed.

Payload bodies (dtype: 0 fp32, 1 fp16, 2 int8; int8 adds C x f32 scale and C x f32 offset,
``x = offset + scale * (q + 128)``)::

    Empty      nothing
    Dense      u8 dtype, u16 C, u16 H, u16 W, [int8 scale/offset], C*H*W values (C, H, W order)
    Sparse     u8 dtype, u16 C, u16 H, u16 W, u32 K, cell set, [int8 scale/offset], K*C values
    Codebook   u16 H, u16 W, u32 K, u8 G, u32 codebook size, u32 codebook id, cell set, codes
    Boxes      u32 N, N*7 f32 boxes, N f32 scores, N u8 labels
    Composite  u8 count, then per part: u8 kind, u32 length, body

where "cell set" and "codes" are :mod:`coperception.comm.entropy` streams. Decoding treats the
bytes as untrusted: every size is checked against :class:`WireLimits` and against the bytes
actually present before any allocation, and anything malformed raises
:class:`~coperception.errors.WireError` -- never another exception, a hang or a huge allocation.
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass

import numpy as np

from coperception.comm import entropy
from coperception.comm.entropy import ByteReader
from coperception.comm.message import (
    Boxes,
    CodebookIndices,
    Composite,
    DenseFeatures,
    Empty,
    Message,
    Payload,
    PayloadKind,
    SparseCells,
)
from coperception.errors import WireError

MAGIC = b"CPV2"
VERSION = 1
_HEAD = struct.Struct("<4sHBBIIB")
_POSE = struct.Struct("<3d9f")
_CRC = struct.Struct("<I")
_FIXED_BYTES = _HEAD.size + _POSE.size + _CRC.size  # 81
_DTYPES = ("fp32", "fp16", "int8")
_NUMPY = {"fp32": np.float32, "fp16": np.float16, "int8": np.int8}
_F32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class WireLimits:
    """Hard limits a decoder enforces before allocating (and an encoder, so it never emits what
    a default decoder refuses). Defaults fit OPV2V / DAIR-V2X BEV maps with room to spare."""

    max_message_bytes: int = 64 << 20
    max_sender_id_bytes: int = 64
    max_channels: int = 1024
    max_height: int = 4096
    max_width: int = 4096
    max_cells: int = 1 << 20
    max_boxes: int = 10_000
    max_codebook_size: int = 1 << 16
    max_codebook_groups: int = 64
    max_codes: int = 1 << 22  # cells x groups of one codebook payload (bounds the decoded array)
    max_parts: int = 8

    def check(self, field: str, value: int, maximum: int, minimum: int = 0) -> int:
        if not minimum <= value <= maximum:
            raise WireError(f"{field} = {value} outside the limits [{minimum}, {maximum}]")
        return value


def min_message_bytes(sender_id: str) -> int:
    """Bytes of the smallest message ``sender_id`` can send (an :class:`Empty` payload)."""
    return _FIXED_BYTES + len(sender_id.encode("utf-8"))


def empty_like(message: Message) -> Message:
    """The same sender, time and pose with an explicit :class:`Empty` payload."""
    return Message(message.sender_id, message.timestamp, message.world_from_lidar, Empty())


# ------------------------------------------------------------------ float tensors


def _quantise(x: np.ndarray, dtype: str, axis: int, field: str) -> list:
    """float32 array -> byte buffers [int8 only: scales, offsets], values; channels along ``axis``."""
    if dtype == "fp32":
        return [_buf(x, "<f4")]
    if dtype == "fp16":
        with np.errstate(over="ignore"):
            h = x.astype("<f2")
        if not np.all(np.isfinite(h)):
            raise WireError(f"{field}: values beyond the fp16 range (|x| > 65504); send fp32 or int8")
        return [_buf(h, "<f2")]
    other = tuple(a for a in range(x.ndim) if a != axis)
    kshape = [1] * x.ndim
    kshape[axis] = x.shape[axis]
    lo = x.min(axis=other, keepdims=True).astype(np.float64) if x.size else np.zeros(kshape)
    hi = x.max(axis=other, keepdims=True).astype(np.float64) if x.size else np.zeros(kshape)
    scale = (hi - lo) / 255.0
    if not np.all(np.isfinite(scale)) or np.any(np.abs(lo) + 255 * scale > _F32_MAX):
        raise WireError(f"{field}: value range too wide for int8 quantisation")
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    lo = lo.astype(np.float32)
    q = np.clip(np.rint((x - lo) / scale), 0, 255) - 128
    return [_buf(scale, "<f4"), _buf(lo, "<f4"), _buf(q, np.int8)]


def _dequantise(r: ByteReader, dtype: str, shape: tuple[int, ...], axis: int, field: str) -> np.ndarray:
    """Read values of ``shape`` written by :func:`_quantise` -> writable float32 array."""
    channels = shape[axis]
    if dtype == "int8":
        params = r.array(np.float32, 2 * channels, f"{field} int8 scale/offset").astype(np.float64)
        scale, offset = params[:channels], params[channels:]
        ok = np.all(np.isfinite(params)) and np.all(scale >= 0)
        if not (ok and np.all(np.abs(offset) + 255 * scale <= _F32_MAX)):
            raise WireError(f"{r.what}: {field} has an invalid int8 scale/offset")
    count = math.prod(shape)
    raw = r.array(_NUMPY[dtype], count, f"{field} values").reshape(shape)
    if dtype != "int8":
        return raw.astype(np.float32)
    bshape = [1] * len(shape)
    bshape[axis] = channels
    s, o = scale.astype(np.float32).reshape(bshape), offset.astype(np.float32).reshape(bshape)
    return (raw.astype(np.float32) + 128.0) * s + o


def _dtype_code(r: ByteReader) -> str:
    (code,) = r.unpack("B", "dtype")
    if code >= len(_DTYPES):
        raise WireError(f"{r.what}: unknown feature dtype code {code}")
    return _DTYPES[code]


def _read_dims(r: ByteReader, limits: WireLimits, fmt: str, with_cells: bool) -> tuple[int, ...]:
    """Read grid dimensions (``..., H, W[, K]``) and check them against the limits."""
    dims = r.unpack(fmt, "dimensions")
    h, w = dims[-3:-1] if with_cells else dims[-2:]
    limits.check(f"{r.what} height", h, limits.max_height, 1)
    limits.check(f"{r.what} width", w, limits.max_width, 1)
    if with_cells:
        limits.check(f"{r.what} cells", dims[-1], min(limits.max_cells, h * w))
    return dims


# ------------------------------------------------------------------ payload bodies


def _buf(arr: np.ndarray, dtype: str) -> memoryview:
    """Little-endian bytes of ``arr`` without an extra copy when it is already in that layout."""
    return memoryview(np.ascontiguousarray(arr, dtype=dtype).reshape(-1).view(np.uint8))


def _encode_body(p: Payload, limits: WireLimits) -> list:
    """Payload -> list of byte buffers (joined once by :func:`encode`)."""
    if isinstance(p, Empty):
        return []
    if isinstance(p, DenseFeatures):
        c, h, w = p.tensor.shape
        _check_grid(limits, "DenseFeatures", c, h, w, 0)
        head = struct.pack("<BHHH", _DTYPES.index(p.dtype), c, h, w)
        return [head, *_quantise(p.tensor, p.dtype, 0, "DenseFeatures.tensor")]
    if isinstance(p, SparseCells):
        c, h, w = p.shape
        _check_grid(limits, "SparseCells", c, h, w, p.num_cells)
        head = struct.pack("<BHHHI", _DTYPES.index(p.dtype), c, h, w, p.num_cells)
        cells = entropy.encode_index_set(p.indices, h * w)
        return [head, cells, *_quantise(p.values, p.dtype, 1, "SparseCells.values")]
    if isinstance(p, CodebookIndices):
        (h, w), k, g = p.shape, p.num_cells, p.num_groups
        _check_grid(limits, "CodebookIndices", 0, h, w, k)
        limits.check("CodebookIndices groups", g, min(limits.max_codebook_groups, 255), 1)
        limits.check("CodebookIndices.codebook_size", p.codebook_size, limits.max_codebook_size, 1)
        limits.check("CodebookIndices codes (cells x groups)", k * g, limits.max_codes)
        head = struct.pack("<HHIBII", h, w, k, g, p.codebook_size, p.codebook_id)
        cells = entropy.encode_index_set(p.indices, h * w)
        return [head, cells, entropy.encode_symbols(p.codes, p.codebook_size)]
    if isinstance(p, Boxes):
        limits.check("Boxes count", len(p), limits.max_boxes)
        return [struct.pack("<I", len(p)), _buf(p.boxes, "<f4"), _buf(p.scores, "<f4"), _buf(p.labels, np.uint8)]
    if isinstance(p, Composite):
        limits.check("Composite parts", len(p.parts), min(limits.max_parts, 255), 1)
        out = [struct.pack("<B", len(p.parts))]
        for part in p.parts:
            body = _encode_body(part, limits)
            out += [struct.pack("<BI", int(part.kind), sum(len(b) for b in body)), *body]
        return out
    raise WireError(f"cannot encode payload of type {type(p).__name__}")


def _check_grid(limits: WireLimits, name: str, c: int, h: int, w: int, k: int) -> None:
    limits.check(f"{name} channels", c, min(limits.max_channels, 65535))
    limits.check(f"{name} height", h, min(limits.max_height, 65535), 1)
    limits.check(f"{name} width", w, min(limits.max_width, 65535), 1)
    limits.check(f"{name} cells", k, limits.max_cells)


def _decode_dense(r: ByteReader, limits: WireLimits) -> DenseFeatures:
    dtype = _dtype_code(r)
    c, h, w = _read_dims(r, limits, "HHH", False)
    limits.check(f"{r.what} channels", c, limits.max_channels, 1)
    return DenseFeatures(_dequantise(r, dtype, (c, h, w), 0, "dense"), dtype)


def _decode_sparse(r: ByteReader, limits: WireLimits) -> SparseCells:
    dtype = _dtype_code(r)
    c, h, w, k = _read_dims(r, limits, "HHHI", True)
    limits.check(f"{r.what} channels", c, limits.max_channels)
    idx = entropy.decode_index_set(r, k, h * w)
    values = _dequantise(r, dtype, (k, c), 1, "sparse")
    return SparseCells((c, h, w), idx, values, dtype)


def _decode_codebook(r: ByteReader, limits: WireLimits) -> CodebookIndices:
    h, w, k = _read_dims(r, limits, "HHI", True)
    g, size, cid = r.unpack("BII", "codebook header")
    limits.check(f"{r.what} codebook groups", g, limits.max_codebook_groups, 1)
    limits.check(f"{r.what} codebook size", size, min(limits.max_codebook_size, entropy.MAX_ALPHABET), 1)
    limits.check(f"{r.what} codes (cells x groups)", k * g, limits.max_codes)
    idx = entropy.decode_index_set(r, k, h * w)
    codes = entropy.decode_symbols(r, k, g, size)
    return CodebookIndices((h, w), idx, codes, size, cid)


def _decode_boxes(r: ByteReader, limits: WireLimits) -> Boxes:
    (n,) = r.unpack("I", "box count")
    limits.check(f"{r.what} boxes", n, limits.max_boxes)
    boxes = r.array(np.float32, 7 * n, "boxes").reshape(n, 7)
    scores = r.array(np.float32, n, "scores")
    labels = r.array(np.uint8, n, "labels")
    return Boxes(boxes.copy(), scores.copy(), labels.astype(np.int64))


def _decode_composite(r: ByteReader, limits: WireLimits) -> Composite:
    (count,) = r.unpack("B", "part count")
    limits.check(f"{r.what} parts", count, limits.max_parts, 1)
    parts = []
    for i in range(count):
        kind, length = r.unpack("BI", f"part {i} header")
        if kind not in _LEAF_DECODERS:
            raise WireError(f"{r.what}: part {i} has kind {kind}, not a data payload")
        parts.append(_decode_exact(ByteReader(r.take(length, f"part {i}"), f"part {i}"), kind, limits))
    return Composite(tuple(parts))


_LEAF_DECODERS = {
    PayloadKind.DENSE: _decode_dense,
    PayloadKind.SPARSE: _decode_sparse,
    PayloadKind.CODEBOOK: _decode_codebook,
    PayloadKind.BOXES: _decode_boxes,
}


def _decode_exact(r: ByteReader, kind: int, limits: WireLimits) -> Payload:
    """Decode one payload body that must fill ``r`` exactly."""
    if kind == PayloadKind.EMPTY:
        payload: Payload = Empty()
    elif kind == PayloadKind.COMPOSITE:
        payload = _decode_composite(r, limits)
    elif kind in _LEAF_DECODERS:
        payload = _LEAF_DECODERS[PayloadKind(kind)](r, limits)
    else:
        raise WireError(f"{r.what}: unknown payload kind {kind}")
    if r.remaining:
        raise WireError(f"{r.what}: {r.remaining} unexpected bytes after the payload")
    return payload


# ------------------------------------------------------------------ messages


def encode(message: Message, limits: WireLimits = WireLimits()) -> bytes:
    """Message -> bytes (the exact bytes that travel; their ``len`` is the communication cost)."""
    sender = message.sender_id.encode("utf-8")
    limits.check("sender id bytes", len(sender), min(limits.max_sender_id_bytes, 255), 1)
    body = _encode_body(message.payload, limits)
    length = sum(len(b) for b in body)
    limits.check("message bytes", _FIXED_BYTES + len(sender) + length, limits.max_message_bytes)
    pose = message.world_from_lidar
    head = _HEAD.pack(MAGIC, VERSION, 0, int(message.kind), message.timestamp, length, len(sender))
    chunks = [head, sender, _POSE.pack(*pose[:3, 3], *pose[:3, :3].ravel()), *body]
    crc = 0
    for chunk in chunks:  # incremental CRC: the payload is copied once, by the join
        crc = zlib.crc32(chunk, crc)
    return b"".join([*chunks, _CRC.pack(crc)])


def decode(data: bytes, limits: WireLimits = WireLimits()) -> Message:
    """Untrusted bytes -> Message; raises :class:`WireError` (only) on anything malformed."""
    with np.errstate(all="ignore"):  # hostile floats (NaN, inf) are rejected explicitly, not warned about
        return _decode(data, limits)


def _decode(data: bytes, limits: WireLimits) -> Message:
    try:
        view = memoryview(data).cast("B")
    except TypeError as exc:
        raise WireError(f"decode needs bytes, got {type(data).__name__}") from exc
    if not _FIXED_BYTES + 1 <= len(view) <= limits.max_message_bytes:
        raise WireError(f"message of {len(view)} bytes outside [{_FIXED_BYTES + 1}, {limits.max_message_bytes}]")
    (crc,) = _CRC.unpack(view[-_CRC.size :])
    if zlib.crc32(view[: -_CRC.size]) != crc:
        raise WireError("message checksum (CRC-32) mismatch: corrupted bytes")
    r = ByteReader(view[: -_CRC.size], "message")
    magic, version, flags, kind, timestamp, length, sender_len = r.unpack(_HEAD.format[1:], "header")
    if magic != MAGIC:
        raise WireError(f"bad magic {bytes(magic)!r}, expected {MAGIC!r}")
    if version != VERSION or flags != 0:
        raise WireError(f"unsupported wire version {version} / flags {flags:#x} (this decoder reads v{VERSION})")
    limits.check("sender id bytes", sender_len, limits.max_sender_id_bytes, 1)
    try:
        sender = bytes(r.take(sender_len, "sender id")).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WireError(f"sender id is not UTF-8: {exc}") from exc
    values = r.unpack(_POSE.format[1:], "pose")
    pose = np.eye(4)
    pose[:3, 3], pose[:3, :3] = values[:3], np.reshape(values[3:], (3, 3))
    if length != r.remaining:
        raise WireError(f"payload length {length} but {r.remaining} payload bytes present")
    payload = _decode_exact(ByteReader(r.take(length, "payload"), f"{sender!r} payload"), kind, limits)
    return Message(sender, timestamp, pose, payload)
