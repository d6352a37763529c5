"""PCD reading/writing: round trips, Open3D compatibility (intensity in colors[:, 0]), bad files."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coperception.data.formats.pcd import (
    convert_pcd_to_binary,
    encode_pcd,
    parse_pcd_header,
    read_pcd,
    read_pcd_fields,
    write_pcd,
)
from coperception.errors import FormatError

o3d = pytest.importorskip("open3d")


def _points(n: int = 500, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pts = np.empty((n, 4), dtype=np.float32)
    pts[:, :3] = rng.normal(0.0, 30.0, (n, 3))
    pts[:, 3] = rng.uniform(0.0, 1.0, n)
    pts[:4, 3] = [0.0, 1.0, 0.5, 127.5 / 255]  # edges and a rounding tie
    return pts


def _quantised(intensity: np.ndarray) -> np.ndarray:
    return (np.floor(np.clip(intensity, 0, 1) * 255 + 0.5) / 255).astype(np.float32)


@pytest.mark.parametrize("binary", [True, False])
def test_round_trip_quantises_intensity_like_opv2v(tmp_path, binary):
    pts = _points()
    path = tmp_path / "a.pcd"
    write_pcd(path, pts, binary=binary)
    back = read_pcd(path)
    assert back.dtype == np.float32 and back.shape == pts.shape
    np.testing.assert_array_equal(back[:, :3], pts[:, :3])  # %.10g restores float32 bits exactly
    np.testing.assert_array_equal(back[:, 3], _quantised(pts[:, 3]))
    assert (b"DATA binary" if binary else b"DATA ascii") in path.read_bytes()[:400]


@pytest.mark.parametrize("binary", [True, False])
def test_exact_intensity_field_is_lossless(tmp_path, binary):
    pts = _points()
    write_pcd(tmp_path / "a.pcd", pts, binary=binary, exact_intensity=True)
    np.testing.assert_array_equal(read_pcd(tmp_path / "a.pcd"), pts)
    np.testing.assert_array_equal(read_pcd(tmp_path / "a.pcd", intensity="rgb")[:, 3], _quantised(pts[:, 3]))


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("exact", [False, True])
def test_open3d_reads_our_files_with_intensity_in_red(tmp_path, binary, exact):
    pts = _points()
    path = tmp_path / "a.pcd"
    write_pcd(path, pts, binary=binary, exact_intensity=exact)
    cloud = o3d.io.read_point_cloud(str(path))
    np.testing.assert_array_equal(np.asarray(cloud.points).astype(np.float32), pts[:, :3])
    colors = np.asarray(cloud.colors)
    # OpenCOOD's pcd_to_np: intensity = colors[:, 0], cast to float32 with the points.
    np.testing.assert_array_equal(colors[:, 0].astype(np.float32), read_pcd(path, intensity="rgb")[:, 3])
    np.testing.assert_allclose(colors[:, 0], pts[:, 3], atol=0.5 / 255 + 1e-7)
    assert np.all(colors[:, 1:] == 0)


def _opencda_ascii(pts: np.ndarray) -> bytes:
    """ASCII PCD as REFERENCE describes OpenCDA's: rgb TYPE F, the float whose bits are r<<16."""
    red = np.floor(np.clip(pts[:, 3], 0, 1) * 255 + 0.5).astype(np.uint32) << np.uint32(16)
    rgb = red.view(np.float32).astype(np.float64)
    header = ("# .PCD v0.7 - Point Cloud Data file format\nVERSION 0.7\nFIELDS x y z rgb\nSIZE 4 4 4 4\n"
              "TYPE F F F F\nCOUNT 1 1 1 1\nWIDTH %d\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS %d\n"
              "DATA ascii\n") % (len(pts), len(pts))
    rows = ["%.10g %.10g %.10g %.10g" % (x, y, z, c) for (x, y, z), c in zip(pts[:, :3].tolist(), rgb.tolist())]
    return (header + "\n".join(rows) + "\n").encode()


def test_decodes_opencda_float_rgb_exactly_as_open3d(tmp_path):
    pts = _points()
    path = tmp_path / "opencda.pcd"
    path.write_bytes(_opencda_ascii(pts))
    ours = read_pcd(path)
    cloud = o3d.io.read_point_cloud(str(path))
    np.testing.assert_array_equal(ours[:, :3], np.asarray(cloud.points).astype(np.float32))
    np.testing.assert_array_equal(ours[:, 3], np.asarray(cloud.colors)[:, 0].astype(np.float32))
    np.testing.assert_array_equal(ours[:, 3], _quantised(pts[:, 3]))


@pytest.mark.parametrize("kwargs", [{"write_ascii": True}, {"write_ascii": False}, {"compressed": True}])
def test_reads_open3d_written_files(tmp_path, kwargs):
    pts = _points(2000, seed=3)
    cloud = o3d.geometry.PointCloud()
    cloud.points = o3d.utility.Vector3dVector(pts[:, :3].astype(np.float64))
    cloud.colors = o3d.utility.Vector3dVector(np.c_[pts[:, 3], np.zeros((len(pts), 2))])
    path = tmp_path / "o3d.pcd"
    o3d.io.write_point_cloud(str(path), cloud, **kwargs)
    back = o3d.io.read_point_cloud(str(path))
    ours = read_pcd(path)
    np.testing.assert_array_equal(ours[:, :3], np.asarray(back.points).astype(np.float32))
    np.testing.assert_array_equal(ours[:, 3], np.asarray(back.colors)[:, 0].astype(np.float32))


def test_convert_to_binary_keeps_bits(tmp_path):
    src = tmp_path / "a.pcd"
    src.write_bytes(_opencda_ascii(_points()))
    before = read_pcd_fields(src)
    dst = tmp_path / "b.pcd"
    convert_pcd_to_binary(src, dst)
    assert parse_pcd_header(dst.read_bytes()).data == "binary"
    after = read_pcd_fields(dst)
    for name in before:
        np.testing.assert_array_equal(after[name].view(np.uint32), before[name].view(np.uint32))
    convert_pcd_to_binary(src)  # in place
    np.testing.assert_array_equal(read_pcd(src), read_pcd(dst))


def test_empty_cloud_round_trips(tmp_path):
    for binary in (True, False):
        write_pcd(tmp_path / "e.pcd", np.zeros((0, 4), np.float32), binary=binary)
        assert read_pcd(tmp_path / "e.pcd").shape == (0, 4)


def test_other_fields_and_drop_nan(tmp_path):
    header = ("VERSION .7\nFIELDS x y z intensity ring\nSIZE 4 4 4 4 2\nTYPE F F F F U\nCOUNT 1 1 1 1 1\n"
              "WIDTH 3\nHEIGHT 1\nPOINTS 3\nDATA ascii\n")
    body = "1 2 3 40 7\nnan 0 0 1 2\n-1 -2 -3 0.25 65535\n"
    (tmp_path / "d.pcd").write_text(header + body)
    pts = read_pcd(tmp_path / "d.pcd")
    assert pts.shape == (3, 4) and pts[0, 3] == 40 and np.isnan(pts[1, 0])
    np.testing.assert_array_equal(read_pcd(tmp_path / "d.pcd", drop_nan=True)[:, 3], [40, 0.25])
    assert read_pcd_fields(tmp_path / "d.pcd")["ring"].tolist() == [7, 2, 65535]
    with pytest.raises(FormatError, match="no rgb field"):
        read_pcd(tmp_path / "d.pcd", intensity="rgb")


_GOOD = encode_pcd(_points(20), binary=True)
_HEAD = _GOOD[: _GOOD.index(b"DATA binary\n") + len(b"DATA binary\n")]


@pytest.mark.parametrize("data, match", [
    (_GOOD[:-5], "truncated"),
    (_HEAD.replace(b"POINTS 20", b"POINTS 21").replace(b"WIDTH 20", b"WIDTH 21") + _GOOD[len(_HEAD):], "truncated"),
    (_HEAD.replace(b"POINTS 20", b"POINTS 19") + _GOOD[len(_HEAD):], "POINTS 19 != WIDTH 20"),
    (_HEAD.replace(b"DATA binary", b"DATA zip") + _GOOD[len(_HEAD):], "DATA 'zip'"),
    (_HEAD.replace(b"SIZE 4 4 4 4", b"SIZE 4 4 4") + _GOOD[len(_HEAD):], "lengths differ"),
    (_HEAD.replace(b"TYPE F F F F", b"TYPE F F F X") + _GOOD[len(_HEAD):], "unsupported TYPE"),
    (_HEAD.replace(b"WIDTH 20", b"WIDTH twenty") + _GOOD[len(_HEAD):], "WIDTH must be integers"),
    (_GOOD[:40], "no DATA line"),
    (b"", "no DATA line"),
    (b"\xff\xfe\x00garbage\n", "not ASCII"),
])
def test_bad_binary_files_raise_format_error(tmp_path, data, match):
    path = tmp_path / "bad.pcd"
    path.write_bytes(data)
    with pytest.raises(FormatError, match=match) as info:
        read_pcd(path)
    assert str(path) in str(info.value)


_ASCII = encode_pcd(_points(5), binary=False)


@pytest.mark.parametrize("data, match", [
    (_ASCII.rsplit(b"\n", 2)[0] + b"\n", "has 16 values"),
    (_ASCII + b"1 2 3 4\n", "has 24 values"),
    (_ASCII[:-3] + b"abc\n", "non-numeric"),
    (_ASCII.replace(b"TYPE F F F F", b"TYPE F F F U"), "non-integer"),
])
def test_bad_ascii_files_raise_format_error(tmp_path, data, match):
    path = tmp_path / "bad.pcd"
    path.write_bytes(data)
    with pytest.raises(FormatError, match=match):
        read_pcd(path)


def test_missing_file_raises_format_error(tmp_path):
    with pytest.raises(FormatError, match="cannot read PCD"):
        read_pcd(tmp_path / "nope.pcd")


_SAMPLES = [encode_pcd(_points(8), binary=True), encode_pcd(_points(8), binary=False)]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.integers(0, 1), cuts=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=6),
       truncate=st.integers(0, 10_000))
def test_mutated_files_parse_or_raise_format_error(tmp_path, which, cuts, truncate):
    data = bytearray(_SAMPLES[which])
    for pos, value in cuts:
        data[pos % len(data)] = value
    data = bytes(data[: max(1, len(data) - truncate % 64)])
    path = tmp_path / "fuzz.pcd"
    path.write_bytes(data)
    try:
        pts = read_pcd(path)
    except FormatError:
        return
    assert pts.ndim == 2 and pts.shape[1] == 4 and pts.dtype == np.float32
