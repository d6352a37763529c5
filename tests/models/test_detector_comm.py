"""The detector's communication path on simulated frames: budgets, channel failures, staged training."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from coperception.comm.channel import Channel
from coperception.comm.strategies import build_strategy
from coperception.engine.experiment import train_experiment
from coperception.errors import ConfigError
from coperception.eval.detection import evaluate_detector
from coperception.models.build import build_dataset, build_detector
from coperception.models.config import Component
from coperception.train import DistInfo

CPU = DistInfo(0, 1, 0, torch.device("cpu"))


def _batch(cfg, n=2):
    ds = build_dataset(cfg, "train", train=False)
    return ds.collate_fn()([ds[i] for i in range(min(n, len(ds)))])


def _same(a, b) -> bool:
    return all(x.boxes.shape == y.boxes.shape and np.allclose(x.boxes, y.boxes) and np.allclose(x.scores, y.scores)
               for x, y in zip(a, b))


@pytest.mark.parametrize("failure", [{"loss_prob": 1.0}, {"corrupt_prob": 1.0}])
def test_lost_or_corrupt_messages_fall_back_to_the_ego_alone(tiny_experiment, failure):
    torch.manual_seed(0)
    model = build_detector(tiny_experiment).eval()
    batch = _batch(tiny_experiment)
    single = model.infer(batch, "single", score_threshold=0.0).detections
    clean = model.infer(batch, "intermediate", score_threshold=0.0, channel=Channel(seed=1))
    broken = model.infer(batch, "intermediate", score_threshold=0.0, channel=Channel(seed=1, **failure))
    assert _same(broken.detections, single)
    assert not _same(clean.detections, single)  # what arrives does change the result
    assert [s.nbytes for ss in broken.sent for s in ss] == [s.nbytes for ss in clean.sent for s in ss]


def test_latency_delivers_last_frames_message_placed_with_its_capture_pose(tiny_experiment):
    torch.manual_seed(0)
    model = build_detector(tiny_experiment).eval()
    ds = build_dataset(tiny_experiment, "train", train=False)
    assert ds[0].key[0] == ds[1].key[0] and ds[0].world_from_agent is not None  # one scenario, in order
    f0, f1 = (ds.collate_fn()([ds[i]]) for i in range(2))
    with pytest.raises(ConfigError, match="latency"):
        model.infer(ds.collate_fn()([ds[0], ds[1]]), "intermediate", channel=Channel(latency_frames=1))
    channel = Channel(seed=0, latency_frames=1)
    first = model.infer(f0, "intermediate", score_threshold=0.0, channel=channel, frame_index=0)
    assert _same(first.detections, model.infer(f0, "single", score_threshold=0.0).detections)  # nothing yet
    sender = str(f0.agent_ids[0][1])
    ego = str(f0.agent_ids[0][0])
    assert channel.link_stats(sender, ego).delivered_messages == 0
    model.infer(f1, "intermediate", score_threshold=0.0, channel=channel, frame_index=1)
    assert channel.link_stats(sender, ego).delivered_messages == 1


@pytest.mark.parametrize("name", ["where2comm", "supply_demand", "codebook", "late"])
def test_evaluation_bytes_respect_the_budget(tiny_experiment, name):
    torch.manual_seed(0)
    model = build_detector(tiny_experiment).eval()
    strat = build_strategy(name, model.encoder.out_channels, tiny_experiment.data.grid, model.encoder.stride)
    ds = build_dataset(tiny_experiment, "train", train=False)
    batches = [ds.collate_fn()([ds[i]]) for i in range(2)]
    mode = "late" if name == "late" else "intermediate"
    report = evaluate_detector(model, batches, [mode], lidar_range=tiny_experiment.data.lidar_range,
                               budget=400, strategy=strat, score_threshold=0.05)[mode]
    per_agent = report.comm.per_agent()
    assert per_agent and max(per_agent.values()) <= 400 and report.comm.summary().total_bytes > 0


def test_codebook_stage_trains_only_the_codebook(tiny_experiment, tmp_path):
    torch.manual_seed(0)
    base = train_experiment(tiny_experiment, tmp_path / "base", dist=CPU, max_steps=1)
    ckpt = tmp_path / "base" / "checkpoints" / "last.pt"
    assert ckpt.exists()
    cfg = replace(tiny_experiment,
                  model=replace(tiny_experiment.model, comm=Component("codebook", {"size": 8})),
                  train=replace(tiny_experiment.train, init_from=str(ckpt), freeze=("encoder", "head", "fusion"),
                                lr=0.01))
    before = {k: v.clone() for k, v in base.module.state_dict().items()}
    stage = train_experiment(cfg, tmp_path / "codebook", dist=CPU, max_steps=2)
    after = stage.module.state_dict()
    frozen = [k for k in before if not k.startswith("comm.")]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)  # BN statistics included
    assert not torch.equal(after["comm.rep.codes"], build_detector(cfg).state_dict()["comm.rep.codes"])
    with pytest.raises(ConfigError, match="no submodule 'backbone'"):
        train_experiment(replace(cfg, train=replace(cfg.train, freeze=("backbone",))), tmp_path / "bad",
                         dist=CPU, max_steps=1)


@pytest.mark.parametrize("comm,fusion,extra", [
    ("codebook", "max", {"loss_comm_vq", "loss_comm_recon"}),
    ("where2comm", "where2comm", set()),
    ("supply_demand", "max", set()),
    ("dense", "attention", {"loss_comm_recon"}),
])
def test_every_strategy_trains_end_to_end(tiny_experiment, comm, fusion, extra):
    args = {"compress_ratio": 2} if comm == "dense" else {}
    model_cfg = replace(tiny_experiment.model, comm=Component(comm, args), fusion=Component(fusion))
    cfg = replace(tiny_experiment, model=model_cfg)
    torch.manual_seed(0)
    model = build_detector(cfg)
    losses = model(_batch(cfg))
    assert extra | {"loss_cls", "single_loss_cls"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in model.comm.parameters())
