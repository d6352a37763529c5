"""Simulator configs: presets load, and impossible configs fail with ConfigError before any work."""

from __future__ import annotations

import argparse

import pytest

from coperception.engine.commands import generate as commands
from coperception.errors import ConfigError
from coperception.sim.config import SimConfig, spawn_slot_count
from coperception.sim.generator import generate
from coperception.sim.scenarios import load_sim_config, preset_names


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_loads_and_validates(name):
    cfg = load_sim_config(preset=name)
    assert cfg.preset == name
    assert cfg.agents.cavs >= 1 and cfg.lidar.rays_per_scan == 64 * 1800


def test_yaml_overrides_a_named_preset(tmp_path):
    path = tmp_path / "sim.yaml"
    path.write_text("preset: truck_merge\nlidar:\n  channels: 32\ntraffic:\n  vehicles: 10\n")
    cfg = load_sim_config(path)
    assert (cfg.preset, cfg.lidar.channels, cfg.traffic.vehicles) == ("truck_merge", 32, 10)
    assert any(p.cls == "truck" for p in cfg.agents.placements)


def test_unknown_key_names_file_and_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("lidar:\n  beams: 64\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*lidar.*beams"):
        load_sim_config(path)


@pytest.mark.parametrize("overrides, match", [
    ({"agents": {"cavs": 500}}, "spawn slots"),
    ({"traffic": {"vehicles": 10_000}}, "spawn slots"),
    ({"agents": {"rsus": 99}}, "junction corners"),
    ({"lidar": {"channels": 0}}, "beam table"),
    ({"lidar": {"range": -5.0}}, r"lidar\.range"),
    ({"lidar": {"dropout": 1.0}}, "dropout"),
    ({"agents": {"cavs": 0}}, "agents.cavs"),
    ({"town": {"block_size": 30.0}}, "block_size"),
    ({"agents": {"placements": [{"lane": 7}]}}, r"placements\[0\]\.lane"),
    ({"agents": {"ego_junction": [9, 9]}}, "outside"),
    ({"frame_interval": 0.07}, "multiple of dt"),
])
def test_impossible_configs_raise_config_error(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_sim_config(preset="town", overrides=overrides)


def test_spawn_capacity_matches_the_error():
    cfg = SimConfig()
    slots = spawn_slot_count(cfg.town, cfg.traffic)
    ok = load_sim_config(overrides={"traffic": {"vehicles": slots - cfg.agents.cavs, "cyclists": 0}})
    assert ok.traffic.vehicles == slots - cfg.agents.cavs
    with pytest.raises(ConfigError, match="spawn slots"):
        load_sim_config(overrides={"traffic": {"vehicles": slots - cfg.agents.cavs + 1, "cyclists": 0}})


@pytest.mark.parametrize("kwargs, match", [
    (dict(fmt="dair-v2x", config=load_sim_config(preset="blocked_intersection")), "infrastructure"),
    (dict(fmt="kitti"), "unknown"),
    (dict(scenarios=0), ">= 1"),
    (dict(split_ratios=(0.5, -0.1, 0.6)), "split ratios"),
])
def test_generate_rejects_bad_input_before_writing(tmp_path, kwargs, match):
    out = tmp_path / "never"
    args = dict(config=load_sim_config(), scenarios=1, frames=1, fmt="opv2v") | kwargs
    with pytest.raises(ConfigError, match=match):
        generate(out, **args)
    assert not out.exists()


def test_cli_parses_and_rejects_an_impossible_config(tmp_path):
    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["generate", "--out", str(tmp_path / "x"), "--scenarios", "1", "--frames", "1",
                              "--preset", "town", "--lidar", "16", "--split-ratios", "1", "0", "0"])
    assert args.func is commands.run and args.lidar == 16 and tuple(args.split_ratios) == (1.0, 0.0, 0.0)
    bad = tmp_path / "bad.yaml"
    bad.write_text("agents:\n  cavs: 1000\n")
    args = parser.parse_args(["generate", "--out", str(tmp_path / "y"), "--config", str(bad)])
    with pytest.raises(ConfigError, match="spawn slots"):
        args.func(args)
    assert not (tmp_path / "y").exists()
