"""Spinning-LiDAR model: beam tables, ray directions, and what becomes of a ray that hits.

Vertical angle tables follow the sensors OPV2V-style datasets use: a Velodyne HDL-64E-like
head (upper block of 32 lasers +2.0..-8.33 deg at 1/3 deg, lower block -8.83..-24.9 deg at about
1/2 deg), an HDL-32E (-30.67..+10.67 deg, 1.33 deg apart) and a VLP-16 (-15..+15 deg, 2 deg
apart). Azimuths are evenly spaced, ``firing_rate / rotation_rate`` per revolution.

A return keeps the range measured along its ray plus Gaussian noise; its intensity is
``reflectivity * |cos(incidence)| * exp(-attenuation * range)`` (Lambertian surface, the
atmospheric loss CARLA's ray-cast LiDAR uses), and it is lost with probability ``dropout`` or
when its intensity falls below ``min_intensity``. Points are expressed in the LiDAR frame
(x forward, y left, z up), i.e. ``direction_lidar * measured_range``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from coperception.errors import ConfigError
from coperception.sim.config import LidarConfig
from coperception.sim.raycast import Hits

BEAM_TABLES_DEG: dict[int, np.ndarray] = {
    64: np.concatenate([np.linspace(2.0, -8.33, 32), np.linspace(-8.83, -24.9, 32)]),
    32: np.linspace(10.67, -30.67, 32),
    16: np.linspace(15.0, -15.0, 16),
}


def beam_elevations(channels: int) -> np.ndarray:
    """(C,) elevation angles in radians, top beam first."""
    if channels not in BEAM_TABLES_DEG:
        raise ConfigError(f"lidar.channels: no beam table for {channels} beams; use one of {sorted(BEAM_TABLES_DEG)}")
    return np.radians(BEAM_TABLES_DEG[channels])


@dataclass(frozen=True)
class LidarModel:
    """A LiDAR head: ``directions`` (R, 3) float32 unit rays in its frame, azimuth-major
    (ray ``a * channels + c`` is beam c at azimuth step a)."""

    channels: int
    azimuth_steps: int
    directions: np.ndarray

    @property
    def directions_rows(self) -> np.ndarray:
        """(3, R) float32 view-friendly copy of ``directions`` (one contiguous row per axis)."""
        return _rows(self.channels, self.azimuth_steps)

    @property
    def rays(self) -> int:
        return len(self.directions)


@lru_cache(maxsize=8)
def lidar_model(channels: int, azimuth_steps: int) -> LidarModel:
    """Ray directions of a ``channels``-beam head with ``azimuth_steps`` per revolution."""
    elev = beam_elevations(channels)
    az = 2 * np.pi * np.arange(azimuth_steps) / azimuth_steps
    ce, se = np.cos(elev)[None, :], np.sin(elev)[None, :]
    d = np.stack([np.cos(az)[:, None] * ce, np.sin(az)[:, None] * ce,
                  np.broadcast_to(se, (azimuth_steps, channels))], -1)
    d = d.reshape(-1, 3).astype(np.float32)
    d.setflags(write=False)
    return LidarModel(channels=channels, azimuth_steps=azimuth_steps, directions=d)


@lru_cache(maxsize=8)
def _rows(channels: int, azimuth_steps: int) -> np.ndarray:
    rows = np.ascontiguousarray(lidar_model(channels, azimuth_steps).directions.T)
    rows.setflags(write=False)
    return rows


def rotate_rows(rows: np.ndarray, rotation: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Rotate directions given as rows (3, R) by ``rotation`` (3, 3) into ``out`` (3, R).

    Row by row (no BLAS: a 3-wide product is memory-bound and threaded BLAS only adds contention).
    """
    r = rotation.astype(np.float32)
    for i in range(3):
        np.multiply(rows[0], r[i, 0], out=out[i])
        for j in (1, 2):
            if r[i, j] != 0:
                out[i] += rows[j] * r[i, j]
    return out


def lidar_returns(hits: Hits, local_rows: np.ndarray, own_object: np.ndarray, cfg: LidarConfig,
                  rng: np.random.Generator, dropout: float | None = None, ray_index: np.ndarray | None = None,
                  offsets: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Turn the hits of the first G ray groups of ``hits.rays`` (the LiDARs, G = len(own_object))
    into LiDAR points.

    local_rows: (3, L) float32 unit direction of each ray in the frame its points are reported
    in, one row per axis; ray_index: (R,) int column of ``local_rows`` of each LiDAR ray
    (default: ray i is column i),
    so a caller that cast a subset of its rays needs no copy of the table; offsets: (G, 3) the
    sensor origin in that frame (default 0): point = offset + direction * measured range.
    own_object: (G,) object index of the vehicle carrying each LiDAR (its hits are dropped; < 0
    for none). dropout: probability of losing a return (default ``cfg.dropout``; 0 when the
    caller dropped rays before casting, which gives the same distribution for less work).

    Returns points (H, 4) float32 ``x, y, z, intensity``, their group (H,) int64 (ascending) and
    the object index (H,) of each point (NO_OBJECT off road users).
    """
    groups = len(own_object)
    starts = np.asarray(hits.rays.starts[:groups + 1], np.int64)
    n = int(starts[-1])
    t = hits.t[:n]
    p = cfg.dropout if dropout is None else dropout
    intensity = _intensity(hits, n, cfg)
    keep = t <= np.float32(cfg.range)  # inf (a miss) fails too
    keep &= t >= np.float32(cfg.min_range)
    keep &= intensity >= np.float32(cfg.min_intensity)
    if p > 0:
        keep &= rng.random(n, dtype=np.float32) >= p
    idx = np.flatnonzero(keep)
    obj = hits.tables.object_index(np.take(hits.surface_ids, idx))
    bounds = np.searchsorted(idx, starts)
    idx, obj, bounds = _drop_own(idx, obj, bounds, own_object)
    tv = np.take(t, idx)
    if cfg.noise_std > 0:
        tv += np.float32(cfg.noise_std) * rng.standard_normal(len(idx), dtype=np.float32)
    rows = idx if ray_index is None else np.take(ray_index, idx)
    points = np.empty((len(idx), 4), np.float32)
    for j in range(3):  # 1-D column writes: several times faster than (H, 3) blocks
        np.multiply(np.take(local_rows[j], rows), tv, out=points[:, j])
    np.minimum(np.take(intensity, idx), np.float32(1.0), out=points[:, 3])
    if offsets is not None:
        for g in np.flatnonzero(np.any(offsets != 0, axis=1)):
            for j in range(3):
                points[bounds[g]:bounds[g + 1], j] += np.float32(offsets[g][j])
    agent = np.repeat(np.arange(groups, dtype=np.int64), np.diff(bounds))
    return points, agent, obj


def _intensity(hits: Hits, n: int, cfg: LidarConfig) -> np.ndarray:
    """(n,) float32 ``reflectivity * |cos incidence| * exp(-attenuation * range)`` of rays 0..n-1
    (0 on a miss; the range is capped at ``cfg.range``, beyond which returns are dropped)."""
    intensity = np.minimum(hits.t[:n], np.float32(cfg.range))  # in place below: few temporaries
    intensity *= np.float32(-cfg.attenuation)
    np.exp(intensity, out=intensity)
    intensity *= np.take(hits.tables.reflectivity, hits.surface_ids[:n], mode="clip")
    intensity *= hits.cos_incidence(n)
    return intensity


def _drop_own(idx: np.ndarray, obj: np.ndarray, bounds: np.ndarray, own_object: np.ndarray):
    """Remove the returns of group g on its own vehicle ``own_object[g]``; the per-group bounds
    (G + 1,) of ``idx`` are updated."""
    bad = np.zeros(len(idx), bool)
    for g, own in enumerate(own_object):
        if own >= 0:
            bad[bounds[g]:bounds[g + 1]] = obj[bounds[g]:bounds[g + 1]] == own
    if not bad.any():
        return idx, obj, bounds
    removed = np.concatenate([[0], np.cumsum(bad)])[bounds]
    good = ~bad
    return idx[good], obj[good], bounds - removed
