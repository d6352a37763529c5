"""Long-running fuzzer of the wire decoder (``coperception.comm.wire.decode``).

With atheris installed (``pip install atheris``) it runs coverage-guided libFuzzer::

    python benchmarks/fuzz_wire.py -atheris_runs=1000000        # libFuzzer flags pass through

Otherwise it runs a seeded random-mutation loop over a corpus of valid encodings of every payload
kind (bit flips, byte overwrites, truncation, extension, splicing, extreme values in size fields;
most mutants get their CRC-32 refreshed so they reach the payload parsers)::

    python benchmarks/fuzz_wire.py --seconds 600 --seed 0

Either way the only acceptable outcomes are a decoded Message or WireError. Anything else is a
bug: the input is written to ``--crash-dir`` and the process exits with status 1. The loop also
reports the slowest decode and the peak resident memory.
"""

from __future__ import annotations

import argparse
import collections
import pathlib
import re
import resource
import struct
import sys
import time
import zlib

import numpy as np

try:
    import atheris
except ImportError:  # the fallback loop below needs nothing beyond numpy
    atheris = None

if atheris is not None:
    with atheris.instrument_imports():
        from coperception.comm import entropy, message, wire  # noqa: F401
else:
    from coperception.comm import message, wire
from coperception.errors import WireError


def refresh_crc(data: bytes) -> bytes:
    body = data[:-4] if len(data) >= 4 else data
    return body + struct.pack("<I", zlib.crc32(body))


def build_corpus(rng: np.random.Generator) -> list[bytes]:
    """Valid encodings of every payload kind, with varied sizes and index/code statistics."""
    pose = np.eye(4)
    pose[:3, 3] = rng.normal(0, 100, 3)
    out = []
    for h, w, c in ((4, 5, 3), (20, 30, 8), (50, 64, 16)):
        k = int(rng.integers(1, h * w))
        idx = rng.choice(h * w, k, replace=False)
        clustered = np.arange(min(k, h * w))
        feats = rng.normal(size=(k, c))
        for dtype in message.FEATURE_DTYPES:
            out.append(message.DenseFeatures(rng.normal(size=(c, h, w)), dtype))
            out.append(message.SparseCells((c, h, w), idx, feats, dtype))
        out.append(message.SparseCells((0, h, w), clustered, np.zeros((k, 0))))
        for size in (2, 16, 1000):
            p = rng.dirichlet(np.full(size, 0.3))
            out.append(message.CodebookIndices((h, w), idx, rng.choice(size, (k, 6), p=p), size, 1))
        n = int(rng.integers(0, 40))
        out.append(message.Boxes(rng.normal(size=(n, 7)), rng.random(n), rng.integers(0, 6, n)))
    out.append(message.Composite(tuple(out[-3:])))
    out.append(message.Empty())
    return [wire.encode(message.Message(f"agent_{i}", i, pose, p)) for i, p in enumerate(out)]


_EXTREMES = (0, 1, 0x7F, 0x80, 0xFF, 0xFFFF, 0x10000, 0x7FFFFFFF, 0xFFFFFFFF)


def mutate(data: bytes, corpus: list[bytes], rng: np.random.Generator) -> bytes:
    buf = bytearray(data[:-4])
    for _ in range(int(rng.integers(1, 5))):
        op = int(rng.integers(0, 7))
        pos = int(rng.integers(0, max(len(buf), 1)))
        if op == 0 and buf:  # bit flip
            buf[pos] ^= 1 << int(rng.integers(0, 8))
        elif op == 1 and buf:  # byte overwrite
            buf[pos] = int(rng.integers(0, 256))
        elif op == 2:  # truncate
            del buf[pos:]
        elif op == 3:  # extend with random bytes
            buf[pos:pos] = rng.bytes(int(rng.integers(1, 64)))
        elif op == 4:  # splice a piece of another corpus entry
            other = corpus[int(rng.integers(0, len(corpus)))]
            start = int(rng.integers(0, len(other)))
            buf[pos:] = other[start : start + int(rng.integers(1, 256))]
        elif op == 5 and len(buf) >= pos + 4:  # extreme value in a (possible) u32 size field
            buf[pos : pos + 4] = struct.pack("<I", _EXTREMES[int(rng.integers(0, len(_EXTREMES)))])
        elif op == 6 and len(buf) >= pos + 2:  # extreme value in a (possible) u16 field
            buf[pos : pos + 2] = struct.pack("<H", _EXTREMES[int(rng.integers(0, 6))])
    if rng.random() < 0.7 and len(buf) >= 17 and len(buf) >= 77 + buf[16]:
        buf[12:16] = struct.pack("<I", len(buf) - 77 - buf[16])  # keep the payload length consistent
    out = bytes(buf) + b"\0\0\0\0"
    return refresh_crc(out) if rng.random() < 0.85 else out


def check_one(data: bytes) -> str:
    """Decode; return the outcome name. Any exception other than WireError propagates."""
    try:
        wire.decode(data)
    except WireError as exc:
        return "WireError: " + re.sub(r"'[^']*'|-?\d+", "#", str(exc))[:60]
    return "decoded"


def run_loop(seconds: float, seed: int, crash_dir: pathlib.Path, iterations: int | None) -> int:
    rng = np.random.default_rng(seed)
    corpus = build_corpus(rng)
    outcomes: collections.Counter = collections.Counter()
    slowest, n, t_end = 0.0, 0, time.monotonic() + seconds
    while time.monotonic() < t_end and (iterations is None or n < iterations):
        data = mutate(corpus[int(rng.integers(0, len(corpus)))], corpus, rng)
        t0 = time.perf_counter()
        try:
            outcome = check_one(data)
        except Exception as exc:  # noqa: BLE001 -- reporting the bug is the point
            crash_dir.mkdir(parents=True, exist_ok=True)
            path = crash_dir / f"crash_{seed}_{n}.bin"
            path.write_bytes(data)
            print(f"CRASH after {n} inputs: {type(exc).__name__}: {exc}\ninput written to {path}")
            return 1
        slowest = max(slowest, time.perf_counter() - t0)
        outcomes[outcome] += 1
        if outcome == "decoded" and len(corpus) < 500:
            corpus.append(data)  # keep valid mutants: they reach deeper states
        n += 1
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{n} inputs, no crash; slowest decode {slowest * 1e3:.1f} ms; peak RSS {rss_mib:.0f} MiB")
    for name, count in outcomes.most_common(15):
        print(f"{count:9d}  {name}")
    return 0


def run_atheris(argv: list[str]) -> None:
    def test_one_input(data: bytes) -> None:
        if data[:1] == b"\x01":  # let the fuzzer reach the payload parsers behind a valid CRC
            data = refresh_crc(data[1:])
        check_one(data)

    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--iterations", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--crash-dir", type=pathlib.Path, default=pathlib.Path("fuzz_crashes"))
    parser.add_argument("--no-atheris", action="store_true", help="use the random-mutation loop even if atheris exists")
    args, rest = parser.parse_known_args(argv[1:])
    if atheris is not None and not args.no_atheris:
        run_atheris([argv[0], *rest])
        return 0
    print("atheris not installed: seeded random-mutation loop" if atheris is None else "random-mutation loop")
    return run_loop(args.seconds, args.seed, args.crash_dir, args.iterations)


if __name__ == "__main__":
    sys.exit(main())
