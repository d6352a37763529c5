"""A seeded, lossy, delayed, bandwidth-limited channel between agents.

The channel carries the bytes of :func:`coperception.comm.wire.encode` from one agent to another:

- **budget**: at most ``budget_bytes_per_link`` bytes per directed link per frame. Selection
  strategies must fit their message to the budget *before* sending; a send that would exceed it
  raises :class:`BudgetError` (and is counted as refused) -- the channel never carries more than
  the budget, silently or otherwise. If the budget is below the smallest message an agent can send
  (``wire.min_message_bytes(sender_id)``, an ``Empty`` payload: header, pose and CRC), the agent
  must send nothing; the error says so.
- **loss**: each transmission is lost with probability ``loss_prob`` (its bytes still count as
  sent: they used the air time).
- **corruption**: with probability ``corrupt_prob`` 1-8 random bits are flipped; the receiver's
  CRC-32 check fails and the message is dropped (counted as corrupt).
- **latency**: a message sent at frame t arrives at ``t + latency_frames + U{0..jitter}``. At
  delivery a message whose age ``frame - message.timestamp`` exceeds ``max_staleness_frames`` is
  dropped (counted as late). A stale message that is delivered keeps the sender's pose *at capture
  time* (``Message.world_from_lidar``): fusion warps it with that pose, so static structure lands
  where it was observed and only moving objects are off by their motion -- the latency error the
  papers evaluate.
- **pose noise**: the receiver sees the sender's pose perturbed by Gaussian noise on x, y, z
  (``pose_noise_xyz_std`` metres) and on yaw (``pose_noise_yaw_std`` radians, rotating about the
  world z axis), as in CoAlign / OpenCOOD's noisy-pose evaluation. The noise is the sender's
  localisation error: it is keyed by (sender, capture frame), the same for every receiver.

Every random draw comes from ``numpy.random.SeedSequence`` keyed by the seed and the event
(link, frame, index of the send), so the same seed gives the same losses, corruptions and noise
whatever the payloads, call order or other links -- strategies can be compared under one channel
realisation. Fusion uses whatever :meth:`Channel.deliver` returns (plus the ego's own features):
dropped messages simply are not there.
"""

from __future__ import annotations

import logging
import zlib
from collections import defaultdict
from dataclasses import dataclass, fields, replace

import numpy as np

from coperception.comm.message import Message
from coperception.comm.volume import DEFAULT_HZ, CommStats
from coperception.comm.wire import WireLimits, decode, min_message_bytes
from coperception.errors import BudgetError, ConfigError, WireError

log = logging.getLogger(__name__)
_MAX_FLIPS = 8


@dataclass
class LinkStats:
    """Counters of one directed link (messages and bytes)."""

    sent_messages: int = 0
    sent_bytes: int = 0
    delivered_messages: int = 0
    delivered_bytes: int = 0
    lost_messages: int = 0
    lost_bytes: int = 0
    corrupt_messages: int = 0
    corrupt_bytes: int = 0
    late_messages: int = 0
    late_bytes: int = 0
    refused_messages: int = 0
    refused_bytes: int = 0

    def add(self, what: str, nbytes: int) -> None:
        setattr(self, f"{what}_messages", getattr(self, f"{what}_messages") + 1)
        setattr(self, f"{what}_bytes", getattr(self, f"{what}_bytes") + nbytes)

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class SendReceipt:
    """What happened to one transmission (known to the simulator, not to the sender)."""

    frame_index: int
    sender: str
    receiver: str
    nbytes: int
    arrival_frame: int
    lost: bool
    corrupted: bool


@dataclass
class _InFlight:
    arrival: int
    order: int
    sender: str
    data: bytes
    corrupted: bool


def _key(name: str) -> int:
    return zlib.crc32(name.encode("utf-8"))


class Channel:
    """Seeded channel; see the module docstring for the model. Agents are named by their ids."""

    def __init__(
        self,
        seed: int = 0,
        budget_bytes_per_link: int | None = None,
        loss_prob: float = 0.0,
        latency_frames: int = 0,
        pose_noise_xyz_std: float | tuple[float, float, float] = 0.0,
        pose_noise_yaw_std: float = 0.0,
        corrupt_prob: float = 0.0,
        latency_jitter_frames: int = 0,
        max_staleness_frames: int | None = None,
        limits: WireLimits = WireLimits(),
        hz: float = DEFAULT_HZ,
    ) -> None:
        self.seed = int(seed)
        self.budget = None if budget_bytes_per_link is None else int(budget_bytes_per_link)
        self.loss_prob, self.corrupt_prob = float(loss_prob), float(corrupt_prob)
        self.latency, self.jitter = int(latency_frames), int(latency_jitter_frames)
        self.xyz_std = np.broadcast_to(np.asarray(pose_noise_xyz_std, dtype=np.float64), (3,)).copy()
        self.yaw_std = float(pose_noise_yaw_std)
        self.max_staleness = None if max_staleness_frames is None else int(max_staleness_frames)
        self.limits = limits
        self._validate()
        self.volume = CommStats(hz)
        self._stats: dict[tuple[str, str], LinkStats] = defaultdict(LinkStats)
        self._queues: dict[str, list[_InFlight]] = defaultdict(list)
        self._used: dict[tuple[str, str], tuple[int, int, int]] = {}  # link -> (frame, bytes, sends)
        self._order = 0

    def _validate(self) -> None:
        bad = []
        if self.budget is not None and self.budget < 0:
            bad.append(f"budget_bytes_per_link={self.budget}")
        for name in ("loss_prob", "corrupt_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                bad.append(f"{name}={getattr(self, name)}")
        if self.latency < 0 or self.jitter < 0:
            bad.append(f"latency_frames={self.latency}, latency_jitter_frames={self.jitter}")
        if not (np.all(self.xyz_std >= 0) and self.yaw_std >= 0 and np.all(np.isfinite(self.xyz_std))):
            bad.append(f"pose noise std xyz={self.xyz_std.tolist()} yaw={self.yaw_std}")
        if self.max_staleness is not None and self.max_staleness < 0:
            bad.append(f"max_staleness_frames={self.max_staleness}")
        if bad:
            raise ConfigError(f"Channel: invalid {', '.join(bad)}")

    # ------------------------------------------------------------------ sending

    def _rng(self, *event: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence([self.seed & 0xFFFFFFFF, *event]))

    def _check_budget(self, frame: int, sender: str, receiver: str, nbytes: int) -> None:
        if sender == receiver or frame < 0:
            raise ValueError(f"Channel: invalid send {sender!r}->{receiver!r} at frame {frame}")
        if self.budget is None:
            return
        used = self._used.get((sender, receiver), (frame, 0, 0))
        already = used[1] if used[0] == frame else 0
        if already + nbytes > self.budget:
            self._stats[(sender, receiver)].add("refused", nbytes)
            floor = min_message_bytes(sender)
            hint = (f"; the budget is below the smallest message {sender!r} can send ({floor} bytes): send nothing"
                    if self.budget < floor else "; fit the payload to the budget before sending")
            raise BudgetError(
                f"link {sender!r}->{receiver!r} frame {frame}: {nbytes} bytes (+{already} already sent) exceed "
                f"the budget of {self.budget} bytes per link per frame{hint}"
            )

    def _transmit(self, frame: int, sender: str, receiver: str, data: bytes) -> SendReceipt:
        used = self._used.get((sender, receiver), (frame, 0, 0))
        used = used if used[0] == frame else (frame, 0, 0)
        self._used[(sender, receiver)] = (frame, used[1] + len(data), used[2] + 1)
        rng = self._rng(1, _key(sender), _key(receiver), frame, used[2])
        lost = bool(rng.random() < self.loss_prob)
        corrupted = bool(rng.random() < self.corrupt_prob)
        arrival = frame + self.latency + (int(rng.integers(0, self.jitter + 1)) if self.jitter else 0)
        payload = _flip_bits(data, rng) if corrupted and data else data
        stats = self._stats[(sender, receiver)]
        stats.add("sent", len(data))
        if lost:
            stats.add("lost", len(data))
        else:
            self._order += 1
            self._queues[receiver].append(_InFlight(arrival, self._order, sender, payload, corrupted))
        return SendReceipt(frame, sender, receiver, len(data), arrival, lost, corrupted)

    def send(self, frame_index: int, sender: str, receiver: str, data: bytes) -> SendReceipt:
        """Unicast ``data`` (the bytes of one encoded message) on the link sender -> receiver."""
        data = _as_bytes(data)
        self._check_budget(int(frame_index), sender, receiver, len(data))
        receipt = self._transmit(int(frame_index), sender, receiver, data)
        self.volume.record(frame_index, sender, (receiver,), len(data))
        return receipt

    def broadcast(self, frame_index: int, sender: str, receivers, data: bytes) -> list[SendReceipt]:
        """One transmission heard by every receiver (each link's budget applies; counted once per agent)."""
        data, receivers = _as_bytes(data), list(dict.fromkeys(receivers))
        for receiver in receivers:  # all links must accept before anything is sent
            self._check_budget(int(frame_index), sender, receiver, len(data))
        receipts = [self._transmit(int(frame_index), sender, r, data) for r in receivers]
        self.volume.record(frame_index, sender, receivers, len(data))
        return receipts

    # ------------------------------------------------------------------ receiving

    def deliver(self, frame_index: int, receiver: str) -> list[Message]:
        """Decoded messages for ``receiver`` that have arrived by ``frame_index`` and pass the checks.

        Corrupt / undecodable messages and messages older than ``max_staleness_frames`` are dropped
        and counted; the rest come back in arrival order with the sender's pose as seen through
        the pose noise.
        """
        frame = int(frame_index)
        queue = self._queues[receiver]
        ready = sorted((m for m in queue if m.arrival <= frame), key=lambda m: (m.arrival, m.order))
        self._queues[receiver] = [m for m in queue if m.arrival > frame]
        out = []
        for item in ready:
            msg = self._receive(frame, receiver, item)
            if msg is not None:
                out.append(msg)
        return out

    def _receive(self, frame: int, receiver: str, item: _InFlight) -> Message | None:
        stats, nbytes = self._stats[(item.sender, receiver)], len(item.data)
        try:
            msg = decode(item.data, self.limits)
            if msg.sender_id != item.sender or msg.timestamp > frame:
                raise WireError(f"sender {msg.sender_id!r} at frame {msg.timestamp} on link {item.sender!r} at {frame}")
        except WireError as exc:
            log.debug("dropping message %s->%s at frame %d: %s", item.sender, receiver, frame, exc)
            stats.add("corrupt", nbytes)
            return None
        if self.max_staleness is not None and frame - msg.timestamp > self.max_staleness:
            stats.add("late", nbytes)
            return None
        stats.add("delivered", nbytes)
        return replace(msg, world_from_lidar=self.noisy_pose(msg.sender_id, msg.timestamp, msg.world_from_lidar))

    def noisy_pose(self, sender: str, timestamp: int, world_from_lidar: np.ndarray) -> np.ndarray:
        """The sender's pose as receivers see it (seeded by sender and capture frame)."""
        if not (self.yaw_std > 0 or np.any(self.xyz_std > 0)):
            return world_from_lidar
        rng = self._rng(2, _key(sender), int(timestamp))
        dxyz, dyaw = rng.normal(0.0, 1.0, 3) * self.xyz_std, rng.normal(0.0, 1.0) * self.yaw_std
        c, s = np.cos(dyaw), np.sin(dyaw)
        out = np.array(world_from_lidar, dtype=np.float64)
        out[:3, :3] = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) @ out[:3, :3]
        out[:3, 3] += dxyz
        return out

    # ------------------------------------------------------------------ accounting

    def link_stats(self, sender: str, receiver: str) -> LinkStats:
        return self._stats[(sender, receiver)]

    @property
    def stats(self) -> dict[tuple[str, str], LinkStats]:
        return dict(self._stats)

    def pending(self, receiver: str) -> int:
        """Messages in flight to ``receiver``."""
        return len(self._queues[receiver])


def latest_per_sender(messages: list[Message]) -> list[Message]:
    """Keep the newest message (largest timestamp, then latest arrival) of each sender."""
    newest: dict[str, Message] = {}
    for m in messages:
        if m.sender_id not in newest or m.timestamp >= newest[m.sender_id].timestamp:
            newest[m.sender_id] = m
    return list(newest.values())


def _as_bytes(data) -> bytes:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"Channel sends bytes (wire.encode(message)), got {type(data).__name__}")
    return bytes(data)


def _flip_bits(data: bytes, rng: np.random.Generator) -> bytes:
    n_bits = len(data) * 8
    flips = rng.choice(n_bits, size=min(int(rng.integers(1, _MAX_FLIPS + 1)), n_bits), replace=False)
    buf = np.frombuffer(data, dtype=np.uint8).copy()
    np.bitwise_xor.at(buf, flips // 8, (1 << (7 - flips % 8)).astype(np.uint8))
    return buf.tobytes()
