"""Checkpoints: atomic writes (write-then-rename) and safe loads (``weights_only=True``).

A checkpoint is a plain dict of tensors and Python primitives so that it loads with
``torch.load(weights_only=True)``: model / optimizer / scheduler / AMP-scaler state, the RNG
states of Python, NumPy and torch, the epoch and step counters, and the resolved config.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

from coperception.errors import ConfigError


def save_checkpoint(path: str | Path, state: dict) -> Path:
    """Write ``state`` to ``path`` atomically: a crash leaves the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        torch.save(state, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint with ``weights_only=True``; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # pickle / zip errors of many kinds
        raise ConfigError(f"{path}: not a loadable checkpoint ({type(exc).__name__}: {exc})") from exc


def load_model_state(model: torch.nn.Module, state_dict: dict, source: str, allow_missing: tuple[str, ...] = ()) -> None:
    """Load weights strictly; a checkpoint of another architecture fails with a readable diff.

    allow_missing: key prefixes the checkpoint may lack (they keep the model's initial values),
    e.g. ``("comm.",)`` to start a codebook / compressor stage from a trained detector.
    """
    own = model.state_dict()
    missing = sorted(k for k in set(own) - set(state_dict) if not k.startswith(tuple(allow_missing)))
    unexpected = sorted(set(state_dict) - set(own))
    mismatched = sorted(k for k in set(own) & set(state_dict) if own[k].shape != state_dict[k].shape)
    if missing or unexpected or mismatched:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected)):
            if keys:
                parts.append(f"{len(keys)} {label} key(s) e.g. {keys[:3]}")
        if mismatched:
            k = mismatched[0]
            parts.append(f"{len(mismatched)} shape mismatch(es) e.g. {k}: checkpoint "
                         f"{tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}")
        raise ConfigError(f"{source}: checkpoint was saved for a different architecture: " + "; ".join(parts))
    model.load_state_dict(state_dict, strict=not allow_missing)


def rng_state() -> dict:
    """All RNG states as tensors/primitives (loadable with weights_only=True)."""
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state = {
        "python": {"version": py_version, "internal": list(py_internal), "gauss": py_gauss},
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state(("MT19937", npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
