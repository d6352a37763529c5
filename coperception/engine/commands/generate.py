"""``coperception generate``: simulate scenarios in the embedded world and write a dataset.

    coperception generate --out data/town --scenarios 8 --frames 50 --format opv2v --preset town
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser("generate", help="generate a multi-agent dataset with the embedded simulator",
                              description=__doc__.splitlines()[0],
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", required=True, help="dataset root (splits are written below it)")
    p.add_argument("--scenarios", type=int, default=4, help="number of scenarios")
    p.add_argument("--frames", type=int, default=20, help="frames per scenario (10 Hz)")
    p.add_argument("--format", default="opv2v", choices=("opv2v", "dair-v2x"), help="on-disk format")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--preset", default=None, help="scenario preset (town, blocked_intersection, truck_merge, "
                                                   "rsu_blind_corner); default town")
    src.add_argument("--config", default=None, help="simulator YAML (may name a preset: key and override it)")
    p.add_argument("--seed", type=int, default=0, help="dataset seed (scenario i uses a seed derived from it)")
    p.add_argument("--lidar", type=int, choices=(64, 32, 16), default=None, help="LiDAR beams (default: config)")
    p.add_argument("--cameras", action="store_true", help="render the four RGB/depth cameras per agent")
    p.add_argument("--split-ratios", type=float, nargs=3, default=(0.8, 0.1, 0.1),
                   metavar=("TRAIN", "VALIDATE", "TEST"), help="share of scenarios per split")
    p.add_argument("--workers", type=int, default=1, help="simulation processes")
    p.add_argument("--summary-range", type=float, default=50.0,
                   help="radius (m) around the ego for the visibility summary")
    p.set_defaults(func=run)


def _overrides(args) -> dict:
    out: dict = {}
    if args.lidar is not None:
        out["lidar"] = {"channels": args.lidar}
    if args.cameras:
        out["camera"] = {"enabled": True}
    return out


def run(args) -> int:
    from rich.console import Console
    from rich.table import Table
    from tqdm import tqdm

    from coperception.sim.generator import generate
    from coperception.sim.scenarios import load_sim_config

    config = load_sim_config(args.config, args.preset, _overrides(args))
    total = args.scenarios * args.frames
    with tqdm(total=total, unit="frame", desc=f"generate {config.preset}") as bar:
        summary = generate(args.out, config, args.scenarios, args.frames, args.format, seed=args.seed,
                           split_ratios=tuple(args.split_ratios), workers=args.workers,
                           summary_range=args.summary_range, on_frame=lambda _info: bar.update(1))
    table = Table(title=f"{args.out} ({args.format}, preset {config.preset}, {config.lidar.channels}-beam LiDAR)")
    table.add_column("")
    table.add_column("", justify="right")
    for label, value in summary.rows():
        table.add_row(label, value)
    Console().print(table)
    return 0
