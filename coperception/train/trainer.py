"""One trainer for every model: AMP, gradient clipping, LR schedules, DDP, atomic checkpoints,
exact resume, TensorBoard scalars, and hooks for progress display and evaluation.

A model trained here is any ``nn.Module`` whose ``forward(batch)`` returns a
``dict[str, Tensor]`` of named losses in training mode; the optimised loss is their sum.
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Protocol, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from coperception.train.checkpoint import load_checkpoint, load_model_state, rng_state, save_checkpoint, set_rng_state
from coperception.train.device import move_to_device
from coperception.train.distributed import DistInfo, ResumableSampler, all_reduce_mean
from coperception.train.host_memory import keep_freed_memory

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings (the ``train:`` block of an experiment YAML)."""

    epochs: int = 10
    batch_size: int = 2
    lr: float = 2e-3
    weight_decay: float = 1e-4
    optimizer: Literal["adam", "adamw", "sgd"] = "adamw"
    scheduler: Literal["cosine", "step", "constant"] = "cosine"
    milestones: tuple[int, ...] = ()  # epochs at which 'step' multiplies the LR by gamma
    gamma: float = 0.1
    warmup_steps: int = 0
    grad_clip: float | None = 10.0
    amp: bool = False
    num_workers: int = 0
    seed: int = 0
    deterministic: bool = False
    log_every: int = 10
    checkpoint_every: int = 0  # steps between mid-epoch checkpoints (0 = end of epoch only)
    #: staged training: start from this checkpoint's weights (keys under ``comm.`` may be absent:
    #: a new codebook / compressor on a trained detector) ...
    init_from: str | None = None
    #: ... and keep these submodules fixed (no gradients, BatchNorm in eval mode), e.g. [encoder, head].
    freeze: tuple[str, ...] = ()
    #: on the CPU, keep freed activation memory in the process instead of returning it to the
    #: OS after every step (``coperception.train.host_memory``: ~20% faster CPU steps, higher RSS)
    keep_host_memory: bool = True

    def __post_init__(self) -> None:
        from coperception.errors import ConfigError
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ConfigError(f"train: epochs, batch_size and lr must be positive, got "
                              f"{self.epochs}, {self.batch_size}, {self.lr}")


class Hook(Protocol):
    """Optional callbacks; implement any subset."""

    def on_step_end(self, trainer: "Trainer", losses: dict[str, float]) -> None: ...
    def on_epoch_end(self, trainer: "Trainer") -> None: ...


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_factor(step: int, cfg: TrainConfig, steps_per_epoch: int) -> float:
    """LR multiplier at optimiser step ``step`` (linear warm-up, then the schedule)."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    total = max(cfg.epochs * steps_per_epoch, 1)
    if cfg.scheduler == "cosine":
        progress = min((step - cfg.warmup_steps) / max(total - cfg.warmup_steps, 1), 1.0)
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if cfg.scheduler == "step":
        epoch = step // max(steps_per_epoch, 1)
        return cfg.gamma ** sum(epoch >= m for m in cfg.milestones)
    return 1.0


class Trainer:
    """Runs epochs over ``dataset``; resumable from any checkpoint it wrote."""

    def __init__(self, model: torch.nn.Module, dataset: Dataset, collate_fn: Callable, cfg: TrainConfig,
                 out_dir: str | Path, dist: DistInfo, *, hooks: Sequence[Any] = (),
                 config_dict: dict | None = None, tensorboard: bool = True):
        self.cfg, self.dist, self.out_dir = cfg, dist, Path(out_dir)
        self.config_dict = config_dict or {}
        seed_everything(cfg.seed + dist.rank, cfg.deterministic)
        if cfg.keep_host_memory and dist.device.type == "cpu":
            keep_freed_memory()
        self.model = model.to(dist.device)
        self.module = model
        if dist.enabled:
            ids = [dist.device.index] if dist.device.type == "cuda" else None
            unused = any(getattr(m, "may_leave_parameters_unused", False) for m in model.modules())
            self.model = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids,
                                                                   find_unused_parameters=unused)
        self.sampler = ResumableSampler(len(dataset), shuffle=True, seed=cfg.seed,
                                        rank=dist.rank, world_size=dist.world_size)
        # The loader draws its workers' base seed from its own generator, never from the global
        # RNG, so that creating an iterator after a resume does not shift the model's randomness.
        self.loader_generator = torch.Generator()
        self.loader = DataLoader(dataset, batch_size=cfg.batch_size, sampler=self.sampler,
                                 collate_fn=collate_fn, num_workers=cfg.num_workers,
                                 generator=self.loader_generator,
                                 persistent_workers=False, drop_last=False,
                                 pin_memory=dist.device.type == "cuda")  # async host->device copies
        self.steps_per_epoch = math.ceil(self.sampler.per_rank / cfg.batch_size)
        if cfg.init_from:
            state = load_checkpoint(cfg.init_from, map_location=dist.device)
            load_model_state(self.module, state["model"], str(cfg.init_from), allow_missing=("comm.",))
            log.info("initialised from %s", cfg.init_from)
        self.frozen = [self._submodule(name) for name in cfg.freeze]
        for module in self.frozen:
            module.requires_grad_(False)
        if not any(p.requires_grad for p in self.module.parameters()):
            from coperception.errors import ConfigError
            raise ConfigError(f"train.freeze {list(cfg.freeze)} leaves no trainable parameter")
        self.optimizer = build_optimizer(self.module, cfg)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, cfg, self.steps_per_epoch))
        use_scaler = cfg.amp and dist.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
        self.hooks = list(hooks)
        self.epoch, self.step, self.step_in_epoch = 0, 0, 0
        self.writer = None
        if tensorboard and dist.is_main:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(self.out_dir / "tensorboard"))

    def _submodule(self, name: str) -> torch.nn.Module:
        try:
            return self.module.get_submodule(name)
        except AttributeError:
            from coperception.errors import ConfigError
            children = [n for n, _ in self.module.named_children()]
            raise ConfigError(f"train.freeze: the model has no submodule {name!r}; top-level ones: {children}") from None

    # -- checkpoints -------------------------------------------------------------------------
    def state(self) -> dict:
        return {
            "model": self.module.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
            "rng": rng_state(), "epoch": self.epoch, "step": self.step,
            "step_in_epoch": self.step_in_epoch, "config": self.config_dict,
        }

    def save(self, name: str = "last.pt") -> Path | None:
        if not self.dist.is_main:
            return None
        return save_checkpoint(self.out_dir / "checkpoints" / name, self.state())

    def resume(self, path: str | Path) -> None:
        """Restore everything so that the next step is the one the checkpointed run would take."""
        state = load_checkpoint(path, map_location=self.dist.device)
        load_model_state(self.module, state["model"], str(path))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        self.epoch, self.step, self.step_in_epoch = state["epoch"], state["step"], state["step_in_epoch"]
        log.info("resumed %s at epoch %d step %d", path, self.epoch, self.step)

    # -- training ----------------------------------------------------------------------------
    def train_step(self, batch: Any) -> dict[str, float]:
        self.model.train()
        for module in self.frozen:
            module.eval()
        batch = move_to_device(batch, self.dist.device)
        device_type = self.dist.device.type
        amp_dtype = torch.float16 if device_type == "cuda" else torch.bfloat16
        with torch.autocast(device_type, dtype=amp_dtype, enabled=self.cfg.amp):
            losses = self.model(batch)
        total = sum(losses.values())
        if not torch.isfinite(total):
            raise FloatingPointError(f"non-finite loss at step {self.step}: "
                                     f"{ {k: float(v) for k, v in losses.items()} }")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        if self.cfg.grad_clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        values = {k: float(all_reduce_mean(v.detach().float(), self.dist)) for k, v in losses.items()}
        values["loss"] = sum(values.values())
        return values

    def fit(self, max_steps: int | None = None) -> None:
        """Train to the configured epoch count, or stop (with a checkpoint) after global step ``max_steps``."""
        while self.epoch < self.cfg.epochs:
            self.sampler.set_epoch(self.epoch, start=self.step_in_epoch * self.cfg.batch_size)
            self.loader_generator.manual_seed(self.cfg.seed * 1000 + self.epoch)
            started = time.perf_counter()
            for batch in self.loader:
                values = self.train_step(batch)
                self.step += 1
                self.step_in_epoch += 1
                self._log(values)
                for hook in self.hooks:
                    getattr(hook, "on_step_end", lambda *a: None)(self, values)
                if self.cfg.checkpoint_every and self.step % self.cfg.checkpoint_every == 0:
                    self.save()
                if max_steps is not None and self.step >= max_steps:
                    self.save()
                    return
            log.info("epoch %d done in %.1fs", self.epoch, time.perf_counter() - started)
            self.epoch += 1
            self.step_in_epoch = 0
            self.save()
            for hook in self.hooks:
                getattr(hook, "on_epoch_end", lambda *a: None)(self)
        if self.writer is not None:
            self.writer.flush()

    def _log(self, values: dict[str, float]) -> None:
        if self.writer is None or self.step % max(self.cfg.log_every, 1):
            return
        for key, value in values.items():
            self.writer.add_scalar(f"train/{key}", value, self.step)
        self.writer.add_scalar("train/lr", self.optimizer.param_groups[0]["lr"], self.step)
