"""Benchmark: AP evaluation of coperception vs OpenCOOD's ``eval_utils`` (same process, same data).

Generates seeded frames of GT vehicles and detections (noisy copies of most GT boxes plus false
positives), times :class:`coperception.eval.ap.APEvaluator` and OpenCOOD's
``caluclate_tp_fp`` + ``calculate_ap`` at IoU 0.3/0.5/0.7, checks that the per-frame-order APs
agree to 1e-6 and prints a table.

    .venv/bin/python benchmarks/bench_ap.py                 # 1,000 frames x 50 GT x 100 detections
    .venv/bin/python benchmarks/bench_ap.py --frames 100
"""

from __future__ import annotations

import argparse
import copy
import sys
import time

import numpy as np
import torch

from coperception.eval.ap import APEvaluator
from coperception.geometry.boxes import boxes_to_corners

THRESHOLDS = (0.3, 0.5, 0.7)


def make_frame(rng: np.random.Generator, n_gt: int, n_det: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One frame: (n_det, 7) detections, (n_det,) scores, (n_gt, 7) GT vehicles in a 280 m x 80 m area."""
    gt = np.empty((n_gt, 7))
    gt[:, 0] = rng.uniform(-135, 135, n_gt)
    gt[:, 1] = rng.uniform(-35, 35, n_gt)
    gt[:, 2] = rng.uniform(-1.8, -1.4, n_gt)
    gt[:, 3] = rng.normal(4.5, 0.4, n_gt).clip(3.0, 6.0)
    gt[:, 4] = rng.normal(1.9, 0.15, n_gt).clip(1.5, 2.5)
    gt[:, 5] = rng.normal(1.6, 0.1, n_gt).clip(1.3, 2.0)
    gt[:, 6] = rng.uniform(-np.pi, np.pi, n_gt)
    n_tp = min(n_det, int(0.8 * n_gt))
    hit = rng.choice(n_gt, n_tp, replace=False)
    det_tp = gt[hit].copy()
    det_tp[:, :2] += rng.normal(0, 0.35, (n_tp, 2))
    det_tp[:, 3:6] *= rng.normal(1, 0.06, (n_tp, 3)).clip(0.8, 1.2)
    det_tp[:, 6] += rng.normal(0, 0.08, n_tp)
    n_fp = n_det - n_tp
    det_fp = gt[rng.integers(0, n_gt, n_fp)].copy()
    det_fp[:, :2] += rng.normal(0, 3.0, (n_fp, 2))  # near misses and duplicates around GT
    det_fp[:, 6] = rng.uniform(-np.pi, np.pi, n_fp)
    dets = np.concatenate([det_tp, det_fp])
    scores = np.concatenate([rng.beta(5, 2, n_tp), rng.beta(2, 5, n_fp)])
    perm = rng.permutation(n_det)
    return dets[perm], scores[perm], gt


def run_ours(frames, global_sort: bool) -> tuple[float, dict[float, float]]:
    t0 = time.perf_counter()
    ev = APEvaluator(THRESHOLDS)
    for dets, scores, gt in frames:
        ev.add_frame(dets, scores, gt)
    res = ev.result(global_sort=global_sort)
    return time.perf_counter() - t0, {t: res.ap(t) for t in THRESHOLDS}


def run_opencood(frames) -> tuple[float, dict[float, float]]:
    from opencood.utils import eval_utils

    # Corners are precomputed outside the timing: OpenCOOD receives them from its post-processor.
    tensors = [(torch.from_numpy(boxes_to_corners(d)), torch.from_numpy(s), torch.from_numpy(boxes_to_corners(g)))
               for d, s, g in frames]
    t0 = time.perf_counter()
    stat = {t: {"tp": [], "fp": [], "gt": 0} for t in THRESHOLDS}
    for dets, scores, gt in tensors:
        for t in THRESHOLDS:
            eval_utils.caluclate_tp_fp(dets, scores, gt, stat, t)
    aps = {t: eval_utils.calculate_ap(copy.deepcopy(stat), t)[0] for t in THRESHOLDS}
    return time.perf_counter() - t0, aps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=1000)
    parser.add_argument("--gt", type=int, default=50, help="GT boxes per frame")
    parser.add_argument("--dets", type=int, default=100, help="detections per frame")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3, help="runs of ours (best time is reported)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads for ours (default 1: a single-core comparison, as OpenCOOD's "
                             "shapely loop uses one core; 0 keeps torch's default)")
    parser.add_argument("--skip-opencood", action="store_true")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    rng = np.random.default_rng(args.seed)
    frames = [make_frame(rng, args.gt, args.dets) for _ in range(args.frames)]
    ours = [run_ours(frames, global_sort=False) for _ in range(args.repeat)]
    t_ours, ap_ours = min(ours, key=lambda r: r[0])
    t_glob, ap_glob = min((run_ours(frames, global_sort=True) for _ in range(args.repeat)), key=lambda r: r[0])

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"AP evaluation: {args.frames} frames x {args.gt} GT x {args.dets} detections, "
                        f"IoU {', '.join(map(str, THRESHOLDS))} (torch {torch.get_num_threads()} threads)")
    for col in ("implementation", "time s", "ms / frame", "speed-up", "AP@0.3", "AP@0.5", "AP@0.7"):
        table.add_column(col, justify="right" if col != "implementation" else "left")
    rows = [("coperception, per-frame order", t_ours, ap_ours), ("coperception, global sort", t_glob, ap_glob)]
    ok = True
    if not args.skip_opencood:
        t_peer, ap_peer = run_opencood(frames)
        rows.insert(0, ("OpenCOOD eval_utils (per-frame order)", t_peer, ap_peer))
        diff = max(abs(ap_peer[t] - ap_ours[t]) for t in THRESHOLDS)
        ok = diff <= 1e-6
    base = rows[0][1]
    for name, t, aps in rows:
        table.add_row(name, f"{t:.3f}", f"{1e3 * t / args.frames:.3f}", f"{base / t:.1f}x",
                      *(f"{aps[th]:.6f}" for th in THRESHOLDS))
    Console(width=160).print(table)
    if not args.skip_opencood:
        print(f"max |AP ours - AP OpenCOOD| (per-frame order) = {diff:.2e}: {'OK' if ok else 'MISMATCH'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
