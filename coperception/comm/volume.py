"""Communication volume: bytes per agent per frame, log2(bytes), and Mbps per link.

Units, as reported in the literature:

- **bytes per agent per frame** -- ``len(wire.encode(message))`` summed over what one agent
  transmits in one frame. A broadcast (one radio transmission heard by several receivers) counts
  once; unicasts to several receivers count once each.
- **log2(bytes)** -- the x axis of the Where2comm ("Where2comm: Communication-Efficient
  Collaborative Perception via Spatial Confidence Maps", NeurIPS 2022) and CodeFilling
  ("Communication-Efficient Collaborative Perception via Information Filling with Codebook",
  CVPR 2024) plots. The papers never publish their formula (users reconstruct it as
  ``log2(rate * H * W * C * 4)``); we take ``log2`` of the *mean* bytes per agent per frame
  of the real encoding, header, pose, indices and checksum included. ``log2(0)`` is ``-inf``
  (nothing was sent).
- **Mbps per link** -- mean bytes per frame on a directed link x 8 bits x frame rate (10 Hz, the
  LiDAR rate of OPV2V / DAIR-V2X) / 1e6, to compare with a radio's capacity (e.g. ~27 Mbps for
  802.11p / DSRC at its top rate).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Iterable

from coperception.errors import ConfigError

DEFAULT_HZ = 10.0


def log2_bytes(nbytes: float) -> float:
    """``log2(nbytes)``; ``-inf`` for 0 bytes. Negative input is an error."""
    if nbytes < 0:
        raise ValueError(f"byte count must be >= 0, got {nbytes}")
    return math.log2(nbytes) if nbytes > 0 else float("-inf")


def mbps(bytes_per_frame: float, hz: float = DEFAULT_HZ) -> float:
    """Megabits per second of ``bytes_per_frame`` sent every frame at ``hz`` frames per second."""
    return bytes_per_frame * 8.0 * hz / 1e6


@dataclass(frozen=True)
class CommSummary:
    """Aggregate communication volume (means over the (frame, agent) / (frame, link) pairs seen)."""

    hz: float
    frames: int
    agents: int
    links: int
    messages: int
    total_bytes: int
    bytes_per_agent_frame: float
    log2_bytes_per_agent_frame: float
    bytes_per_link_frame: float
    mbps_per_link: float
    max_mbps_per_link: float

    def as_dict(self) -> dict[str, float | None]:
        """Plain values for JSON (log2 of zero bytes, -inf, becomes None: strict JSON has no infinity)."""
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}


class CommStats:
    """Accumulates what agents transmit, frame by frame.

    ``record(frame, sender, receivers, nbytes)`` is one transmission of ``nbytes`` from ``sender``
    heard by ``receivers`` (one receiver for a unicast, several for a broadcast). An agent that is
    present but sends nothing can be recorded with ``nbytes = 0`` and no receivers, so that it
    counts in the per-agent mean.
    """

    def __init__(self, hz: float = DEFAULT_HZ) -> None:
        if not hz > 0:
            raise ConfigError(f"CommStats: frame rate hz must be > 0, got {hz}")
        self.hz = float(hz)
        self._agent_frame: dict[tuple[int, str], int] = defaultdict(int)
        self._link_frame: dict[tuple[int, str, str], int] = defaultdict(int)
        self.messages = 0

    def record(self, frame_index: int, sender: str, receivers: Iterable[str], nbytes: int) -> None:
        nbytes = int(nbytes)
        if nbytes < 0:
            raise ValueError(f"CommStats.record: nbytes must be >= 0, got {nbytes}")
        self._agent_frame[(int(frame_index), sender)] += nbytes
        for receiver in receivers:
            self._link_frame[(int(frame_index), sender, receiver)] += nbytes
        self.messages += nbytes > 0

    def per_agent(self) -> dict[str, float]:
        """Mean bytes per frame of each sender (over the frames it was recorded in)."""
        return _means((sender, b) for (_, sender), b in self._agent_frame.items())

    def per_link(self) -> dict[tuple[str, str], float]:
        """Mean bytes per frame on each directed link (over the frames it carried something)."""
        return _means(((s, r), b) for (_, s, r), b in self._link_frame.items())

    def summary(self) -> CommSummary:
        agent_b = list(self._agent_frame.values())
        link_b = list(self._link_frame.values())
        per_agent = sum(agent_b) / len(agent_b) if agent_b else 0.0
        per_link = sum(link_b) / len(link_b) if link_b else 0.0
        links = self.per_link()
        return CommSummary(
            hz=self.hz,
            frames=len({f for f, _ in self._agent_frame}),
            agents=len({a for _, a in self._agent_frame}),
            links=len(links),
            messages=self.messages,
            total_bytes=sum(agent_b),
            bytes_per_agent_frame=per_agent,
            log2_bytes_per_agent_frame=log2_bytes(per_agent),
            bytes_per_link_frame=per_link,
            mbps_per_link=mbps(per_link, self.hz),
            max_mbps_per_link=mbps(max(links.values()), self.hz) if links else 0.0,
        )


def _means(pairs) -> dict:
    total: dict = defaultdict(int)
    count: dict = defaultdict(int)
    for key, b in pairs:
        total[key] += b
        count[key] += 1
    return {k: total[k] / count[k] for k in total}
