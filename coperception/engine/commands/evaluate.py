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


def _data_overrides(parser) -> None:
    """``--data-root`` / ``--agent-frame``: override the checkpoint's saved ``data`` fields."""
    from coperception.data.agent_frames import AGENT_FRAMES

    parser.add_argument("--data-root", default=None, help="override data.root of the saved config")
    parser.add_argument("--agent-frame", default=None, choices=AGENT_FRAMES,
                        help="override data.agent_frame (the frame collaborator clouds are encoded in)")


def register(subparsers) -> None:
    """Add the ``eval`` and ``eval-boxes`` subcommands to an argparse ``subparsers`` object."""
    e = subparsers.add_parser("eval", help="AP@IoU (OpenCOOD protocol) and bytes sent of a trained detector",
                              description="Evaluate a checkpoint per inference mode on a dataset split.")
    e.add_argument("--checkpoint", required=True, type=Path, help="a checkpoint written by `coperception train`")
    e.add_argument("--split", default=None, help="library split name (default: the config's test split)")
    _data_overrides(e)
    e.add_argument("--modes", nargs="+", default=None, choices=["single", "late", "early", "intermediate"],
                   help="inference modes (default: the config's eval.modes)")
    e.add_argument("--no-global-sort", dest="global_sort", action="store_false", default=None,
                   help="rank detections frame after frame (OpenCOOD's default) instead of globally (HEAL)")
    e.add_argument("--max-frames", type=int, default=None, help="evaluate only the first N frames")
    e.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    e.add_argument("--json", type=Path, default=None, help="write the results to this JSON file")
    e.add_argument("--strategy", default=None, metavar="SPEC",
                   help="communication strategy of intermediate inference (see `coperception sweep -h`); "
                        "default: the checkpoint's")
    e.add_argument("--budget", type=int, default=None, help="bytes per agent per frame (default: eval.budget_bytes)")
    e.add_argument("--loss-prob", type=float, default=0.0, help="channel: probability a message is lost")
    e.add_argument("--corrupt-prob", type=float, default=0.0, help="channel: probability of bit errors (CRC drops it)")
    e.add_argument("--pose-noise", type=float, nargs=2, default=(0.0, 0.0), metavar=("XY_STD_M", "YAW_STD_DEG"),
                   help="channel: Gaussian noise on the sender's announced pose")
    e.add_argument("--latency", type=int, default=0, metavar="FRAMES",
                   help="channel: messages arrive this many frames late (stale features are placed with the "
                        "sender's pose at capture; needs eval.batch_size 1)")
    e.add_argument("--max-staleness", type=int, default=None, metavar="FRAMES",
                   help="channel: drop messages older than this at arrival")
    e.add_argument("--seed", type=int, default=0, help="channel seed")
    e.add_argument("--cuda-graphs", action="store_true",
                   help="on CUDA, replay the backbone from a captured CUDA graph (faster; same outputs)")
    e.set_defaults(func=run_eval)
    w = subparsers.add_parser("sweep", help="AP against measured bytes for strategies x budgets (table, JSON, plot)",
                              description=_SWEEP_DOC)
    w.add_argument("--checkpoint", required=True, type=Path, help="a trained detector (its encoder, fusion, head)")
    w.add_argument("--strategies", nargs="+", default=["single", "late", "dense", "where2comm", "supply_demand"],
                   metavar="SPEC", help="strategy specs (default: %(default)s)")
    w.add_argument("--budgets", nargs="+", default=["none", "100000", "20000", "5000", "1000"], metavar="B",
                   help="bytes per agent per frame; 'none' = unlimited (default: %(default)s)")
    w.add_argument("--split", default=None, help="library split name (default: the config's test split)")
    _data_overrides(w)
    w.add_argument("--max-frames", type=int, default=None, help="evaluate only the first N frames")
    w.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    w.add_argument("--json", type=Path, default=None, help="write every point to this JSON file")
    w.add_argument("--plot", type=Path, default=None, help="write AP@0.5 / AP@0.7 vs log2(bytes) plots (PNG)")
    w.set_defaults(func=run_sweep_command)
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


_SWEEP_DOC = """Bandwidth sweep of a trained detector: every strategy at every budget on the same frames
(encoded once). SPEC: single | late | dense | where2comm | supply_demand | codebook, optionally
NAME:key=value,... (e.g. where2comm:request=true,threshold=0.05), or ckpt:PATH for the trained
strategy of another checkpoint (codebook / compressor weights). Strategies without a budget
dependence (single) are evaluated once."""


def _channel_factory(args):
    import math

    from coperception.comm.channel import Channel

    xy, yaw = args.pose_noise
    if not (args.loss_prob or args.corrupt_prob or xy or yaw or args.latency):
        return None
    return lambda: Channel(seed=args.seed, loss_prob=args.loss_prob, corrupt_prob=args.corrupt_prob,
                           pose_noise_xyz_std=(xy, xy, 0.0), pose_noise_yaw_std=math.radians(yaw),
                           latency_frames=args.latency, max_staleness_frames=args.max_staleness)


def run_eval(args: argparse.Namespace) -> int:
    """Evaluate a checkpoint: a table on the console and optionally JSON."""
    import torch
    from rich.console import Console
    from rich.progress import Progress

    from coperception.engine.experiment import evaluate_experiment, load_detector, write_report

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cfg, model = load_detector(args.checkpoint, device, data_root=args.data_root, agent_frame=args.agent_frame)
    if args.cuda_graphs and str(device).startswith("cuda"):
        from coperception.models.graphs import graph_inference
        graph_inference(model)
    split = args.split or cfg.data.test_split
    with Progress(transient=True) as progress:
        task = progress.add_task(f"eval {split}", total=None)
        strategy = None
        if args.strategy is not None:
            from coperception.engine.sweep import parse_strategy
            _, strategy, _ = parse_strategy(args.strategy, model, device)
        reports = evaluate_experiment(cfg, model, split=split, modes=args.modes, device=device,
                                      global_sort=args.global_sort, max_frames=args.max_frames,
                                      on_batch=lambda n: progress.advance(task, n), budget=args.budget,
                                      strategy=strategy, channel_factory=_channel_factory(args))
    Console().print(results_table(reports, f"{cfg.name} on {cfg.data.root} [{split}]"))
    if args.json is not None:
        write_report(reports, args.json, {"checkpoint": str(args.checkpoint), "split": split, "config": cfg.name})
    return 0


def _budgets(values) -> list[int | None]:
    from coperception.errors import ConfigError

    out = []
    for v in values:
        if str(v).lower() == "none":
            out.append(None)
            continue
        try:
            out.append(int(v))
        except ValueError:
            raise ConfigError(f"--budgets: {v!r} is neither an integer number of bytes nor 'none'") from None
    return out


def sweep_table(points, title: str):
    from rich.table import Table

    first = points[0].result
    table = Table(title=title, caption=f"AP ranking: {first.variant}; {first.num_frames} frames, {first.num_gt} GT; "
                                       f"bytes = len(wire encoding), requests and supply maps included")
    for col in ("strategy", "budget B", *[f"AP@{t.iou_threshold:g}" for t in first.thresholds],
                "bytes/agent/frame", "log2 B", "Mbps@10Hz/link"):
        table.add_column(col, justify="left" if col == "strategy" else "right")
    for p in points:
        s = p.comm.summary()
        aps = [f"{100 * t.ap:.2f}" for t in p.result.thresholds]
        sent = s.bytes_per_agent_frame
        table.add_row(p.label, "-" if p.budget is None else f"{p.budget:,}", *aps, f"{sent:,.0f}",
                      f"{s.log2_bytes_per_agent_frame:.2f}" if sent else "-", f"{s.mbps_per_link:.3f}")
    return table


def run_sweep_command(args: argparse.Namespace) -> int:
    """Run the sweep; table on the console, optional JSON and plots."""
    import torch
    from rich.console import Console
    from rich.progress import Progress

    from coperception.engine.experiment import load_detector
    from coperception.engine.sweep import parse_strategy
    from coperception.eval.sweep import SweepPoint, plot_sweep, run_sweep
    from coperception.models.build import build_dataset

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cfg, model = load_detector(args.checkpoint, device, data_root=args.data_root, agent_frame=args.agent_frame)
    budgets = _budgets(args.budgets)
    points = []
    for spec in args.strategies:
        label, strat, mode = parse_strategy(spec, model, device)
        for budget in ([None] if strat is None else budgets):
            points.append(SweepPoint(label, strat, budget, mode))
    split = args.split or cfg.data.test_split
    dataset = build_dataset(cfg, split, train=False, fusion_mode="intermediate")
    if args.max_frames is not None:
        dataset = torch.utils.data.Subset(dataset, range(min(args.max_frames, len(dataset))))
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, collate_fn=_collate_of(dataset))
    with Progress() as progress:
        task = progress.add_task(f"sweep {len(points)} points", total=len(dataset))
        run_sweep(model, loader, points, lidar_range=cfg.data.lidar_range, iou_thresholds=cfg.eval.iou_thresholds,
                  global_sort=cfg.eval.global_sort, score_threshold=cfg.eval.score_threshold,
                  nms_threshold=cfg.eval.nms_threshold, device=device, on_batch=lambda n: progress.advance(task, n))
    console = Console(width=max(Console().width, 130))  # the strategy specs need the width
    console.print(sweep_table(points, f"bandwidth sweep: {cfg.name} on {cfg.data.root} [{split}]"))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        doc = {"checkpoint": str(args.checkpoint), "split": split, "points": [p.row() for p in points]}
        args.json.write_text(json.dumps(doc, indent=2, default=float))
    if args.plot is not None:
        for iou in (0.5, 0.7):
            out = args.plot.with_name(f"{args.plot.stem}_ap{int(iou * 100)}{args.plot.suffix or '.png'}")
            plot_sweep(points, out, iou)
            Console().print(f"plot: {out}")
    return 0


def _collate_of(dataset):
    inner = getattr(dataset, "dataset", dataset)
    return inner.collate_fn()
