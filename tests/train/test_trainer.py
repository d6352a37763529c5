import math
from dataclasses import dataclass

import pytest
import torch
from torch.utils.data import Dataset

from coperception.errors import ConfigError
from coperception.train import DistInfo, TrainConfig, Trainer, load_checkpoint, load_model_state
from coperception.train.distributed import ResumableSampler
from coperception.train.trainer import lr_factor

CPU = DistInfo(0, 1, 0, torch.device("cpu"))


class Noisy(Dataset):
    """y = 3x + 1 with noise drawn at __getitem__ time (exercises the torch RNG state)."""

    def __len__(self):
        return 10

    def __getitem__(self, i):
        x = torch.tensor([float(i) / 10])
        return x, 3 * x + 1 + 0.01 * torch.randn(1)


@dataclass
class Batch:
    x: torch.Tensor
    y: torch.Tensor


def collate(items):
    xs, ys = zip(*items)
    return Batch(torch.stack(xs), torch.stack(ys))


class Regressor(torch.nn.Module):
    def __init__(self, width=8):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(1, width), torch.nn.ReLU(), torch.nn.Dropout(0.2),
                                       torch.nn.Linear(width, 1))

    def forward(self, batch):
        pred = self.net(batch.x)
        return {"mse": ((pred - batch.y) ** 2).mean(), "l1": 0.1 * (pred - batch.y).abs().mean()}


class Recorder:
    def __init__(self):
        self.losses = []

    def on_step_end(self, trainer, values):
        self.losses.append(values["loss"])


def _trainer(tmp_path, hooks=(), **kw):
    cfg = TrainConfig(**{"epochs": 2, "batch_size": 3, "lr": 1e-2, "warmup_steps": 2, "seed": 7,
                         "checkpoint_every": 3, **kw})
    torch.manual_seed(0)
    return Trainer(Regressor(), Noisy(), collate, cfg, tmp_path, CPU, hooks=hooks, tensorboard=False)


def test_loss_drops(tmp_path):
    rec = Recorder()
    t = _trainer(tmp_path, hooks=[rec], epochs=30, lr=3e-2, checkpoint_every=0)
    t.fit()
    assert len(rec.losses) == 30 * 4
    assert sum(rec.losses[-8:]) / 8 < 0.2 * sum(rec.losses[:8]) / 8


def test_kill_and_resume_gives_identical_next_steps(tmp_path):
    full = Recorder()
    _trainer(tmp_path / "a", hooks=[full]).fit()          # 2 epochs x 4 steps, checkpoint at step 3
    state = load_checkpoint(tmp_path / "a" / "checkpoints" / "last.pt")
    assert state["step"] == 8 and state["epoch"] == 2
    # "kill" mid-epoch: a second run stops after step 2 (leaving its checkpoint), a third resumes it
    killed = Recorder()
    _trainer(tmp_path / "b", hooks=[killed], checkpoint_every=0).fit(max_steps=2)  # stops mid-epoch
    assert killed.losses == full.losses[:2]
    resumed_rec = Recorder()
    resumed = _trainer(tmp_path / "c", hooks=[resumed_rec])
    resumed.resume(tmp_path / "b" / "checkpoints" / "last.pt")
    resumed.fit()
    assert resumed_rec.losses == pytest.approx(full.losses[2:], rel=0, abs=0)


def test_checkpoint_is_atomic_and_weights_only(tmp_path):
    t = _trainer(tmp_path)
    path = t.save()
    assert path.exists() and not path.with_name(path.name + ".tmp").exists()
    torch.load(path, weights_only=True)  # must not need pickled classes


def test_other_architecture_fails_clearly(tmp_path):
    t = _trainer(tmp_path)
    path = t.save()
    with pytest.raises(ConfigError, match="different architecture.*shape mismatch"):
        load_model_state(Regressor(width=16), load_checkpoint(path)["model"], str(path))
    with pytest.raises(ConfigError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="bad.pt: not a loadable checkpoint"):
        load_checkpoint(bad)


def test_lr_schedules():
    cfg = TrainConfig(epochs=4, warmup_steps=2, scheduler="cosine")
    assert lr_factor(0, cfg, 5) == pytest.approx(0.5)
    assert lr_factor(2, cfg, 5) == pytest.approx(1.0)
    assert lr_factor(19, cfg, 5) == pytest.approx(0.5 * (1 + math.cos(math.pi * 17 / 18)))
    step = TrainConfig(epochs=4, scheduler="step", milestones=(1, 3), gamma=0.1)
    assert [lr_factor(s, step, 5) for s in (0, 5, 14, 15)] == pytest.approx([1, 0.1, 0.1, 0.01])


def test_sampler_shards_and_resumes():
    shards = [list(ResumableSampler(10, shuffle=True, seed=1, rank=r, world_size=3)) for r in range(3)]
    assert all(len(s) == 4 for s in shards)
    assert set(sum(shards, [])) == set(range(10))
    s = ResumableSampler(10, shuffle=True, seed=1)
    s.set_epoch(2)
    full = list(s)
    s.set_epoch(2, start=4)
    assert list(s) == full[4:]
    s.set_epoch(3)
    assert list(s) != full
