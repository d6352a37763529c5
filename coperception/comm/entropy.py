"""Entropy coding of the integer streams in messages: codebook indices and sparse cell indices.

Design (why a *transmitted* frequency table and not an adaptive model). Adaptive arithmetic coding
makes each symbol's model depend on the symbols decoded before it, so decoding is a Python loop
over cells; a semi-static model -- count the symbols, quantise the counts to one byte each, send
the table, code with it -- lets both sides make one vectorised ``constriction`` call per column
("constriction: entropy coders for research and production", Bamler 2022; we use its ANS coder,
``constriction.stream.stack.AnsCoder`` with ``model.Categorical(perfect=False)``). The table
costs at most ``n`` bytes per column (``3 * nnz + 4`` if sparse), so for each column the encoder
estimates the coded size from the counts and keeps the cheapest of three modes: ``CONST`` (one
value repeated), ``RAW`` (fixed-width bit packing, ``ceil(log2 n)`` bits a symbol) and ``ANS``.
A column is one codebook group/stage, since residual stages have different statistics.

Unbounded integers (gaps between sparse indices, run lengths) are first split as in DEFLATE /
exp-Golomb: values < 16 are symbols of their own; a larger value v becomes the symbol of its bit
length plus ``bitlen(v) - 1`` raw mantissa bits. The symbols are entropy coded as above.

A sparse cell set (sorted flattened indices in ``[0, N)``, its size K known from the payload
header) is coded with whichever of four modes is smallest for that set -- the choice costs one
byte and the best mode changes with the selection rate: ``VARINT`` (LEB128 gaps; the baseline),
``GAPS`` (entropy-coded gaps), ``RUNS`` (entropy-coded run lengths of unselected / selected cells,
best for masks clustered around objects as in Where2comm) and ``BITMAP`` (N bits, best above
roughly 1/8 of the cells).

Compatibility: ``constriction`` turns the float table into its fixed-point model deterministically,
but that conversion is its own; a constriction release that changed it would change the ANS bits,
so the wire version must be bumped with such an upgrade (a golden-bytes test catches it).

Decoding treats bytes as untrusted: every count is bounded by the caller (``WireLimits``) before
anything is allocated, every read is checked against the bytes left, allocations are O(count) and
never O(claimed size), ANS decoding of garbage yields in-range symbols and stops after the bounded
count, and anything inconsistent raises :class:`~coperception.errors.WireError`.
"""

from __future__ import annotations

import struct

import constriction
import numpy as np

from coperception.errors import WireError

MAX_ALPHABET = 1 << 16
_CONST, _RAW, _ANS = 0, 1, 2
_TABLE_DENSE, _TABLE_SPARSE = 0, 1
_DIRECT = 16  # uint values below this are their own symbol
_UINT_ALPHABET = _DIRECT + 28  # + bit lengths 5..32
_IDX_VARINT, _IDX_GAPS, _IDX_RUNS, _IDX_BITMAP = 0, 1, 2, 3
INDEX_MODES = {"varint": _IDX_VARINT, "gaps": _IDX_GAPS, "runs": _IDX_RUNS, "bitmap": _IDX_BITMAP}


class ByteReader:
    """Bounded cursor over untrusted bytes: every read checks the bytes left before taking them."""

    def __init__(self, data, what: str = "message") -> None:
        self.buf = memoryview(data).cast("B")
        self.pos = 0
        self.what = what

    @property
    def remaining(self) -> int:
        return len(self.buf) - self.pos

    def take(self, n: int, field: str) -> memoryview:
        if n < 0 or n > self.remaining:
            raise WireError(f"{self.what}: {field} needs {n} bytes but {self.remaining} are left")
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str, field: str) -> tuple:
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt), field))

    def array(self, dtype, count: int, field: str) -> np.ndarray:
        """``count`` little-endian elements of ``dtype`` (a read-only view of the input)."""
        dt = np.dtype(dtype).newbyteorder("<")
        if count < 0 or count > self.remaining // dt.itemsize:
            raise WireError(f"{self.what}: {field} claims {count} x {dt.itemsize} bytes but {self.remaining} are left")
        return np.frombuffer(self.take(count * dt.itemsize, field), dtype=dt)


# ---------------------------------------------------------------- bit packing (MSB first)


def pack_bits(values: np.ndarray, widths: np.ndarray) -> bytes:
    """Concatenate ``values[i]`` as ``widths[i]`` bits (0..32 each), MSB first, zero padded to bytes."""
    widths = np.asarray(widths, dtype=np.int64)
    total = int(widths.sum())
    if total == 0:
        return b""
    keep = widths > 0
    v, w = np.asarray(values, dtype=np.uint64)[keep], widths[keep]
    start = np.cumsum(w) - w
    shift = (64 - (start & 7) - w).astype(np.uint64)
    window = (v << shift).astype(">u8").view(np.uint8).reshape(-1, 8)
    pos = (start >> 3)[:, None] + np.arange(8)
    nbytes = (total + 7) // 8
    out = np.bincount(pos.ravel(), weights=window.ravel(), minlength=nbytes + 8)  # disjoint bits: sum == or
    return out[:nbytes].astype(np.uint8).tobytes()


def unpack_bits(reader: ByteReader, widths: np.ndarray, field: str) -> np.ndarray:
    """Read values packed by :func:`pack_bits` with the given (trusted, bounded) widths -> uint64."""
    widths = np.asarray(widths, dtype=np.int64)
    total = int(widths.sum())
    data = reader.array(np.uint8, (total + 7) // 8, field)
    out = np.zeros(widths.shape, dtype=np.uint64)
    if total == 0:
        return out
    padded = np.concatenate([data, np.zeros(8, np.uint8)])
    start = np.cumsum(widths) - widths
    window = padded[(start >> 3)[:, None] + np.arange(8)].view(">u8")[:, 0].astype(np.uint64)
    shift = (64 - (start & 7) - widths).astype(np.uint64)
    mask = (np.uint64(1) << widths.astype(np.uint64)) - np.uint64(1)
    return (window >> shift) & mask


# ---------------------------------------------------------------- symbol streams


def _quantised_table(counts: np.ndarray) -> np.ndarray:
    """Counts -> one-byte frequencies, >= 1 for every symbol that occurs."""
    q = np.ceil(counts * 255.0 / max(int(counts.max()), 1))
    return np.where(counts > 0, np.maximum(q, 1), 0).astype(np.uint8)


def _table_bytes(q: np.ndarray) -> bytes:
    nz = np.flatnonzero(q)
    if 3 * nz.size + 4 < q.size:
        entries = np.empty(nz.size, dtype=[("sym", "<u2"), ("freq", "u1")])
        entries["sym"], entries["freq"] = nz, q[nz]
        return struct.pack("<BI", _TABLE_SPARSE, nz.size) + entries.tobytes()
    return struct.pack("<B", _TABLE_DENSE) + q.tobytes()


def _read_table(reader: ByteReader, n: int) -> np.ndarray:
    (fmt,) = reader.unpack("B", "table format")
    if fmt == _TABLE_DENSE:
        q = reader.array(np.uint8, n, "frequency table").astype(np.float64)
    elif fmt == _TABLE_SPARSE:
        (nnz,) = reader.unpack("I", "table size")
        if nnz > n:
            raise WireError(f"{reader.what}: sparse table has {nnz} entries for an alphabet of {n}")
        entries = reader.array(np.dtype([("sym", "<u2"), ("freq", "u1")]), nnz, "sparse table")
        sym = entries["sym"].astype(np.int64)
        if nnz and (sym.max() >= n or np.any(np.diff(sym) <= 0)):
            raise WireError(f"{reader.what}: sparse table symbols unsorted or >= alphabet {n}")
        q = np.zeros(n)
        q[sym] = entries["freq"]
    else:
        raise WireError(f"{reader.what}: unknown frequency table format {fmt}")
    if q.sum() <= 0:
        raise WireError(f"{reader.what}: frequency table is all zero")
    return q


def _ans_cost_bytes(counts: np.ndarray, q: np.ndarray) -> float:
    """Estimated ANS payload bytes of symbols with ``counts`` under table ``q``."""
    used = counts > 0
    p = q[used] / q.sum()
    return float(-(counts[used] * np.log2(p)).sum()) / 8.0 + 8.0  # + coder state


def _model(q: np.ndarray):
    return constriction.stream.model.Categorical(q.astype(np.float64), perfect=False)


def encode_symbols(symbols: np.ndarray, alphabet_size: int) -> bytes:
    """(M, G) ints in ``[0, alphabet_size)`` -> self-delimiting bytes; M and G travel elsewhere."""
    sym = np.asarray(symbols, dtype=np.int64)
    n = int(alphabet_size)
    if sym.ndim != 2 or not 1 <= n <= MAX_ALPHABET or (sym.size and (sym.min() < 0 or sym.max() >= n)):
        raise WireError(f"encode_symbols: need (M, G) ints in [0, {n}) with n <= {MAX_ALPHABET}")
    m, width = sym.shape[0], (n - 1).bit_length()
    heads, ans_cols, raw_cols = [], [], []
    for g in range(sym.shape[1]):
        col = sym[:, g]
        counts = np.bincount(col, minlength=n)
        if m and np.count_nonzero(counts) == 1:
            heads.append(struct.pack("<BI", _CONST, int(col[0])))
            continue
        q = _quantised_table(counts) if m else None
        table = _table_bytes(q) if m else b""
        if m and n > 1 and len(table) + _ans_cost_bytes(counts, q) < m * width / 8.0:
            heads.append(struct.pack("<B", _ANS) + table)
            ans_cols.append((col, q))
        else:
            heads.append(struct.pack("<B", _RAW))
            raw_cols.append(col)
    out = heads
    if ans_cols:
        coder = constriction.stream.stack.AnsCoder()
        for col, q in reversed(ans_cols):
            coder.encode_reverse(col.astype(np.int32), _model(q))
        words = coder.get_compressed().astype("<u4")
        out += [struct.pack("<I", words.size), words.tobytes()]
    if raw_cols:
        values = np.concatenate(raw_cols)
        out.append(pack_bits(values, np.full(values.size, width)))
    return b"".join(out)


def decode_symbols(reader: ByteReader, count: int, groups: int, alphabet_size: int) -> np.ndarray:
    """Inverse of :func:`encode_symbols` -> (count, groups) int64. ``count``/``groups`` must be bounded."""
    n = int(alphabet_size)
    if not 1 <= n <= MAX_ALPHABET:
        raise WireError(f"{reader.what}: alphabet size {n} outside [1, {MAX_ALPHABET}]")
    out = np.zeros((count, groups), dtype=np.int64)
    ans, raw = [], []
    for g in range(groups):
        (mode,) = reader.unpack("B", "column mode")
        if mode == _CONST:
            (value,) = reader.unpack("I", "constant symbol")
            if value >= n:
                raise WireError(f"{reader.what}: constant symbol {value} >= alphabet {n}")
            out[:, g] = value
        elif mode == _ANS and n > 1:
            ans.append((g, _read_table(reader, n)))
        elif mode == _RAW:
            raw.append(g)
        else:
            raise WireError(f"{reader.what}: unknown column mode {mode} (alphabet {n})")
    if ans:
        _decode_ans(reader, out, ans, count)
    if raw:
        values = unpack_bits(reader, np.full(count * len(raw), (n - 1).bit_length()), "raw symbols")
        if values.size and values.max() >= n:
            raise WireError(f"{reader.what}: raw symbol {int(values.max())} >= alphabet {n}")
        out[:, raw] = values.reshape(len(raw), count).T
    return out


def _decode_ans(reader: ByteReader, out: np.ndarray, columns: list, count: int) -> None:
    (nwords,) = reader.unpack("I", "ANS word count")
    words = reader.array(np.uint32, nwords, "ANS words").astype(np.uint32)
    try:
        coder = constriction.stream.stack.AnsCoder(words) if nwords else constriction.stream.stack.AnsCoder()
        for g, q in columns:
            out[:, g] = coder.decode(_model(q), count)
        leftover = not coder.is_empty()
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # constriction raises ValueError / AssertionError / pyo3 panics
        raise WireError(f"{reader.what}: invalid ANS stream ({type(exc).__name__}: {exc})") from exc
    if leftover:
        raise WireError(f"{reader.what}: ANS stream has data left after {count} symbols")


# ---------------------------------------------------------------- unbounded unsigned integers


def _bit_length(v: np.ndarray) -> np.ndarray:
    """Bit length of non-negative ints < 2**53 (0 -> 0)."""
    return np.frexp(v.astype(np.float64))[1].astype(np.int64)


def encode_uints(values: np.ndarray) -> bytes:
    """(M, G) integers in ``[0, 2**32)`` -> bucket symbols (entropy coded) + raw mantissa bits."""
    v = np.asarray(values, dtype=np.int64)
    if v.size and (v.min() < 0 or v.max() >= 1 << 32):
        raise WireError("encode_uints: values must lie in [0, 2**32)")
    bl = _bit_length(v)
    big = v >= _DIRECT
    sym = np.where(big, _DIRECT + bl - 5, v)
    widths = np.where(big, bl - 1, 0)
    extra = np.where(big, v - (np.int64(1) << np.maximum(bl - 1, 0)), 0)
    return encode_symbols(sym, _UINT_ALPHABET) + pack_bits(extra.T.ravel(), widths.T.ravel())


def decode_uints(reader: ByteReader, count: int, groups: int) -> np.ndarray:
    """Inverse of :func:`encode_uints` -> (count, groups) int64."""
    sym = decode_symbols(reader, count, groups, _UINT_ALPHABET)
    big = sym >= _DIRECT
    bl = np.where(big, sym - _DIRECT + 5, 0)
    widths = np.where(big, bl - 1, 0)
    extra = unpack_bits(reader, widths.T.ravel(), "uint mantissas").astype(np.int64).reshape(groups, count).T
    return np.where(big, (np.int64(1) << np.maximum(bl - 1, 0)) + extra, sym)


# ---------------------------------------------------------------- sparse cell index sets


def _varint_bytes(v: np.ndarray) -> bytes:
    nb = np.maximum(1, (_bit_length(v) + 6) // 7)
    pos = np.arange(int(nb.sum())) - np.repeat(np.cumsum(nb) - nb, nb)
    b = (np.repeat(v, nb) >> (7 * pos)) & 0x7F
    more = pos < np.repeat(nb, nb) - 1
    return (b | (more.astype(np.int64) << 7)).astype(np.uint8).tobytes()


def _read_varints(reader: ByteReader, count: int) -> np.ndarray:
    scan = np.frombuffer(reader.buf[reader.pos : reader.pos + 5 * count], dtype=np.uint8)
    ends = np.flatnonzero(scan < 0x80)[:count]
    if ends.size < count:
        raise WireError(f"{reader.what}: {count} varints expected, {ends.size} found")
    data = reader.array(np.uint8, int(ends[-1]) + 1 if count else 0, "varints").astype(np.int64)
    starts = np.concatenate([[0], ends[:-1] + 1]).astype(np.int64)
    lengths = ends - starts + 1
    if lengths.size and lengths.max() > 5:
        raise WireError(f"{reader.what}: varint longer than 5 bytes")
    pos = np.arange(data.size) - np.repeat(starts, lengths)
    parts = (data & 0x7F) << (7 * pos)
    return np.add.reduceat(parts, starts) if count else np.zeros(0, np.int64)


def _runs(indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted indices -> (run starts, run lengths)."""
    brk = np.flatnonzero(np.diff(indices) != 1) + 1
    first = np.concatenate([[0], brk])
    lengths = np.diff(np.concatenate([first, [indices.size]]))
    return indices[first], lengths


def _index_candidates(idx: np.ndarray, n_total: int) -> dict[int, bytes]:
    gaps = np.diff(idx, prepend=-1) - 1
    starts, lengths = _runs(idx)
    zeros = np.diff(starts, prepend=0) - np.concatenate([[0], lengths[:-1]]) - (np.arange(starts.size) > 0)
    runs = struct.pack("<I", starts.size) + encode_uints(np.stack([zeros, lengths - 1], axis=1))
    mask = np.zeros(n_total, dtype=bool)
    mask[idx] = True
    return {
        _IDX_VARINT: _varint_bytes(gaps),
        _IDX_GAPS: encode_uints(gaps[:, None]),
        _IDX_RUNS: runs,
        _IDX_BITMAP: np.packbits(mask).tobytes(),
    }


def encode_index_set(indices: np.ndarray, n_total: int, mode: str | None = None) -> bytes:
    """Sorted unique (K,) indices in ``[0, n_total)`` -> bytes (K and n_total travel elsewhere).

    ``mode`` forces one of :data:`INDEX_MODES` (for measurements); by default the smallest is used.
    An empty or full set is implied by K and costs nothing.
    """
    idx = np.asarray(indices, dtype=np.int64)
    if idx.size == 0 or idx.size == n_total:
        return b""
    candidates = _index_candidates(idx, n_total)
    code = INDEX_MODES[mode] if mode is not None else min(candidates, key=lambda k: len(candidates[k]))
    return struct.pack("<B", code) + candidates[code]


def decode_index_set(reader: ByteReader, count: int, n_total: int) -> np.ndarray:
    """Inverse of :func:`encode_index_set` -> sorted unique (count,) int64; count <= n_total bounded."""
    if count > n_total:
        raise WireError(f"{reader.what}: {count} cells selected out of {n_total}")
    if count == 0 or count == n_total:
        return np.arange(count, dtype=np.int64)
    (mode,) = reader.unpack("B", "index mode")
    if mode == _IDX_VARINT:
        idx = np.cumsum(_read_varints(reader, count) + 1) - 1
    elif mode == _IDX_GAPS:
        idx = np.cumsum(decode_uints(reader, count, 1)[:, 0] + 1) - 1
    elif mode == _IDX_RUNS:
        idx = _decode_runs(reader, count, n_total)
    elif mode == _IDX_BITMAP:
        bits = reader.array(np.uint8, (n_total + 7) // 8, "cell bitmap")
        idx = np.flatnonzero(np.unpackbits(bits, count=n_total)).astype(np.int64)
        if idx.size != count:
            raise WireError(f"{reader.what}: bitmap has {idx.size} cells, header says {count}")
    else:
        raise WireError(f"{reader.what}: unknown index mode {mode}")
    if idx[-1] >= n_total:
        raise WireError(f"{reader.what}: cell index {int(idx[-1])} >= {n_total} cells")
    return idx


def _decode_runs(reader: ByteReader, count: int, n_total: int) -> np.ndarray:
    (n_runs,) = reader.unpack("I", "run count")
    if not 1 <= n_runs <= count:
        raise WireError(f"{reader.what}: {n_runs} runs for {count} cells")
    zl = decode_uints(reader, n_runs, 2)
    lengths = zl[:, 1] + 1
    if int(lengths.sum()) != count:
        raise WireError(f"{reader.what}: run lengths sum to {int(lengths.sum())}, header says {count}")
    skips = zl[:, 0] + (np.arange(n_runs) > 0)
    ends = np.cumsum(skips + lengths)
    if ends[-1] > n_total:
        raise WireError(f"{reader.what}: runs end at {int(ends[-1])} > {n_total} cells")
    starts = ends - lengths
    first = np.cumsum(lengths) - lengths
    return np.arange(count, dtype=np.int64) + np.repeat(starts - first, lengths)


def index_set_sizes(indices: np.ndarray, n_total: int) -> dict[str, int]:
    """Bytes each index mode would take for this set (for measurements and mode choice)."""
    idx = np.asarray(indices, dtype=np.int64)
    if idx.size == 0 or idx.size == n_total:
        return {name: 0 for name in INDEX_MODES}
    cand = _index_candidates(idx, n_total)
    return {name: 1 + len(cand[code]) for name, code in INDEX_MODES.items()}


__all__ = [
    "ByteReader", "pack_bits", "unpack_bits", "encode_symbols", "decode_symbols", "encode_uints",
    "decode_uints", "encode_index_set", "decode_index_set", "index_set_sizes", "INDEX_MODES", "MAX_ALPHABET",
]
