"""Embedded simulator throughput: agent-scans per second with a 64-beam LiDAR (115,200 rays).

Town preset (3 x 3 roads, 67 moving road users + ~65 parked, 3 connected vehicles + 1 road-side
unit). Three figures, each timed from scratch (world building and traffic warm-up included):

* sense only: ``Simulation.step()`` in one process (Embree uses every core);
* generate, 1 worker: simulate + write OPV2V (binary PCD + YAML) in one process;
* generate, N workers: scenarios simulated and written in N processes (OPV2V); each worker
  starts a Python that imports open3d and torch (a few seconds), so short runs favour 1 worker.

    .venv/bin/python benchmarks/bench_sim.py [--frames 10] [--scenarios 2] [--workers 2] [--stages]

``--stages`` adds the mean ms per frame of each simulation stage and of the writer, which depends
much less on what else runs on the machine than the throughput figures.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from coperception.sim.generator import generate  # noqa: E402
from coperception.sim.scenarios import load_sim_config  # noqa: E402
from coperception.sim.simulation import Simulation  # noqa: E402


def _sense_only(cfg, scenarios: int, frames: int) -> tuple[float, int, int]:
    start = time.perf_counter()
    agents = objects = 0
    for seed in range(scenarios):
        sim = Simulation(cfg, seed=seed)
        for frame in sim.frames(frames):
            agents += len(frame.observations)
        objects = len(sim.vehicles) + len(sim.pedestrians)
    return time.perf_counter() - start, agents, objects


def _generate(cfg, scenarios: int, frames: int, workers: int, fmt: str) -> tuple[float, int, float]:
    """(seconds, agent-scans, steady agent-scans/s from the first frame's arrival until every file
    is written: without start-up)."""
    out = Path(tempfile.mkdtemp(prefix="bench_sim_"))
    stamps: list[tuple[float, int]] = []
    try:
        summary = generate(out, cfg, scenarios, frames, fmt, seed=0, split_ratios=(1, 0, 0), workers=workers,
                           on_frame=lambda info: stamps.append((time.perf_counter(), info.agents)))
        end = time.perf_counter()
        steady = sum(n for _, n in stamps[1:]) / max(end - stamps[0][0], 1e-9)
        return summary.seconds, summary.scans, steady
    finally:
        shutil.rmtree(out, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=10)
    parser.add_argument("--scenarios", type=int, default=2)
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--format", default="opv2v", choices=("opv2v", "dair-v2x"))
    parser.add_argument("--stages", action="store_true", help="also print a per-stage ms breakdown")
    args = parser.parse_args()
    cfg = load_sim_config(preset="town")
    print(f"town preset: {cfg.lidar.channels}-beam LiDAR, {cfg.lidar.rays_per_scan} rays per scan, "
          f"{cfg.agents.cavs} CAVs + {cfg.agents.rsus} RSU; {os.cpu_count()} CPU cores; load average "
          f"{os.getloadavg()[0]:.1f}")
    rows = []
    seconds, scans, dynamic = _sense_only(cfg, args.scenarios, args.frames)
    rows.append(("sense only (1 process)", scans, seconds, float("nan")))
    for workers in sorted({1, args.workers}):
        seconds, scans, steady = _generate(cfg, args.scenarios, args.frames, workers, args.format)
        rows.append((f"generate {args.format}, {workers} worker(s)", scans, seconds, steady))
    print(f"{dynamic} dynamic road users per scenario; {args.scenarios} scenarios x {args.frames} frames")
    print(f"{'':34s} {'agent-scans':>11s} {'seconds':>8s} {'scans/s':>8s} {'steady':>8s}")
    for name, scans, seconds, steady in rows:
        print(f"{name:34s} {scans:11d} {seconds:8.2f} {scans / seconds:8.1f} {steady:8.1f}")
    print("steady: agent-scans/s after the first frame arrived (worker start-up, imports and world "
          "building excluded)")
    if args.stages:
        _stage_breakdown(cfg, args.frames)
    return 0


def _stage_breakdown(cfg, frames: int) -> None:
    """Mean ms per frame of each stage of ``Simulation.sense`` and of the OPV2V writer, timed by
    wrapping the functions (one process; Embree on all cores, then on one)."""
    import collections
    import functools

    from coperception.data.formats import open_writer
    from coperception.sim import ground, raycast, simulation

    totals: dict[str, float] = collections.defaultdict(float)

    def timed(owner, name, label):
        fn = getattr(owner, name)

        @functools.wraps(fn)
        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                totals[label] += time.perf_counter() - t
        setattr(owner, name, wrapper)

    stages = [(simulation.Simulation, "sense", "sense (all below)"),
              (simulation.Simulation, "_rays", "  ray set-up (dropout, rotate, AoS)"),
              (simulation, "cast_rays", "  cast_rays (all below)"),
              (ground.Ground, "intersect_sparse", "    analytic ground"),
              (raycast.Hits, "__init__", "    merge ground into hits"),
              (simulation, "lidar_returns", "  returns -> points"),
              (simulation, "count_hits", "  visibility counts")]
    for owner, name, label in stages:
        timed(owner, name, label)
    order = [label for _, _, label in stages] + ["write OPV2V (PCD + YAML)"]
    for threads in (0, 1):
        totals.clear()
        sim = Simulation(cfg, seed=0, threads=threads)
        sim.step()
        totals.clear()
        out = Path(tempfile.mkdtemp(prefix="bench_sim_"))
        try:
            with open_writer("opv2v", out, "train") as writer:
                for frame in sim.frames(frames):
                    t = time.perf_counter()
                    writer.write(frame.scenario, frame)
                    totals["write OPV2V (PCD + YAML)"] += time.perf_counter() - t
        finally:
            shutil.rmtree(out, ignore_errors=True)
        print(f"per-frame stages ({len(sim.agents)} agents, Embree threads: {threads or 'all'}), ms:")
        totals["    Embree (scene build + traversal)"] = totals[order[2]] - totals[order[3]] - totals[order[4]]
        for label in order[:5] + ["    Embree (scene build + traversal)"] + order[5:]:
            print(f"  {label:38s} {1e3 * totals[label] / frames:7.2f}")


if __name__ == "__main__":
    sys.exit(main())
