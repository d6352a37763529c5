"""``coperception eval`` (a trained detector on a dataset split) and ``coperception eval-boxes``
(AP of saved detections against saved ground truth).

Files are in the format of :mod:`coperception.eval.boxes_io` (.npz or .json). The table names
the ranking variant (HEAL's global sort by default, OpenCOOD's per-frame order with
``--no-global-sort``); ``--json`` writes the same figures for scripts.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers) -> None:
    """Add the ``eval`` and ``eval-boxes`` subcommands to an argparse ``subparsers`` object."""
    e = subparsers.add_parser("eval", help="AP@IoU (OpenCOOD protocol) and bytes sent of a trained detector",
                              description="Evaluate a checkpoint per inference mode on a dataset split.")
    e.add_argument("--checkpoint", required=True, type=Path, help="a checkpoint written by `coperception train`")
    e.add_argument("--split", default=None, help="library split name (default: the config's test split)")
    e.add_argument("--data-root", default=None, help="override data.root of the saved config")
    e.add_argument("--modes", nargs="+", default=None, choices=["single", "late", "early", "intermediate"],
                   help="inference modes (default: the config's eval.modes)")
    e.add_argument("--no-global-sort", dest="global_sort", action="store_false", default=None,
                   help="rank detections frame after frame (OpenCOOD's default) instead of globally (HEAL)")
    e.add_argument("--max-frames", type=int, default=None, help="evaluate only the first N frames")
    e.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    e.add_argument("--json", type=Path, default=None, help="write the results to this JSON file")
    e.set_defaults(func=run_eval)
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


def results_table(reports, title: str):
    """A rich table: one row per mode with AP at each threshold and the bytes each collaborator sent."""
    from rich.table import Table

    first = next(iter(reports.values()))
    table = Table(title=title, caption=f"AP ranking: {first.ap.variant}; {first.ap.num_frames} frames, "
                                       f"{first.ap.num_gt} GT boxes; bytes = len(wire encoding) per collaborator")
    table.add_column("mode")
    for t in first.ap.thresholds:
        table.add_column(f"AP@{t.iou_threshold:g}", justify="right")
    table.add_column("bytes/agent/frame", justify="right")
    table.add_column("log2 B", justify="right")
    for mode, rep in reports.items():
        summary = rep.comm.summary()
        sent = summary.bytes_per_agent_frame
        aps = ["n/a" if rep.ap.no_ground_truth else f"{100 * t.ap:.2f}" for t in rep.ap.thresholds]
        table.add_row(mode, *aps, f"{sent:,.0f}" if sent else "0", f"{summary.log2_bytes_per_agent_frame:.2f}"
                      if sent else "-")
    return table


def run_eval(args: argparse.Namespace) -> int:
    """Evaluate a checkpoint: a table on the console and optionally JSON."""
    import torch
    from rich.console import Console
    from rich.progress import Progress

    from coperception.models.experiment import evaluate_experiment, load_detector, write_report

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cfg, model = load_detector(args.checkpoint, device, data_root=args.data_root)
    split = args.split or cfg.data.test_split
    with Progress(transient=True) as progress:
        task = progress.add_task(f"eval {split}", total=None)
        reports = evaluate_experiment(cfg, model, split=split, modes=args.modes, device=device,
                                      global_sort=args.global_sort, max_frames=args.max_frames,
                                      on_batch=lambda n: progress.advance(task, n))
    Console().print(results_table(reports, f"{cfg.name} on {cfg.data.root} [{split}]"))
    if args.json is not None:
        write_report(reports, args.json, {"checkpoint": str(args.checkpoint), "split": split, "config": cfg.name})
    return 0
