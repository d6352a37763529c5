"""Pedestrians walking around blocks on the sidewalk at constant speed.

Each walker follows the rectangular loop of one block's sidewalk (:attr:`World.sidewalk_loops`),
clockwise or counter-clockwise, at 1.0-1.6 m/s. They never cross roads, so they need no
interaction with traffic; they matter as small, often occluded objects on the curb.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from coperception.sim.ground import CURB_HEIGHT
from coperception.sim.objects import CLASS_INDEX, sample_sizes


@dataclass
class Pedestrians:
    """loop: (N,) index into the loops (P, 4); s: (N,) arc position along the loop (m);
    speed: (N,) signed m/s (negative walks the loop backwards); size: (N, 3) l, w, h."""

    loops: np.ndarray
    loop: np.ndarray
    s: np.ndarray
    speed: np.ndarray
    size: np.ndarray

    def __len__(self) -> int:
        return len(self.loop)

    def step(self, dt: float) -> None:
        perimeter = _perimeter(self.loops[self.loop])
        self.s = (self.s + self.speed * dt) % perimeter

    def boxes(self) -> np.ndarray:
        """(N, 7) world boxes standing on the curb."""
        r = self.loops[self.loop]
        w, h = r[:, 2] - r[:, 0], r[:, 3] - r[:, 1]
        s = self.s
        # Edges in order: south (east-going), east (north), north (west), west (south).
        edge = np.select([s < w, s < w + h, s < 2 * w + h], [0, 1, 2], 3)
        u = s - np.choose(edge, [np.zeros_like(s), w, w + h, 2 * w + h])
        x = np.choose(edge, [r[:, 0] + u, r[:, 2], r[:, 2] - u, r[:, 0]])
        y = np.choose(edge, [r[:, 1], r[:, 1] + u, r[:, 3], r[:, 3] - u])
        yaw = edge * (np.pi / 2) + np.where(self.speed < 0, np.pi, 0.0)
        yaw = (yaw + np.pi) % (2 * np.pi) - np.pi
        z = CURB_HEIGHT + self.size[:, 2] / 2
        return np.column_stack([x, y, z, self.size, yaw])

    def speeds(self) -> np.ndarray:
        return np.abs(self.speed)


def _perimeter(r: np.ndarray) -> np.ndarray:
    return 2 * ((r[:, 2] - r[:, 0]) + (r[:, 3] - r[:, 1]))


def spawn_pedestrians(loops: np.ndarray, n: int, rng: np.random.Generator) -> Pedestrians:
    """``n`` walkers on random loops at random positions and directions."""
    if len(loops) == 0:
        n = 0
    loop = rng.integers(0, max(len(loops), 1), n)
    per = _perimeter(loops[loop]) if n else np.zeros(0)
    s = rng.random(n) * per
    speed = rng.uniform(1.0, 1.6, n) * rng.choice([-1.0, 1.0], n)
    size = sample_sizes(np.full(n, CLASS_INDEX["pedestrian"]), rng)
    return Pedestrians(loops=loops, loop=loop, s=s, speed=speed, size=size)
