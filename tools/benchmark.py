"""Run every speed benchmark in benchmarks/ (each prints its own table): `python tools/benchmark.py`."""

import subprocess
import sys
from pathlib import Path

if __name__ == "__main__":
    failures = 0
    for bench in sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("bench_*.py")):
        print(f"== {bench.name}", flush=True)
        failures += subprocess.call([sys.executable, str(bench)]) != 0
    sys.exit(1 if failures else 0)
