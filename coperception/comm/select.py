"""Message selection: the interface every communication strategy implements, and its shared parts.

A strategy decides what each collaborator sends the ego in one frame, within a byte budget, and
how the ego turns what arrived back into features / boxes for fusion::

    transmit(view: SampleView, budget: int | None) -> list[Sent]      # every message of the frame
    receive(messages: list[Message], channels, hw, device) -> Received  # ego side, decoded bytes only
    simulate(features, confidence, agents_per_sample) -> (features, mask, aux_losses)  # training

``transmit`` returns the encoded bytes of every message (``Sent.data``): the byte count of an
agent is ``len()`` of those bytes, and every message it returns fits the budget -- the sum of one
agent's messages in the frame is at most ``budget`` (verified by encoding, :mod:`.budget`). The
ego may send too (a request / demand map, Where2comm's multi-round "request", CoSDH's demand):
those bytes are the ego's, counted like any other. ``receive`` sees only decoded messages (after
the channel: loss, corruption, pose noise), never the sender's tensors.

Training cannot run the byte path (it is not differentiable); ``simulate`` is the differentiable
stand-in: the collaborators' maps go through the representation's round trip (autoencoder,
codebook with straight-through) and a selection mask -- by default a random top-K of the
confidence map with K ~ U(0, 1) * H * W per collaborator, the "training proxy" CoSDH uses for
Where2comm, so that one model serves every budget.

Conventions: all maps (features, confidence, masks) are in their agent's own frame on the same
grid and stride; row 0 of a :class:`SampleView` is the ego. A flat cell index is ``row * W + col``.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import ClassVar, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from coperception.comm.message import Boxes, Composite, Empty, Message, SparseCells
from coperception.comm.wire import encode
from coperception.errors import ConfigError
from coperception.geometry.grid import BEVGrid
from coperception.structures.records import Detections


@dataclass
class SampleView:
    """What the agents of one sample hold at selection time (row 0 = ego).

    agent_ids: A agent ids; timestamp: frame index (u32) stamped on the messages.
    features: (A, C, H, W) each agent's BEV map in its own frame.
    confidence: (A, 1, H, W) objectness in [0, 1] (AnchorHead.confidence_map of the agent's own map).
    ego_from_agent: (A, 4, 4) poses in the ego frame (what the senders use to warp maps).
    occupancy: (A, 1, H, W) LiDAR points per feature cell, or None (CoSDH's demand).
    detections: each agent's own detections in its frame, or None (late / hybrid strategies).
    world_from_agent: (A, 4, 4) float64 announced world poses, or None (messages then carry
        ego-frame poses).
    """

    agent_ids: Sequence[str]
    timestamp: int
    features: torch.Tensor
    confidence: torch.Tensor
    ego_from_agent: torch.Tensor
    occupancy: torch.Tensor | None = None
    detections: Sequence[Detections] | None = None
    world_from_agent: torch.Tensor | None = None

    @property
    def num_agents(self) -> int:
        return int(self.features.shape[0])

    def pose(self, row: int) -> np.ndarray:
        """The pose agent ``row`` announces in its messages: its world pose when known (so a
        receiver can place a stale message with the pose it was captured at), else its pose in
        the ego frame."""
        poses = self.world_from_agent if self.world_from_agent is not None else self.ego_from_agent
        return poses[row].double().cpu().numpy()


@dataclass
class Sent:
    """One transmission: the message, its encoded bytes, who it is for, and why ("features",
    "boxes", "request", "supply")."""

    message: Message
    data: bytes
    receivers: tuple[str, ...]
    role: str = "features"

    @property
    def nbytes(self) -> int:
        return len(self.data)


@dataclass
class Received:
    """What the ego rebuilt from the messages that arrived.

    features / masks / poses: per collaborator that sent features: (C, H, W) map and (1, H, W)
        mask in the sender's frame, (4, 4) ego_from_sender as announced (noisy under pose noise).
    boxes: per collaborator that sent boxes: (Boxes payload, (4, 4) ego_from_sender).
    """

    features: list[torch.Tensor] = field(default_factory=list)
    masks: list[torch.Tensor] = field(default_factory=list)
    poses: list[np.ndarray] = field(default_factory=list)
    boxes: list[tuple[Boxes, np.ndarray]] = field(default_factory=list)


def sent(message: Message, receivers: Sequence[str], role: str = "features", data: bytes | None = None) -> Sent:
    return Sent(message, encode(message) if data is None else data, tuple(receivers), role)


# ------------------------------------------------------------------------------ map helpers


def gaussian_smooth(conf: torch.Tensor, sigma: float, kernel: int = 5) -> torch.Tensor:
    """(N, 1, H, W) -> the same blurred by a fixed normalised Gaussian (Where2comm: k 5, sigma 1)."""
    if sigma <= 0:
        return conf
    r = torch.arange(kernel, dtype=conf.dtype, device=conf.device) - kernel // 2
    g = torch.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * sigma ** 2))
    return F.conv2d(conf, (g / g.sum())[None, None], padding=kernel // 2)


def ranked_cells(priority: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """(1, H, W) priority + (1, H, W) bool candidates -> (K,) flat cells, highest priority first
    (ties broken by cell index, so the order is deterministic)."""
    p, c = priority.flatten(), candidates.flatten()
    idx = torch.nonzero(c).flatten()
    order = torch.argsort(p[idx], descending=True, stable=True)
    return idx[order]


def cell_set_message(sender: str, timestamp: int, pose: np.ndarray, mask: torch.Tensor) -> Message:
    """A cell set (no features): SparseCells with C = 0 of the true cells of a (1, H, W) mask."""
    h, w = mask.shape[-2:]
    idx = torch.nonzero(mask.flatten() > 0.5).flatten().cpu()
    payload = SparseCells((0, h, w), idx, np.zeros((idx.numel(), 0), np.float32)) if idx.numel() else Empty()
    return Message(sender, timestamp, pose, payload)


def random_topk_mask(conf: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """(N, 1, H, W) -> (N, 1, H, W) float mask of each map's top ``K ~ U(0, 1) * H * W`` cells."""
    n, _, h, w = conf.shape
    ratio = torch.rand(n, generator=generator, device="cpu").to(conf.device)
    k = (ratio * h * w).long().clamp(min=1)
    flat = conf.flatten(1)
    rank = torch.argsort(torch.argsort(flat, dim=1, descending=True), dim=1)
    return (rank < k[:, None]).to(conf.dtype).reshape(n, 1, h, w)


def collaborator_rows(agents_per_sample: torch.Tensor) -> torch.Tensor:
    """(sum_A,) bool: true for every agent row that is not its sample's ego (first row)."""
    counts = agents_per_sample.to("cpu", torch.long)
    first = torch.cumsum(counts, 0) - counts
    rows = torch.ones(int(counts.sum()), dtype=torch.bool)
    rows[first] = False
    return rows


# ------------------------------------------------------------------------------ base class


class Strategy(nn.Module, abc.ABC):
    """Base of every communication strategy (see the module docstring for the contract).

    channels / grid / stride: the BEV maps the strategy sends (from the encoder).
    """

    name: ClassVar[str] = ""
    #: the strategy sends boxes, so inference must decode each agent's own detections.
    needs_detections: ClassVar[bool] = False
    #: the strategy's demand uses LiDAR occupancy.
    needs_occupancy: ClassVar[bool] = False
    #: the strategy sends BEV features (False: boxes only, late collaboration).
    sends_features: ClassVar[bool] = True
    #: received boxes are late-fused with scores multiplied by this (CoSDH's confidence_beta).
    box_beta: float = 1.0

    def __init__(self, channels: int, grid: BEVGrid, stride: int) -> None:
        super().__init__()
        if channels < 1 or stride < 1:
            raise ConfigError(f"{type(self).__name__}: channels and stride must be >= 1, got {channels}, {stride}")
        self.channels, self.grid, self.stride = int(channels), grid, int(stride)


    @abc.abstractmethod
    def transmit(self, view: SampleView, budget: int | None) -> list[Sent]:
        """Every message of one frame (each fits ``budget`` bytes per agent)."""

    def receive(self, messages: Sequence[Message], device: torch.device | str) -> Received:
        """The ego's reconstruction of decoded ``messages`` (collaborators' messages only): boxes
        as they are, features through the strategy's representation ``self.rep`` (a strategy
        without one, e.g. late, uses the boxes only)."""
        rx, rep = Received(), getattr(self, "rep", None)
        for message in messages:
            restore_message(rx, rep, message, device)
        return rx

    #: ``simulate`` reads the per-agent confidence maps (the detector computes them only then).
    trains_on_confidence: bool = False

    def simulate(self, features: torch.Tensor, confidence: torch.Tensor | None,
                 agents_per_sample: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, torch.Tensor]]:
        """Differentiable training stand-in: (sum_A, C, H, W) -> (features, mask or None, aux losses);
        ``confidence`` is None unless :attr:`trains_on_confidence`."""
        return features, None, {}


def restore_message(rx: Received, rep, message: Message, device) -> None:
    """Add a decoded message's boxes, and its features if ``rep`` is given, to ``rx`` (cell sets
    without features -- requests, supply maps -- carry nothing to fuse and are skipped)."""
    pose = message.world_from_lidar
    for part in split_parts(message.payload):
        if isinstance(part, Boxes):
            rx.boxes.append((part, pose))
        elif rep is None or (isinstance(part, SparseCells) and part.shape[0] == 0):
            continue
        else:
            feats, mask = rep.restore(part, device)
            rx.features.append(feats)
            rx.masks.append(mask)
            rx.poses.append(pose)


def message_of(view: SampleView, row: int, payload) -> Message:
    return Message(str(view.agent_ids[row]), int(view.timestamp), view.pose(row), payload)


def split_parts(payload) -> list:
    """The leaf payloads of a (possibly composite) payload; Empty -> []."""
    if isinstance(payload, Composite):
        return list(payload.parts)
    if isinstance(payload, Empty):
        return []
    return [payload]
