"""Distributed data parallel set-up for ``torchrun`` (one process per GPU, or gloo on CPU).

``torchrun --nproc_per_node=N -m coperception.cli train ...`` sets RANK / WORLD_SIZE /
LOCAL_RANK; a plain ``python`` run is world size 1 and needs no process group.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist
from torch.utils.data import Sampler


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str | None = None) -> DistInfo:
    """Read torchrun's environment; initialise NCCL (CUDA) or gloo (CPU) when world size > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    if use_cuda:
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistInfo(rank, world, local, dev)


def all_reduce_mean(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        value = value.detach().clone()
        dist.all_reduce(value)
        value /= info.world_size
    return value


class ResumableSampler(Sampler[int]):
    """Shuffled (or ordered) indices for one rank, reproducible per (seed, epoch), resumable mid-epoch.

    Every rank draws the same permutation from ``seed + epoch``, pads it to a multiple of the
    world size and takes every ``world_size``-th index from its rank; ``start`` skips indices
    already consumed before a resume.
    """

    def __init__(self, length: int, *, shuffle: bool, seed: int, rank: int = 0, world_size: int = 1):
        self.length, self.shuffle, self.seed = length, shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.start = 0
        self.per_rank = math.ceil(length / world_size) if length else 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def _indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.length, generator=g).tolist()
        else:
            order = list(range(self.length))
        total = self.per_rank * self.world_size
        order += order[: total - len(order)]
        return order[self.rank:total:self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices()[self.start:])

    def __len__(self) -> int:
        return max(self.per_rank - self.start, 0)
