"""Moving nested batches (dataclasses, dicts, lists of tensors) to a device."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch


def move_to_device(obj: Any, device: torch.device | str) -> Any:
    """Return ``obj`` with every tensor inside moved to ``device`` (non-blocking where possible)."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        host = getattr(obj, "HOST_FIELDS", ())  # counts read on the host stay there
        changes = {f.name: move_to_device(getattr(obj, f.name), device) for f in dataclasses.fields(obj)
                   if f.init and f.name not in host}
        return dataclasses.replace(obj, **changes)
    if isinstance(obj, dict):
        return {k: move_to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(move_to_device(v, device) for v in obj)
    return obj
