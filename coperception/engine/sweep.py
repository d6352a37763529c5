"""Bandwidth-sweep points from spec strings (``coperception sweep --strategies ...``).

A strategy is given as a spec string:

* ``single`` -- the ego alone (0 bytes), the lower bound;
* ``late`` / ``dense`` / ``where2comm`` / ``supply_demand`` / ``codebook`` -- a strategy with its
  default arguments, optionally ``name:key=value,key=value`` (values parsed as YAML scalars);
* ``ckpt:PATH`` -- the communication strategy of a trained checkpoint (its config's ``model.comm``
  and its learned weights: codebook, compressor), e.g. a CodeFilling stage-2 run.
"""

from __future__ import annotations

import torch
import yaml

from coperception.comm.select import Strategy
from coperception.comm.strategies import STRATEGIES, build_strategy
from coperception.config import check_constructor_args
from coperception.engine.experiment import load_detector
from coperception.errors import ConfigError


def parse_strategy(spec: str, model, device: torch.device | str = "cpu") -> tuple[str, Strategy | None, str]:
    """A spec string (see the module docstring) -> (label, strategy or None, inference mode)."""
    grid, stride, channels = model.head.grid, model.head.stride, model.encoder.out_channels
    if spec == "single":
        return "single", None, "single"
    if spec.startswith("ckpt:"):
        cfg, other = load_detector(spec[5:], device)
        if cfg.model.comm is None:
            raise ConfigError(f"{spec[5:]}: its config has no model.comm strategy")
        if other.encoder.out_channels != channels or other.head.grid != grid or other.head.stride != stride:
            raise ConfigError(f"{spec[5:]}: its strategy is for {other.encoder.out_channels} channels on "
                              f"{other.head.grid} / stride {other.head.stride}; this model has {channels} on "
                              f"{grid} / stride {stride}")
        return cfg.name, other.comm, "intermediate"
    name, _, arg_text = spec.partition(":")
    if name not in STRATEGIES:
        raise ConfigError(f"strategy spec {spec!r}: unknown strategy {name!r}; known: single, ckpt:PATH, "
                          f"{', '.join(sorted(STRATEGIES))}")
    args = {}
    for item in filter(None, arg_text.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise ConfigError(f"strategy spec {spec!r}: {item!r} is not key=value")
        args[key.strip()] = yaml.safe_load(value)
    check_constructor_args(STRATEGIES[name], args, f"strategy spec {spec!r}")
    strat = build_strategy(name, channels, grid, stride, **args).to(device).eval()
    return spec, strat, "intermediate" if strat.sends_features else "late"
