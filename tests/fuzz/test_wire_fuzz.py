"""Fuzzing the wire decoder: hostile bytes may only ever raise WireError, quickly and in bounded memory.

Most mutations are followed by a CRC refresh so that they reach the header and payload parsers
instead of stopping at the checksum. ``benchmarks/fuzz_wire.py`` runs the same idea for hours
(with atheris when installed).
"""

import struct
import time
import tracemalloc
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coperception.comm.message import (
    Boxes,
    CodebookIndices,
    Composite,
    DenseFeatures,
    Empty,
    Message,
    PayloadKind,
    SparseCells,
)
from coperception.comm.wire import WireLimits, decode, encode
from coperception.errors import WireError

_FIXED = 17  # bytes before the sender id


def _corpus() -> list[bytes]:
    rng = np.random.default_rng(0)
    pose = np.eye(4)
    pose[:3, 3] = [10.0, -3.0, 1.5]
    idx = np.sort(rng.choice(12 * 16, 20, replace=False))
    clustered = np.arange(40, 60)
    skewed = rng.choice(16, (20, 6), p=[0.6] + [0.4 / 15] * 15)
    boxes = Boxes(rng.random((4, 7)) + 1, rng.random(4), [0, 1, 2, 3])
    payloads = [
        Empty(),
        DenseFeatures(rng.random((3, 4, 5)), "fp32"),
        DenseFeatures(rng.random((3, 4, 5)), "int8"),
        SparseCells((4, 12, 16), idx, rng.random((20, 4)), "fp16"),
        SparseCells((2, 12, 16), clustered, rng.random((20, 2)), "int8"),
        SparseCells((0, 12, 16), idx, np.zeros((20, 0))),
        CodebookIndices((12, 16), idx, skewed, 16, 3),
        CodebookIndices((12, 16), clustered, rng.integers(0, 300, (20, 2)), 300),
        boxes,
        Composite((boxes, CodebookIndices((12, 16), clustered, skewed, 16))),
    ]
    return [encode(Message("cav_1", 9, pose, p)) for p in payloads]


CORPUS = _corpus()


def _refresh_crc(data: bytes) -> bytes:
    return data[:-4] + struct.pack("<I", zlib.crc32(data[:-4]))


def _with_payload(template: bytes, kind: int, body: bytes) -> bytes:
    """Valid header (sender 'cav_1', pose) + the given payload kind/body + correct length and CRC."""
    sender_len = template[16]
    head = bytearray(template[: _FIXED + sender_len + 60])
    head[7] = kind
    head[12:16] = struct.pack("<I", len(body))
    return _refresh_crc(bytes(head) + body + b"\0\0\0\0")


def decode_only_wire_errors(data: bytes, limits: WireLimits = WireLimits()):
    try:
        msg = decode(data, limits)
    except WireError:
        return None
    assert isinstance(msg, Message)
    return msg


@given(st.binary(max_size=400))
@settings(max_examples=300, deadline=None)
def test_random_bytes(data):
    decode_only_wire_errors(data)
    decode_only_wire_errors(_refresh_crc(data + b"\0\0\0\0"))


def test_every_truncation_and_extension_is_rejected():
    for data in CORPUS:
        for n in range(len(data)):
            with pytest.raises(WireError):
                decode(data[:n])
        with pytest.raises(WireError):
            decode(data + b"\0")


@given(st.sampled_from(CORPUS), st.lists(st.integers(0, 10**9), min_size=1, max_size=3))
@settings(max_examples=200, deadline=None)
def test_bit_flips_fail_the_checksum(data, positions):
    buf = bytearray(data)
    for p in {p % (8 * len(buf)) for p in positions}:
        buf[p // 8] ^= 1 << (p % 8)
    with pytest.raises(WireError):
        decode(bytes(buf))


@given(st.sampled_from(CORPUS), st.lists(st.tuples(st.integers(0, 10**9), st.integers(0, 255)), min_size=1, max_size=8),
       st.integers(-40, 40))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_mutations_behind_a_valid_checksum(data, edits, resize):
    buf = bytearray(data[:-4])
    for pos, value in edits:
        buf[pos % len(buf)] = value
    if resize > 0:
        buf += bytes(range(resize))
    elif resize < 0:
        del buf[resize:]
    decode_only_wire_errors(_refresh_crc(bytes(buf) + b"\0\0\0\0"))


@given(st.sampled_from([int(k) for k in PayloadKind] + [6, 255]), st.binary(max_size=300))
@settings(max_examples=400, deadline=None)
def test_random_payload_bodies_behind_a_valid_header(kind, body):
    decode_only_wire_errors(_with_payload(CORPUS[0], kind, body))


# a 1024 x 1024 grid with 65536 cells selected (bitmap) and 64 groups: exactly WireLimits.max_codes
_CB_AT_LIMIT = (struct.pack("<HHIBII", 1024, 1024, 1 << 16, 64, 1 << 16, 0)
                + b"\x03" + b"\xff" * 8192 + bytes((1 << 17) - 8192))
_HUGE = [
    (PayloadKind.DENSE, struct.pack("<BHHH", 0, 65535, 65535, 65535)),
    (PayloadKind.DENSE, struct.pack("<BHHH", 2, 1024, 4096, 4096)),
    (PayloadKind.SPARSE, struct.pack("<BHHHI", 0, 1024, 4096, 4096, 0xFFFFFFFF)),
    (PayloadKind.SPARSE, struct.pack("<BHHHI", 1, 1024, 1024, 1024, 1 << 20) + b"\x01" + b"\x02\x00" + bytes([9] * 44)
     + struct.pack("<I", 2) + b"\x01\x02\x03\x04\x05\x06\x07\x08"),  # ANS gaps decoding 1M symbols of garbage
    (PayloadKind.SPARSE, struct.pack("<BHHHI", 0, 1024, 1024, 1024, 1 << 20) + b"\x03" + b"\xff" * 1000),
    (PayloadKind.CODEBOOK, struct.pack("<HHIBII", 4096, 4096, 1 << 20, 64, 1 << 16, 0) + b"\x02" + b"\xff" * 64),
    (PayloadKind.CODEBOOK, struct.pack("<HHIBII", 1024, 1024, 1 << 20, 64, 1 << 16, 0) + b"\x03" + b"\xff" * (1 << 17)),
    (PayloadKind.CODEBOOK, _CB_AT_LIMIT + b"\x01" * 64),  # 4M raw codes claimed, no bits present
    (PayloadKind.BOXES, struct.pack("<I", 0xFFFFFFFF)),
    (PayloadKind.COMPOSITE, struct.pack("<BBI", 8, 1, 0xFFFFFFFF)),
]


@pytest.mark.parametrize("kind,body", _HUGE)
def test_oversized_lengths_are_refused_quickly_in_bounded_memory(kind, body):
    data = _with_payload(CORPUS[0], kind, body)
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(WireError):
            decode(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - t0 < 2.0
    # claims of up to 64 GiB; what is allocated is bounded by max_cells (1 << 20) x a few words
    assert peak < 128 << 20, f"peak {peak / 2**20:.1f} MiB"


def test_largest_payload_within_the_limits_stays_bounded():
    """64 constant code columns (5 bytes each) legitimately expand to 4M codes: the worst case."""
    data = _with_payload(CORPUS[0], PayloadKind.CODEBOOK, _CB_AT_LIMIT + b"\x00\x00\x00\x00\x00" * 64)
    tracemalloc.start()
    try:
        msg = decode(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert msg.payload.codes.shape == (1 << 16, 64)
    assert peak < 96 << 20, f"peak {peak / 2**20:.1f} MiB"


def test_tighter_limits_bound_the_work():
    body = struct.pack("<BHHHI", 1, 64, 1024, 1024, 1 << 20)
    with pytest.raises(WireError, match="cells"):
        decode(_with_payload(CORPUS[0], PayloadKind.SPARSE, body), WireLimits(max_cells=1 << 16))
    with pytest.raises(WireError, match="message"):
        decode(CORPUS[1], WireLimits(max_message_bytes=100))
