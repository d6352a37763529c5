"""Round trips, layout and validation of the wire format (coperception/comm/wire.py)."""

import struct
import zlib

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coperception.comm.message import (
    Boxes,
    CodebookIndices,
    Composite,
    DenseFeatures,
    Empty,
    Message,
    SparseCells,
)
from coperception.comm.wire import MAGIC, VERSION, WireLimits, decode, empty_like, encode, min_message_bytes
from coperception.errors import WireError
from coperception.geometry.pose import se3_from_xyz_rpy

POSE = se3_from_xyz_rpy(512_345.25, -4_321_000.5, 31.7, roll=0.01, pitch=-0.02, yaw=2.5)


def _msg(payload, sender="cav_1", t=42):
    return Message(sender, t, POSE, payload)


def _refresh_crc(data: bytes) -> bytes:
    return data[:-4] + struct.pack("<I", zlib.crc32(data[:-4]))


def assert_payload_equal(a, b, atol=0.0):
    assert type(a) is type(b)
    if isinstance(a, Composite):
        assert len(a.parts) == len(b.parts)
        for x, y in zip(a.parts, b.parts):
            assert_payload_equal(x, y, atol)
        return
    for name, value in vars(a).items():
        other = getattr(b, name)
        if isinstance(value, np.ndarray):
            assert value.shape == other.shape, name
            np.testing.assert_allclose(other, value, rtol=0, atol=atol, err_msg=name)
        else:
            assert value == other, name


def assert_roundtrip(msg: Message, atol=0.0) -> bytes:
    data = encode(msg)
    out = decode(data)
    assert (out.sender_id, out.timestamp, out.kind) == (msg.sender_id, msg.timestamp, msg.kind)
    np.testing.assert_array_equal(out.world_from_lidar[:3, 3], msg.world_from_lidar[:3, 3])  # float64: exact
    np.testing.assert_allclose(out.world_from_lidar[:3, :3], msg.world_from_lidar[:3, :3], atol=1e-7)
    assert_payload_equal(msg.payload, out.payload, atol)
    if atol == 0:
        assert encode(out) == data  # lossless: re-encoding the decoded message gives the same bytes
    return data


def _features(rng, shape):
    return rng.standard_normal(shape).astype(np.float32) * 3


def test_empty_roundtrip_and_minimum_size():
    data = assert_roundtrip(_msg(Empty()))
    assert len(data) == min_message_bytes("cav_1") == 81 + 5
    assert data[:4] == MAGIC and struct.unpack_from("<H", data, 4)[0] == VERSION
    assert struct.unpack("<I", data[-4:])[0] == zlib.crc32(data[:-4])
    assert isinstance(decode(encode(empty_like(_msg(Boxes(np.zeros((0, 7)), [], []))))).payload, Empty)


def test_dense_roundtrip_and_exact_size():
    rng = np.random.default_rng(0)
    x = _features(rng, (8, 10, 12))
    data = assert_roundtrip(_msg(DenseFeatures(x, "fp32")))
    assert len(data) == 81 + 5 + 7 + x.size * 4
    assert len(encode(_msg(DenseFeatures(x, "fp16")))) == 81 + 5 + 7 + x.size * 2
    assert len(encode(_msg(DenseFeatures(x, "int8")))) == 81 + 5 + 7 + 8 * 8 + x.size


def test_fp16_and_int8_errors_are_within_documented_bounds():
    rng = np.random.default_rng(1)
    x = _features(rng, (6, 9, 11))
    x[2] = 0.5  # constant channel: int8 must be exact
    half = decode(encode(_msg(DenseFeatures(x, "fp16")))).payload.tensor
    assert np.all(np.abs(half - x) <= np.abs(x) * 2.0**-11 + 1e-7)
    q = decode(encode(_msg(DenseFeatures(x, "int8")))).payload.tensor
    scale = (x.max(axis=(1, 2)) - x.min(axis=(1, 2))) / 255
    assert np.all(np.abs(q - x) <= scale[:, None, None] / 2 + 1e-5)
    np.testing.assert_array_equal(q[2], x[2])
    assert np.abs(q - x).max() > 0  # int8 really is lossy


def test_sparse_roundtrip_all_dtypes_and_edge_cases():
    rng = np.random.default_rng(2)
    c, h, w = 16, 20, 30
    idx = np.sort(rng.choice(h * w, 37, replace=False))
    vals = _features(rng, (37, c))
    assert_roundtrip(_msg(SparseCells((c, h, w), idx, vals, "fp32")))
    for dtype, tol in (("fp16", 3 * 2.0**-11 * 8), ("int8", 0.2)):
        assert_roundtrip(_msg(SparseCells((c, h, w), idx, vals, dtype)), atol=tol)
    assert_roundtrip(_msg(SparseCells((0, h, w), idx, np.zeros((37, 0)))))  # request mask only
    assert_roundtrip(_msg(SparseCells((c, h, w), [], np.zeros((0, c)), "int8")))  # nothing selected
    assert_roundtrip(_msg(SparseCells((2, 3, 4), np.arange(12), _features(rng, (12, 2)))))  # everything


def test_sparse_indices_are_sorted_with_their_values():
    vals = np.arange(6, dtype=np.float32).reshape(3, 2)
    p = SparseCells((2, 4, 4), [9, 1, 5], vals)
    np.testing.assert_array_equal(p.indices, [1, 5, 9])
    np.testing.assert_array_equal(p.values, vals[[1, 2, 0]])
    with pytest.raises(WireError, match="duplicate"):
        SparseCells((2, 4, 4), [3, 1, 3], vals)
    with pytest.raises(WireError, match="indices"):
        SparseCells((2, 4, 4), [1, 2, 16], vals)


def test_codebook_roundtrip_is_exact():
    rng = np.random.default_rng(3)
    h, w = 50, 60
    idx = np.sort(rng.choice(h * w, 150, replace=False))
    for size in (1, 2, 16, 300, 65536):
        codes = rng.integers(0, size, size=(150, 6))
        p = CodebookIndices((h, w), idx, codes, size, codebook_id=7)
        assert_roundtrip(_msg(p))
    with pytest.raises(WireError, match="codes"):
        CodebookIndices((h, w), idx, np.full((150, 2), 16), 16)


def test_boxes_and_composite_roundtrip():
    rng = np.random.default_rng(4)
    boxes = np.c_[rng.uniform(-50, 50, (30, 3)), rng.uniform(1, 5, (30, 3)), rng.uniform(-3, 3, 30)]
    b = Boxes(boxes, rng.random(30), rng.integers(0, 6, 30))
    data = assert_roundtrip(_msg(b))
    assert len(data) == 86 + 4 + 30 * (28 + 4 + 1)
    assert_roundtrip(_msg(Boxes(np.zeros((0, 7)), [], [])))
    cb = CodebookIndices((8, 8), [1, 2, 40], [[0, 1], [2, 3], [3, 3]], 4)
    assert_roundtrip(_msg(Composite((b, cb, SparseCells((3, 8, 8), [5], [[1.0, 2.0, 3.0]], "fp16")))))


def test_torch_tensors_are_accepted():
    t = torch.randn(4, 5, 6, requires_grad=True)
    out = decode(encode(_msg(DenseFeatures(t * 2)))).payload.tensor
    np.testing.assert_array_equal(out, (t * 2).detach().numpy())


def test_invalid_messages_are_refused_at_construction_or_encode():
    with pytest.raises(WireError, match="non-finite"):
        DenseFeatures(np.full((1, 2, 2), np.nan))
    with pytest.raises(WireError, match="fp16"):
        encode(_msg(DenseFeatures(np.full((1, 2, 2), 1e6), "fp16")))
    with pytest.raises(WireError, match="rotation"):
        Message("a", 0, np.diag([2.0, 1, 1, 1]), Empty())
    with pytest.raises(WireError, match="timestamp"):
        Message("a", -1, np.eye(4), Empty())
    with pytest.raises(WireError, match="sender_id"):
        Message("", 0, np.eye(4), Empty())
    with pytest.raises(WireError, match="sender id bytes"):
        encode(Message("x" * 65, 0, np.eye(4)))
    with pytest.raises(WireError, match="Composite"):
        Composite((Empty(),))
    with pytest.raises(WireError, match="channels"):
        encode(_msg(DenseFeatures(np.zeros((5, 2, 2)))), WireLimits(max_channels=4))
    with pytest.raises(WireError, match="message bytes"):
        encode(_msg(DenseFeatures(np.zeros((5, 20, 20)))), WireLimits(max_message_bytes=1000))


def test_decoder_rejects_bad_checksum_magic_version_and_trailing_bytes():
    data = encode(_msg(SparseCells((4, 10, 10), [3, 50], np.ones((2, 4)))))
    flipped = bytearray(data)
    flipped[100] ^= 0x10
    with pytest.raises(WireError, match="checksum"):
        decode(bytes(flipped))
    with pytest.raises(WireError, match="magic"):
        decode(_refresh_crc(b"XXXX" + data[4:]))
    with pytest.raises(WireError, match="version"):
        decode(_refresh_crc(data[:4] + struct.pack("<H", 99) + data[6:]))
    with pytest.raises(WireError, match="payload length"):
        decode(_refresh_crc(data[:-4] + b"\0" + data[-4:]))
    with pytest.raises(WireError, match="limits"):
        decode(data, WireLimits(max_channels=3))
    with pytest.raises(WireError):
        decode("not bytes")  # type: ignore[arg-type]


# ------------------------------------------------------------------ property test

_grid = st.tuples(st.integers(0, 5), st.integers(1, 9), st.integers(1, 9))


@st.composite
def payloads(draw, leaf_only=False):
    kinds = ["dense", "sparse", "codebook", "boxes"] + ([] if leaf_only else ["empty", "composite"])
    kind = draw(st.sampled_from(kinds))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    dtype = draw(st.sampled_from(["fp32", "fp16", "int8"]))
    if kind == "empty":
        return Empty()
    if kind == "composite":
        return Composite(tuple(draw(st.lists(payloads(leaf_only=True), min_size=1, max_size=3))))
    c, h, w = draw(_grid)
    if kind == "dense":
        return DenseFeatures(_features(rng, (max(c, 1), h, w)), dtype)
    k = draw(st.integers(0, h * w))
    idx = rng.choice(h * w, k, replace=False)
    if kind == "sparse":
        return SparseCells((c, h, w), idx, _features(rng, (k, c)), dtype)
    if kind == "codebook":
        size = draw(st.sampled_from([1, 2, 3, 16, 256, 1000]))
        skew = rng.dirichlet(np.full(size, 0.2)) if size > 1 else np.ones(1)
        return CodebookIndices((h, w), idx, rng.choice(size, (k, draw(st.integers(1, 6))), p=skew), size)
    n = draw(st.integers(0, 12))
    return Boxes(_features(rng, (n, 7)), rng.random(n), rng.integers(0, 256, n))


@given(payloads(), st.text(min_size=1, max_size=20).filter(lambda s: len(s.encode()) <= 64), st.integers(0, 2**32 - 1))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_random_payloads_roundtrip(payload, sender, timestamp):
    msg = Message(sender, timestamp, POSE, payload)
    kinds = [payload] + list(getattr(payload, "parts", ()))
    lossy = any(getattr(p, "dtype", "fp32") != "fp32" for p in kinds)
    data = encode(msg)
    out = decode(data)
    assert out.sender_id == sender and out.timestamp == timestamp
    if lossy:
        assert_payload_equal(payload, out.payload, atol=0.2)
    else:
        assert_payload_equal(payload, out.payload)
    assert len(encode(out)) == len(data)
