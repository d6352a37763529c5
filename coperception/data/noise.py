"""Gaussian localisation noise on collaborators' poses.

The pose-error model of OpenCOOD's ``wild_setting`` (``add_loc_noise``) and HEAL's
``pose_utils.add_noise_data_dict`` (used by CoAlign, Lu et al., "Robust Collaborative 3D Object
Detection in Presence of Pose Errors", ICRA 2023): each non-ego agent's LiDAR pose gets
``x, y += N(pos_mean, pos_std)`` metres (z too with ``noise_z``) and
``yaw += N(rot_mean, rot_std)`` degrees, the yaw turning about the world z axis through the
sensor. The ego pose stays clean: fusion uses the noisy ``ego_from_agent``, ground truth the
clean one.

For reproducible evaluation the noise of a frame is drawn from a generator seeded by
``(seed, scenario, timestamp)``, so a frame gets the same noise in every run, worker and order.
Agent ``j`` (in the dataset's agent order) always gets row ``j`` of the draw, whatever the
number of agents.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np

from coperception.errors import ConfigError


@dataclass(frozen=True)
class PoseNoise:
    """pos_std / pos_mean: metres; rot_std / rot_mean: degrees (HEAL's units); seed: base seed."""

    pos_std: float = 0.2
    rot_std: float = 0.2
    pos_mean: float = 0.0
    rot_mean: float = 0.0
    noise_z: bool = False
    seed: int = 25

    def __post_init__(self) -> None:
        for name in ("pos_std", "rot_std", "pos_mean", "rot_mean"):
            value = getattr(self, name)
            if not math.isfinite(value):
                raise ConfigError(f"PoseNoise.{name} must be finite, got {value}")
        if self.pos_std < 0 or self.rot_std < 0:
            raise ConfigError(f"PoseNoise stds must be >= 0, got pos_std={self.pos_std}, rot_std={self.rot_std}")

    def frame_rng(self, key: tuple[str, int]) -> np.random.Generator:
        """Generator seeded by ``(seed, scenario, timestamp)`` (crc32 of the scenario: stable across runs)."""
        scenario, timestamp = key
        return np.random.default_rng([self.seed, zlib.crc32(str(scenario).encode()), int(timestamp)])

    def sample(self, num_agents: int, rng: np.random.Generator) -> np.ndarray:
        """(A, 4) ``[dx, dy, dz, dyaw]`` (metres, radians); row 0 (the ego) is zero."""
        draw = rng.standard_normal((num_agents, 4))
        delta = np.empty_like(draw)
        delta[:, :3] = self.pos_mean + self.pos_std * draw[:, :3]
        if not self.noise_z:
            delta[:, 2] = 0.0
        delta[:, 3] = np.radians(self.rot_mean + self.rot_std * draw[:, 3])
        delta[0] = 0.0
        return delta

    def apply(self, world_from_lidar: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Noisy copies of (A, 4, 4) poses, agent 0 being the ego (left unchanged)."""
        return perturb_poses(world_from_lidar, self.sample(len(world_from_lidar), rng))


def perturb_poses(world_from_lidar: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """Add ``delta`` (A, 4) ``[dx, dy, dz, dyaw]`` to (A, 4, 4) poses.

    The translation moves by ``(dx, dy, dz)`` in the world frame and the rotation turns by
    ``dyaw`` about the world z axis through the sensor: ``R' = Rz(dyaw) @ R``.
    """
    poses = np.array(world_from_lidar, dtype=np.float64, copy=True)
    delta = np.asarray(delta, dtype=np.float64)
    cos, sin = np.cos(delta[:, 3]), np.sin(delta[:, 3])
    rz = np.zeros((len(delta), 3, 3))
    rz[:, 0, 0], rz[:, 0, 1], rz[:, 1, 0], rz[:, 1, 1], rz[:, 2, 2] = cos, -sin, sin, cos, 1.0
    poses[:, :3, :3] = rz @ poses[:, :3, :3]
    poses[:, :3, 3] += delta[:, :3]
    return poses
