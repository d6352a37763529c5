"""``coperception demo``: the main job end to end on the embedded simulator, on a CPU.

1. generate a small multi-agent dataset (OPV2V format) with the embedded simulator;
2. train a small PointPillars intermediate-fusion model briefly (``models/demo.yaml``);
3. evaluate ego-only, late and intermediate inference on the test split: AP@0.3/0.5/0.7 under
   OpenCOOD's protocol and the bytes each collaborator sends (length of the wire encoding);
4. write a BEV picture of a test frame (every agent's points, ground truth, detections).

Everything lands under ``--out`` (results.json, bev.png, the run folder with checkpoints and
TensorBoard logs). Re-running reuses the generated dataset when it is already there.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import replace
from pathlib import Path

log = logging.getLogger(__name__)

DEMO_CONFIG = Path(__file__).resolve().parents[3] / "models" / "demo.yaml"
#: The scenario mix: occluded junctions where collaboration matters, plus open town traffic.
DEMO_PRESETS = ("blocked_intersection", "truck_merge", "rsu_blind_corner", "town")


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="generate data, train briefly, evaluate single/late/intermediate",
                              description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("outputs/demo"), help="results folder")
    p.add_argument("--data", type=Path, default=Path("data/demo"), help="dataset folder (generated if missing)")
    p.add_argument("--config", type=Path, default=DEMO_CONFIG, help="experiment YAML")
    p.add_argument("--presets", nargs="+", default=list(DEMO_PRESETS), help="simulator presets to mix")
    p.add_argument("--scenarios", type=int, default=24, help="scenarios to generate (split over the presets)")
    p.add_argument("--frames", type=int, default=8, help="frames per scenario")
    p.add_argument("--epochs", type=int, default=None, help="override train.epochs")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run_demo)


def _dataset_ready(root: Path) -> bool:
    return (root / "train").is_dir() and (root / "test").is_dir() and (root / ".complete").exists()


def generate_data(root: Path, presets: list[str], scenarios: int, frames: int, seed: int, console) -> None:
    """Scenarios spread evenly over ``presets``; 3/4 of each preset's scenarios train, 1/4 test."""
    from tqdm import tqdm

    from coperception.sim.generator import generate
    from coperception.sim.scenarios import load_sim_config

    configs = [load_sim_config(preset=p) for p in presets]  # validates every preset before any work
    per = [scenarios // len(presets) + (i < scenarios % len(presets)) for i in range(len(presets))]
    frames_done, only, in_range = 0, 0, 0
    with tqdm(total=scenarios * frames, desc="generate", unit="frame") as bar:
        for k, (cfg, n) in enumerate(zip(configs, per)):
            if n == 0:
                continue
            summary = generate(root, cfg, n, frames, "opv2v", seed=seed + 1000 * k,
                               split_ratios=(0.75, 0.0, 0.25), on_frame=lambda _: bar.update(1))
            frames_done += summary.frames
            only += summary.collaborator_only
            in_range += summary.in_range
    (root / ".complete").write_text(json.dumps({"presets": list(presets), "scenarios": scenarios,
                                                "frames": frames, "seed": seed}))
    console.print(f"generated {frames_done} frames; objects near the ego seen only by a collaborator: "
                  f"{100 * only / max(in_range, 1):.1f}%")


def run_demo(args: argparse.Namespace) -> int:
    from rich.console import Console

    from coperception.engine.commands.evaluate import results_table
    from coperception.engine.commands.train import RichProgress
    from coperception.engine.experiment import evaluate_experiment, load_detector, train_experiment, write_report
    from coperception.models.config import load_experiment
    from coperception.train import init_distributed

    console = Console()
    started = time.perf_counter()
    if not _dataset_ready(args.data):
        generate_data(args.data, args.presets, args.scenarios, args.frames, args.seed, console)
    else:
        console.print(f"using the dataset already in {args.data}")
    cfg = load_experiment(args.config)
    cfg = replace(cfg, data=replace(cfg.data, root=str(args.data)))
    if args.epochs:
        cfg = replace(cfg, train=replace(cfg.train, epochs=args.epochs))
    run_dir = args.out / "run"
    with RichProgress(True) as progress:
        train_experiment(cfg, run_dir, hooks=[progress], dist=init_distributed("cpu"))
    checkpoint = run_dir / "checkpoints" / "last.pt"
    cfg, model = load_detector(checkpoint, "cpu")
    reports = evaluate_experiment(cfg, model, split=cfg.data.test_split, device="cpu")
    console.print(results_table(reports, f"demo: {cfg.name} on {cfg.data.root} [test]"))
    write_report(reports, args.out / "results.json", {"checkpoint": str(checkpoint), "config": cfg.name})
    from coperception.engine.render import render_example_at

    picture = render_example_at(cfg, model, args.out / "bev.png", split=cfg.data.test_split,
                                index=0)
    console.print(f"results: {args.out / 'results.json'}; BEV picture: {picture}; "
                  f"TensorBoard: {run_dir / 'tensorboard'}; total {time.perf_counter() - started:.0f} s")
    return 0
