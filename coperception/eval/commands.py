"""``coperception eval-boxes``: AP of saved detections against saved ground truth.

Files are in the format of :mod:`coperception.eval.boxes_io` (.npz or .json). The table names
the ranking variant (HEAL's global sort by default, OpenCOOD's per-frame order with
``--no-global-sort``); ``--json`` writes the same figures for scripts.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers) -> None:
    """Add the ``eval-boxes`` subcommand to an argparse ``subparsers`` object."""
    p = subparsers.add_parser("eval-boxes", help="AP of saved detections vs ground truth (OpenCOOD protocol)",
                              description=__doc__.splitlines()[0])
    p.add_argument("--detections", required=True, type=Path, help="detections file (.npz or .json)")
    p.add_argument("--gt", required=True, type=Path, help="ground-truth file (.npz or .json)")
    p.add_argument("--no-global-sort", dest="global_sort", action="store_false",
                   help="rank detections frame after frame (OpenCOOD's default) instead of globally by score (HEAL)")
    p.add_argument("--iou", nargs="+", type=float, default=[0.3, 0.5, 0.7], metavar="T",
                   help="IoU thresholds (default: 0.3 0.5 0.7)")
    p.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    p.set_defaults(func=run_eval_boxes)


def _table(result):
    from rich.table import Table

    table = Table(title=f"AP, ranking: {result.variant}", min_width=60,
                  caption=f"{result.num_frames} frames, {result.num_gt} GT boxes, {result.num_detections} detections")
    for col in ("IoU", "AP (%)", "TP", "FP", "GT"):
        table.add_column(col, justify="right")
    for t in result.thresholds:
        ap = "n/a (no GT)" if result.no_ground_truth else f"{100 * t.ap:.2f}"
        table.add_row(f"{t.iou_threshold:g}", ap, str(t.num_tp), str(t.num_fp), str(t.num_gt))
    return table


def run_eval_boxes(args: argparse.Namespace) -> int:
    """Evaluate, print a table, optionally write JSON; exit code 0."""
    from rich.console import Console

    from coperception.errors import ConfigError
    from coperception.eval.boxes_io import evaluate_files

    bad = [t for t in args.iou if not 0.0 <= t <= 1.0]
    if bad:
        raise ConfigError(f"--iou thresholds must lie in [0, 1], got {bad}")
    result = evaluate_files(args.detections, args.gt, tuple(args.iou), args.global_sort)
    console = Console()
    console.print(f"detections: {args.detections}\nground truth: {args.gt}")
    console.print(_table(result))
    if args.json is not None:
        doc = {"detections": str(args.detections), "ground_truth": str(args.gt), **result.to_dict()}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2))
    return 0
