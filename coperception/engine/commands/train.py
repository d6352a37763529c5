"""``coperception train --config models/X.yaml``: train one experiment (torchrun-ready)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train a detector from an experiment YAML",
                              description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, type=Path, help="experiment YAML (models/*.yaml)")
    p.add_argument("--out", type=Path, default=None, help="run folder (default: runs/<name>)")
    p.add_argument("--data-root", default=None, help="override data.root")
    p.add_argument("--epochs", type=int, default=None, help="override train.epochs")
    p.add_argument("--batch-size", type=int, default=None, help="override train.batch_size")
    p.add_argument("--resume", default=None,
                   help="checkpoint to resume from, or 'auto' for <out>/checkpoints/last.pt if it exists")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many optimiser steps")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.set_defaults(func=run_train)


class RichProgress:
    """Trainer hook: a rich progress bar with the running loss.

    The total comes from the trainer itself (epochs x steps per epoch, capped by ``max_steps``).
    """

    def __init__(self, enabled: bool, max_steps: int | None = None) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("epoch {task.fields[epoch]} loss {task.fields[loss]:.3f}"),
                                 TimeRemainingColumn(), disable=not enabled)
        self.max_steps = max_steps
        self.task = self.progress.add_task("train", total=None, epoch=0, loss=float("nan"))

    def on_step_end(self, trainer, values) -> None:
        total = trainer.cfg.epochs * trainer.steps_per_epoch
        if self.max_steps:
            total = min(total, self.max_steps)
        self.progress.update(self.task, total=total, completed=trainer.step, epoch=trainer.epoch,
                             loss=values["loss"])

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()


def apply_overrides(cfg, args):
    from dataclasses import replace

    if args.data_root:
        cfg = replace(cfg, data=replace(cfg.data, root=args.data_root))
    if args.epochs:
        cfg = replace(cfg, train=replace(cfg.train, epochs=args.epochs))
    if args.batch_size:
        cfg = replace(cfg, train=replace(cfg.train, batch_size=args.batch_size))
    return cfg


def run_train(args: argparse.Namespace) -> int:
    from coperception.engine.experiment import train_experiment
    from coperception.models.config import load_experiment
    from coperception.train import init_distributed

    cfg = apply_overrides(load_experiment(args.config), args)
    out = args.out or Path("runs") / cfg.name
    resume = args.resume
    if resume == "auto":
        last = out / "checkpoints" / "last.pt"
        resume = last if last.exists() else None
    dist = init_distributed(args.device)
    with RichProgress(dist.is_main, args.max_steps) as progress:
        trainer = train_experiment(cfg, out, resume=resume, hooks=[progress], dist=dist, max_steps=args.max_steps)
    if dist.is_main:
        print(f"trained {trainer.step} steps; checkpoint: {out / 'checkpoints' / 'last.pt'}; "
              f"TensorBoard: {out / 'tensorboard'}")
    return 0
