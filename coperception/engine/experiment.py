"""Running an experiment: train a detector from its config, load it back from a checkpoint,
evaluate it. The CLI (``coperception train`` / ``eval`` / ``demo``) is a thin layer over this.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import yaml

from coperception import config as cfgio
from coperception.data.agent_frames import AGENT_FRAMES
from coperception.errors import ConfigError
from coperception.eval.detection import ModeReport, evaluate_detector
from coperception.models.build import build_dataset, build_detector, build_loader
from coperception.models.config import ExperimentConfig, validate_components
from coperception.models.detector import CooperativeDetector
from coperception.train import DistInfo, Trainer, init_distributed, load_checkpoint, load_model_state
from coperception.train.trainer import seed_everything

log = logging.getLogger(__name__)


def train_experiment(cfg: ExperimentConfig, out_dir: str | Path, *, resume: str | Path | None = None,
                     hooks: Sequence[Any] = (), dist: DistInfo | None = None,
                     max_steps: int | None = None) -> Trainer:
    """Train ``cfg`` into ``out_dir`` (checkpoints/, tensorboard/, config.yaml); returns the trainer."""
    dist = dist or init_distributed()
    out_dir = Path(out_dir)
    # Initial weights from the config's seed, not from whatever the process drew before (the
    # demo generates its data first in the same process: runs with and without that step differed).
    seed_everything(cfg.train.seed, cfg.train.deterministic)
    model = build_detector(cfg)
    dataset = build_dataset(cfg, cfg.data.train_split, train=True)
    if len(dataset) == 0:
        raise ConfigError(f"{cfg.data.root}: split {cfg.data.train_split!r} has no frames")
    resolved = cfgio.to_dict(cfg)
    if dist.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
    trainer = Trainer(model, dataset, dataset.collate_fn(), cfg.train, out_dir, dist, hooks=hooks,
                      config_dict=resolved)
    if resume is not None:
        trainer.resume(resume)
    trainer.fit(max_steps=max_steps)
    return trainer


def config_from_checkpoint(state: dict, source: str) -> ExperimentConfig:
    cfg = cfgio.from_dict(ExperimentConfig, state.get("config") or {}, f"{source}: config")
    validate_components(cfg, source)
    return cfg


def load_detector(checkpoint: str | Path, device: str | torch.device = "cpu", data_root: str | None = None,
                  agent_frame: str | None = None) -> tuple[ExperimentConfig, CooperativeDetector]:
    """The config saved in ``checkpoint`` and its model with the trained weights (``data_root`` and
    ``agent_frame`` override the saved ``data`` fields; a checkpoint saved before
    ``data.agent_frame`` existed was trained with ``"own"``)."""
    state = load_checkpoint(checkpoint, map_location="cpu")
    cfg = config_from_checkpoint(state, str(checkpoint))
    if "agent_frame" not in (state.get("config") or {}).get("data", {}):
        cfg = replace(cfg, data=replace(cfg.data, agent_frame="own"))  # what that code did
    if data_root is not None:
        cfg = replace(cfg, data=replace(cfg.data, root=data_root))
    if agent_frame is not None:
        if agent_frame not in AGENT_FRAMES:
            raise ConfigError(f"agent_frame must be one of {AGENT_FRAMES}, got {agent_frame!r}")
        cfg = replace(cfg, data=replace(cfg.data, agent_frame=agent_frame))
    model = build_detector(cfg)
    load_model_state(model, state["model"], str(checkpoint))
    return cfg, model.to(device).eval()


def evaluate_experiment(cfg: ExperimentConfig, model: CooperativeDetector, *, split: str | None = None,
                        modes: Sequence[str] | None = None, device: str | torch.device = "cpu",
                        global_sort: bool | None = None, on_batch: Callable[[int], None] | None = None,
                        max_frames: int | None = None, budget: int | None = None, strategy=None,
                        channel_factory: Callable[[], object] | None = None) -> dict[str, ModeReport]:
    """AP and bytes per mode on ``split`` (default: the test split); ``budget`` defaults to
    ``eval.budget_bytes``, ``strategy`` to the model's own, ``channel_factory`` to a perfect link."""
    split = split or cfg.data.test_split
    modes = tuple(modes or cfg.eval.modes)
    reports: dict[str, ModeReport] = {}
    shared = [m for m in modes if m != "early"]
    for layout, group in (("intermediate", shared), ("early", [m for m in modes if m == "early"])):
        if not group:
            continue
        dataset = build_dataset(cfg, split, train=False, fusion_mode=layout)
        if max_frames is not None:
            dataset = torch.utils.data.Subset(dataset, range(min(max_frames, len(dataset))))
            loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.eval.batch_size,
                                                 collate_fn=dataset.dataset.collate_fn())
        else:
            loader = build_loader(dataset, cfg.eval.batch_size)
        reports.update(evaluate_detector(
            model, loader, group, lidar_range=cfg.data.lidar_range, iou_thresholds=cfg.eval.iou_thresholds,
            global_sort=cfg.eval.global_sort if global_sort is None else global_sort,
            score_threshold=cfg.eval.score_threshold, nms_threshold=cfg.eval.nms_threshold,
            device=device, on_batch=on_batch, budget=cfg.eval.budget_bytes if budget is None else budget,
            strategy=strategy, channel_factory=channel_factory))
    return {m: reports[m] for m in modes}


def write_report(reports: dict[str, ModeReport], path: str | Path, extra: dict | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {**(extra or {}), "results": {m: r.to_dict() for m, r in reports.items()}}
    path.write_text(json.dumps(doc, indent=2, default=float))
    return path
