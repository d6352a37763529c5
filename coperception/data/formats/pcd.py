"""Point Cloud Data (PCD v0.7) files as the OPV2V family stores LiDAR sweeps.

OPV2V / V2XSet / OPV2V-H clouds were written by OpenCDA with Open3D: fields ``x y z rgb``, the
LiDAR intensity packed into the *red* byte of the ``rgb`` word (``r = round(clip(i, 0, 1) * 255)``,
bits ``r << 16 | g << 8 | b``), ASCII bodies. OpenCOOD / HEAL read them with
``open3d.io.read_point_cloud`` and take ``intensity = colors[:, 0] = r / 255``. This module reads
and writes that layout without Open3D, and fast:

* ``DATA binary``: one ``np.frombuffer`` over the body (no copy of the header or per-point work);
* ``DATA ascii``: one ``np.fromstring`` pass over the body (C ``strtod``), no ``np.loadtxt``;
* ``DATA binary_compressed`` (PCL's LZF, column-major): decoded for completeness; it is the slow
  path (the LZF token loop is Python) and neither OpenCDA nor this writer produces it.

Files written here are read by Open3D with the intensity in ``colors[:, 0]`` (tested), quantised to
1/255 like OPV2V's. ``exact_intensity=True`` adds a float ``intensity`` field that
:func:`read_pcd` prefers (Open3D ignores it), for lossless round trips.
:func:`convert_pcd_to_binary` rewrites an ASCII PCD as binary losslessly (same float bits), which
makes the original OPV2V release faster to load for OpenCOOD and for us alike.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from coperception.errors import FormatError

_MAX_HEADER_BYTES = 1 << 16
_TYPE_CODES = {("F", 4): "<f4", ("F", 8): "<f8", ("U", 1): "u1", ("U", 2): "<u2", ("U", 4): "<u4",
               ("U", 8): "<u8", ("I", 1): "i1", ("I", 2): "<i2", ("I", 4): "<i4", ("I", 8): "<i8"}
_COLOR_FIELDS = ("rgb", "rgba")


@dataclass(frozen=True)
class PcdHeader:
    """Parsed PCD header. ``data_offset`` is the byte offset of the body in the file."""

    fields: tuple[str, ...]
    sizes: tuple[int, ...]
    types: tuple[str, ...]
    counts: tuple[int, ...]
    width: int
    height: int
    points: int
    data: str
    data_offset: int

    @property
    def dtype(self) -> np.dtype:
        """Structured dtype of one point record (little-endian)."""
        spec = []
        for name, size, kind, count in zip(self.fields, self.sizes, self.types, self.counts):
            code = _TYPE_CODES[(kind, size)]
            spec.append((name, code) if count == 1 else (name, code, (count,)))
        return np.dtype(spec)

    @property
    def columns(self) -> int:
        return int(sum(self.counts))


def _header_ints(key: str, values: list[str], path) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in values)
    except ValueError:
        raise FormatError(f"{path}: PCD header {key} must be integers, got {' '.join(values)!r}") from None


def parse_pcd_header(buf: bytes, path="<bytes>") -> PcdHeader:
    """Parse the text header of a PCD file held in ``buf``; raises FormatError on anything wrong."""
    entries: dict[str, list[str]] = {}
    pos = 0
    limit = min(len(buf), _MAX_HEADER_BYTES)
    while True:
        nl = buf.find(b"\n", pos, limit)
        if nl < 0:
            raise FormatError(f"{path}: PCD header has no DATA line in its first {limit} bytes")
        try:
            line = buf[pos:nl].decode("ascii").strip()
        except UnicodeDecodeError:
            raise FormatError(f"{path}: PCD header is not ASCII text (not a PCD file?)") from None
        pos = nl + 1
        if not line or line.startswith("#"):
            continue
        key, *values = line.split()
        entries[key.upper()] = values
        if key.upper() == "DATA":
            break
    return _header_from_entries(entries, pos, path)


def _header_from_entries(entries: dict[str, list[str]], offset: int, path) -> PcdHeader:
    for key in ("FIELDS", "SIZE", "TYPE", "WIDTH", "HEIGHT"):
        if key not in entries:
            raise FormatError(f"{path}: PCD header lacks {key}")
    fields = tuple(entries["FIELDS"])
    sizes = _header_ints("SIZE", entries["SIZE"], path)
    types = tuple(t.upper() for t in entries["TYPE"])
    counts = _header_ints("COUNT", entries.get("COUNT", ["1"] * len(fields)), path)
    if not fields or not (len(fields) == len(sizes) == len(types) == len(counts)):
        raise FormatError(f"{path}: PCD header FIELDS/SIZE/TYPE/COUNT lengths differ "
                          f"({len(fields)}/{len(sizes)}/{len(types)}/{len(counts)})")
    if len(set(fields)) != len(fields):
        raise FormatError(f"{path}: PCD header FIELDS repeats a name: {' '.join(fields)}")
    for name, size, kind, count in zip(fields, sizes, types, counts):
        if (kind, size) not in _TYPE_CODES or count < 1:
            raise FormatError(f"{path}: PCD field {name!r} has unsupported TYPE {kind} SIZE {size} COUNT {count}")
    (width,), (height,) = _one_int("WIDTH", entries, path), _one_int("HEIGHT", entries, path)
    points = _one_int("POINTS", entries, path)[0] if "POINTS" in entries else width * height
    if width < 0 or height < 0 or points != width * height:
        raise FormatError(f"{path}: PCD header POINTS {points} != WIDTH {width} x HEIGHT {height}")
    data = entries["DATA"][0].lower() if entries["DATA"] else ""
    if data not in ("ascii", "binary", "binary_compressed"):
        raise FormatError(f"{path}: PCD header DATA {data!r} is not ascii, binary or binary_compressed")
    return PcdHeader(fields, sizes, types, counts, width, height, points, data, offset)


def _one_int(key: str, entries: dict[str, list[str]], path) -> tuple[int]:
    values = entries[key]
    if len(values) != 1:
        raise FormatError(f"{path}: PCD header {key} needs one value, got {values}")
    return _header_ints(key, values, path)  # type: ignore[return-value]


def _decode_binary(buf: bytes, header: PcdHeader, path) -> np.ndarray:
    dtype = header.dtype
    need = header.points * dtype.itemsize
    have = len(buf) - header.data_offset
    if have < need:
        raise FormatError(f"{path}: PCD body truncated: header says POINTS {header.points} "
                          f"({need} bytes) but only {have} bytes follow")
    return np.frombuffer(buf, dtype=dtype, count=header.points, offset=header.data_offset)


def _decode_ascii(buf: bytes, header: PcdHeader, path) -> np.ndarray:
    body = buf[header.data_offset:]
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        try:
            flat = np.fromstring(body, dtype=np.float64, sep=" ")
        except (DeprecationWarning, ValueError):
            raise FormatError(f"{path}: PCD ascii body has a non-numeric token") from None
    expected = header.points * header.columns
    if flat.size != expected:
        raise FormatError(f"{path}: PCD ascii body has {flat.size} values, header says POINTS "
                          f"{header.points} x {header.columns} columns = {expected}")
    table = flat.reshape(header.points, header.columns)
    out = np.empty(header.points, dtype=header.dtype)
    col = 0
    for name, kind, count in zip(header.fields, header.types, header.counts):
        values = table[:, col:col + count] if count > 1 else table[:, col]
        if kind != "F":
            info = np.iinfo(out.dtype[name].base)
            if not (np.all(values == np.round(values)) and np.all((values >= info.min) & (values <= info.max))):
                raise FormatError(f"{path}: PCD ascii field {name!r} of TYPE {kind} has non-integer "
                                  f"or out-of-range values")
        out[name] = values
        col += count
    return out


def lzf_decompress(data: bytes, expected_size: int, path="<bytes>") -> bytes:
    """Decompress an LZF block (liblzf format, as PCL's ``binary_compressed`` uses)."""
    out = bytearray()
    ip, n = 0, len(data)
    try:
        while ip < n:
            ctrl = data[ip]
            ip += 1
            if ctrl < 32:
                out += data[ip:ip + ctrl + 1]
                ip += ctrl + 1
                continue
            length = ctrl >> 5
            if length == 7:
                length += data[ip]
                ip += 1
            ref = len(out) - ((ctrl & 0x1F) << 8) - data[ip] - 1
            ip += 1
            length += 2
            if ref < 0:
                raise FormatError(f"{path}: LZF back-reference before the start of the output")
            if ref + length <= len(out):
                out += out[ref:ref + length]
            else:  # overlapping copy repeats the last bytes
                for k in range(length):
                    out.append(out[ref + k])
    except IndexError:
        raise FormatError(f"{path}: LZF stream ends in the middle of a token") from None
    if len(out) != expected_size:
        raise FormatError(f"{path}: LZF block decodes to {len(out)} bytes, header says {expected_size}")
    return bytes(out)


def _decode_compressed(buf: bytes, header: PcdHeader, path) -> np.ndarray:
    off = header.data_offset
    if len(buf) < off + 8:
        raise FormatError(f"{path}: PCD binary_compressed body lacks its 8-byte size prefix")
    comp, raw = np.frombuffer(buf, dtype="<u4", count=2, offset=off).tolist()
    dtype = header.dtype
    if raw != header.points * dtype.itemsize:
        raise FormatError(f"{path}: PCD binary_compressed holds {raw} bytes, header says POINTS "
                          f"{header.points} x {dtype.itemsize} bytes")
    if len(buf) < off + 8 + comp:
        raise FormatError(f"{path}: PCD binary_compressed body truncated ({len(buf) - off - 8} of {comp} bytes)")
    plain = lzf_decompress(buf[off + 8:off + 8 + comp], raw, path) if raw else b""
    out = np.empty(header.points, dtype=dtype)
    pos = 0
    for name, count in zip(header.fields, header.counts):  # column-major: one field after another
        base = dtype[name].base
        column = np.frombuffer(plain, dtype=base, count=header.points * count, offset=pos)
        out[name] = column.reshape(out[name].shape)
        pos += column.nbytes
    return out


def read_pcd_fields(path) -> dict[str, np.ndarray]:
    """All fields of a PCD file: name -> (P,) or (P, COUNT) array of the header's type."""
    path = Path(path)
    try:
        buf = path.read_bytes()
    except OSError as exc:
        raise FormatError(f"{path}: cannot read PCD file ({exc.strerror})") from None
    header = parse_pcd_header(buf, path)
    decode = {"binary": _decode_binary, "ascii": _decode_ascii, "binary_compressed": _decode_compressed}
    table = decode[header.data](buf, header, path)
    return {name: table[name] for name in header.fields}


def rgb_bits(values: np.ndarray) -> np.ndarray:
    """The 32 bits of a packed ``rgb`` column as uint32, whatever its declared TYPE (F, U or I)."""
    arr = np.ascontiguousarray(values)
    if arr.dtype.itemsize != 4:
        return arr.astype(np.uint32)
    return arr.view(np.uint32)


def rgb_to_intensity(values: np.ndarray) -> np.ndarray:
    """Packed ``rgb`` column -> (P,) float32 intensity ``red / 255`` (what Open3D's colors[:, 0] holds)."""
    red = (rgb_bits(values) >> np.uint32(16)) & np.uint32(0xFF)
    return (red.astype(np.float64) / 255.0).astype(np.float32)


def intensity_to_rgb(intensity: np.ndarray) -> np.ndarray:
    """(P,) intensity in [0, 1] -> (P,) uint32 packed rgb with ``r = round(clip(i) * 255)``, g = b = 0."""
    red = np.floor(np.clip(np.nan_to_num(intensity, nan=0.0), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint32)
    return red << np.uint32(16)


def read_pcd(path, *, intensity: str = "auto", drop_nan: bool = False) -> np.ndarray:
    """Read a PCD file as (P, 4) float32 ``x, y, z, intensity`` in the sensor frame.

    intensity: ``"auto"`` takes a float ``intensity`` field when present, else the red byte of
        ``rgb`` / 255 (OPV2V), else zeros; ``"rgb"`` / ``"field"`` force one source (FormatError if
        absent); ``"none"`` gives zeros.
    drop_nan: drop points with a non-finite coordinate (Open3D keeps them by default).
    """
    fields = read_pcd_fields(path)
    for axis in ("x", "y", "z"):
        if axis not in fields:
            raise FormatError(f"{path}: PCD file has no {axis!r} field (fields: {list(fields)})")
    for name in ("x", "y", "z", "intensity") + _COLOR_FIELDS:
        if name in fields and fields[name].ndim != 1:
            raise FormatError(f"{path}: PCD field {name!r} must have COUNT 1, got {fields[name].shape[1]}")
    points = np.empty((len(fields["x"]), 4), dtype=np.float32)
    points[:, 0], points[:, 1], points[:, 2] = fields["x"], fields["y"], fields["z"]
    points[:, 3] = _intensity_column(fields, intensity, path)
    if drop_nan:
        points = points[np.isfinite(points[:, :3]).all(axis=1)]
    return points


def _intensity_column(fields: dict[str, np.ndarray], mode: str, path) -> np.ndarray | float:
    color = next((name for name in _COLOR_FIELDS if name in fields), None)
    if mode not in ("auto", "rgb", "field", "none"):
        raise ValueError(f"intensity must be 'auto', 'rgb', 'field' or 'none', got {mode!r}")
    if mode == "none":
        return 0.0
    if mode in ("auto", "field") and "intensity" in fields:
        return fields["intensity"]
    if mode in ("auto", "rgb") and color is not None:
        return rgb_to_intensity(fields[color])
    if mode == "auto":
        return 0.0
    raise FormatError(f"{path}: PCD file has no {'rgb' if mode == 'rgb' else 'intensity'} field "
                      f"(fields: {list(fields)})")


def _header_text(fields, sizes, types, n: int, data: str) -> bytes:
    lines = ["# .PCD v0.7 - Point Cloud Data file format", "VERSION 0.7",
             "FIELDS " + " ".join(fields), "SIZE " + " ".join(map(str, sizes)),
             "TYPE " + " ".join(types), "COUNT " + " ".join("1" for _ in fields),
             f"WIDTH {n}", "HEIGHT 1", "VIEWPOINT 0 0 0 1 0 0 0", f"POINTS {n}", f"DATA {data}", ""]
    return "\n".join(lines).encode("ascii")


def encode_pcd(points: np.ndarray, *, binary: bool = True, exact_intensity: bool = False) -> bytes:
    """(P, 4) ``x, y, z, intensity`` -> PCD bytes with fields ``x y z rgb [intensity]``.

    ``rgb`` is declared TYPE F (the PCL/OpenCDA convention: the float whose bits are the packed
    colour); ASCII bodies print it and the coordinates with ``%.10g``, which restores the exact
    float32 bits on reading.
    """
    pts = np.asarray(points)
    if pts.ndim != 2 or pts.shape[1] < 3:
        raise ValueError(f"points must be (P, >=3), got shape {pts.shape}")
    n = len(pts)
    inten = pts[:, 3].astype(np.float32) if pts.shape[1] > 3 else np.zeros(n, np.float32)
    ncol = 5 if exact_intensity else 4
    table = np.empty((n, ncol), dtype=np.float32)
    table[:, :3] = pts[:, :3]
    table[:, 3] = intensity_to_rgb(inten).view(np.float32)
    if exact_intensity:
        table[:, 4] = inten
    fields = ("x", "y", "z", "rgb", "intensity")[:ncol]
    header = _header_text(fields, [4] * ncol, ["F"] * ncol, n, "binary" if binary else "ascii")
    if binary:
        return header + table.tobytes()
    row = " ".join(["%.10g"] * ncol)
    body = "\n".join(row % tuple(values) for values in table.astype(np.float64).tolist())
    return header + body.encode("ascii") + (b"\n" if n else b"")


def write_pcd(path, points: np.ndarray, *, binary: bool = True, exact_intensity: bool = False) -> None:
    """Write (P, 4) ``x, y, z, intensity`` (sensor frame) as a PCD file; see :func:`encode_pcd`."""
    data = encode_pcd(points, binary=binary, exact_intensity=exact_intensity)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def convert_pcd_to_binary(src, dst=None) -> None:
    """Rewrite an ASCII (or compressed) PCD as ``DATA binary`` with the same fields and float bits.

    Lossless for Open3D/OpenCOOD readers; ``dst`` defaults to overwriting ``src``.
    """
    src = Path(src)
    buf = src.read_bytes()
    header = parse_pcd_header(buf, src)
    if header.data == "binary" and dst is None:
        return
    table = read_pcd_fields(src)
    record = np.empty(header.points, dtype=header.dtype)
    for name in header.fields:
        record[name] = table[name]
    lines = buf[:header.data_offset].decode("ascii").splitlines()
    lines = [f"DATA binary" if ln.strip().upper().startswith("DATA") else ln for ln in lines]
    out = Path(dst) if dst is not None else src
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(("\n".join(lines) + "\n").encode("ascii") + record.tobytes())
    os.replace(tmp, out)
