"""Bandwidth sweep: strategy specs, one encoder pass for many points, the CLI's table / JSON / plots."""

import json
import math

import pytest
import torch

from coperception.cli import main
from coperception.engine.experiment import train_experiment
from coperception.engine.sweep import parse_strategy
from coperception.errors import ConfigError
from coperception.eval.sweep import SweepPoint, run_sweep
from coperception.models.build import build_dataset, build_detector
from coperception.train import DistInfo

CPU = DistInfo(0, 1, 0, torch.device("cpu"))


def test_strategy_specs_parse_and_bad_ones_name_the_problem(tiny_experiment):
    model = build_detector(tiny_experiment)
    label, strat, mode = parse_strategy("where2comm:request=true,threshold=0.05", model)
    assert mode == "intermediate" and strat.request is True and strat.threshold == 0.05
    assert parse_strategy("late", model)[2] == "late" and parse_strategy("single", model)[1] is None
    with pytest.raises(ConfigError, match="unknown strategy 'telepathy'"):
        parse_strategy("telepathy", model)
    with pytest.raises(ConfigError, match="unknown argument"):
        parse_strategy("where2comm:colour=red", model)
    with pytest.raises(ConfigError, match="not key=value"):
        parse_strategy("where2comm:request", model)


def test_sweep_counts_real_bytes_within_each_budget(tiny_experiment):
    torch.manual_seed(0)
    model = build_detector(tiny_experiment).eval()
    ds = build_dataset(tiny_experiment, "train", train=False)
    batches = [ds.collate_fn()([ds[i]]) for i in range(2)]
    calls = []
    original = model.encode
    model.encode = lambda batch: calls.append(1) or original(batch)
    points = [SweepPoint("single", None, None, "single")]
    for spec in ("where2comm", "supply_demand:hybrid=true"):
        label, strat, mode = parse_strategy(spec, model)
        points += [SweepPoint(label, strat, b, mode) for b in (None, 2_000, 300)]
    run_sweep(model, batches, points, lidar_range=tiny_experiment.data.lidar_range, score_threshold=0.05)
    # one encoder pass per batch for every budget-driven point (+1 for the single-mode point)
    assert len(calls) == 2 * 2
    assert points[0].comm.summary().total_bytes == 0
    for p in points[1:]:
        per_agent = p.comm.per_agent()
        assert per_agent and (p.budget is None or max(per_agent.values()) <= p.budget)
        assert p.result.num_frames == 2
    unlimited, small = points[1].comm.summary(), points[3].comm.summary()
    assert unlimited.bytes_per_agent_frame > 10 * small.bytes_per_agent_frame


def test_sweep_command_writes_table_json_and_plots(tiny_experiment, tmp_path, capsys):
    torch.manual_seed(0)
    train_experiment(tiny_experiment, tmp_path / "run", dist=CPU, max_steps=1)
    ckpt = tmp_path / "run" / "checkpoints" / "last.pt"
    out = tmp_path / "sweep.json"
    rc = main(["sweep", "--checkpoint", str(ckpt), "--split", "train", "--strategies", "single", "late", "codebook",
               "--budgets", "none", "500", "--max-frames", "2", "--device", "cpu", "--json", str(out),
               "--plot", str(tmp_path / "curve.png")])
    assert rc == 0
    doc = json.loads(out.read_text())
    assert [p["strategy"] for p in doc["points"]] == ["single", "late", "late", "codebook", "codebook"]
    assert all(p["log2_bytes"] is None or math.isfinite(p["log2_bytes"]) for p in doc["points"])
    assert doc["points"][2]["bytes_per_agent_frame"] <= 500
    assert (tmp_path / "curve_ap50.png").stat().st_size > 1000 and (tmp_path / "curve_ap70.png").exists()
    assert "bandwidth sweep" in capsys.readouterr().out
