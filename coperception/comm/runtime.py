"""The communication runtime: one exchange of one ego with its collaborators.

::

    view (every agent's maps, confidence, poses, own detections)
      -> strategy.transmit     every agent selects and encodes wire bytes within the budget
      -> deliver               the bytes travel: a Channel (loss, corruption, latency, pose
                               noise) or a perfect link; the ego decodes what reaches it
      -> strategy.receive      the ego rebuilds features / boxes from the decoded messages only

Evaluation, the bandwidth sweep and the closed loop all run this one function; it lives outside
any model so that a driving loop can run it once per simulation tick, with a channel that keeps
messages in flight across ticks. The detector (:mod:`coperception.models.detector`) prepares the
:class:`~coperception.comm.select.SampleView` and fuses what :func:`exchange` returns; nothing
here knows which strategy it runs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from coperception.comm.channel import latest_per_sender
from coperception.comm.message import Message, SparseCells
from coperception.comm.select import Received, SampleView, Sent, Strategy, split_parts
from coperception.comm.wire import decode
from coperception.errors import ConfigError
from coperception.geometry.grid import BEVGrid
from coperception.structures.cells import Pillars


class Link(Protocol):
    """What carries bytes between agents (:class:`~coperception.comm.channel.Channel` is one)."""

    latency: int
    jitter: int

    def broadcast(self, frame_index: int, sender: str, receivers, data: bytes) -> list: ...

    def deliver(self, frame_index: int, receiver: str) -> list[Message]: ...


@dataclass
class Exchange:
    """One exchange: every transmission made (bytes included, requests and supply maps too) and
    what the ego rebuilt from the messages that reached it."""

    sent: list[Sent]
    received: Received


def exchange(strategy: Strategy, view: SampleView, budget: int | None, channel: Link | None = None,
             device: torch.device | str = "cpu") -> Exchange:
    """Select -> encode -> deliver -> decode -> rebuild, for the ego of ``view`` (row 0).

    budget: bytes per agent per frame (None = unlimited); channel: carries the bytes (``None``: a
    perfect link, every message addressed to the ego is decoded from its bytes). When ``view``
    has world poses, messages announce them and the ego places each one with the pose it was
    captured at (a stale message's static structure lands right, moving objects are off by their
    motion).
    """
    sends = strategy.transmit(view, budget)
    world_from_ego = None if view.world_from_agent is None else view.pose(0)
    arrived = deliver(sends, str(view.agent_ids[0]), channel, int(view.timestamp), world_from_ego)
    return Exchange(sends, strategy.receive(arrived, device))


def deliver(sends: Sequence[Sent], ego: str, channel: Link | None, frame: int,
            world_from_ego: np.ndarray | None) -> list[Message]:
    """The decoded messages with content (features / boxes) that reach ``ego`` this frame,
    newest per sender, with poses in the ego frame when ``world_from_ego`` is given."""
    if channel is None:
        msgs = [decode(s.data) for s in sends if ego in s.receivers and s.message.sender_id != ego]
    else:
        for s in sends:
            channel.broadcast(frame, s.message.sender_id, s.receivers, s.data)
        msgs = channel.deliver(frame, ego)
    msgs = latest_per_sender([m for m in msgs if has_content(m)])
    if world_from_ego is None:
        return msgs
    ego_from_world = np.linalg.inv(world_from_ego)
    return [replace(m, world_from_lidar=ego_from_world @ m.world_from_lidar) for m in msgs]


def has_content(message: Message) -> bool:
    """Whether a message carries something to fuse (not only an empty cell set / Empty)."""
    return any(not (isinstance(p, SparseCells) and p.shape[0] == 0) for p in split_parts(message.payload))


def check_channel(channel: Link | None, batch_size: int, has_world_poses: bool) -> None:
    """A delaying channel needs frames in time order one at a time, with world poses."""
    if channel is not None and (channel.latency or channel.jitter) and (not has_world_poses or batch_size != 1):
        raise ConfigError("channel latency needs frames in time order one at a time (batch size 1) with "
                          "world poses in the batch, so that a stale message is placed with its capture pose")


def occupancy_maps(cells: Pillars | None, num_agents: int, grid: BEVGrid, stride: int) -> torch.Tensor:
    """(A, 1, H, W) LiDAR points per feature cell of every agent, from its pillars / voxels
    (CoSDH's demand input)."""
    if cells is None:
        raise ConfigError("occupancy needs voxelised cells in the batch")
    h1, w1 = grid.feature_shape(1)
    flat = (cells.coords[:, 0] * h1 + cells.coords[:, -2]) * w1 + cells.coords[:, -1]
    occ = torch.zeros(num_agents * h1 * w1, device=cells.coords.device)
    occ.index_add_(0, flat, cells.num_points.float())
    occ = occ.reshape(num_agents, 1, h1, w1)
    return F.avg_pool2d(occ, stride) * stride ** 2 if stride > 1 else occ
