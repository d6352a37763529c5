"""Pinhole cameras rendered by ray casting: one ray per pixel, Lambert shading, sky and haze.

The rig copies OPV2V's four cameras (front, right, left, back; yaw 0, -100, +100, 180 deg in the
right-handed frame) mounted just below the LiDAR. Intrinsics are ideal pinhole
``fx = fy = W / (2 tan(fov / 2))``, principal point at the image centre. Camera frames use
OpenCV axes (x right, y down, z forward); depth is the metric z of the hit in that frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from coperception.geometry.pose import se3_from_xyz_rpy
from coperception.sim.config import CameraConfig
from coperception.sim.raycast import Hits

CAMERA_YAWS_DEG = (0.0, -100.0, 100.0, 180.0)
#: Camera (OpenCV) axes expressed in the LiDAR frame: x right = -y, y down = -z, z forward = x.
LIDAR_FROM_OPENCV = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
_SUN = np.array([0.4, 0.3, 0.85]) / np.linalg.norm([0.4, 0.3, 0.85])
_SKY_TOP = np.array([110.0, 160.0, 230.0])
_SKY_HORIZON = np.array([205.0, 220.0, 240.0])


@dataclass(frozen=True)
class CameraRig:
    """Cameras of one agent: names (K,), intrinsic (3, 3), lidar_from_camera (K, 4, 4),
    pixel rays in the camera frame (H*W, 3) unit, row-major."""

    names: tuple[str, ...]
    intrinsic: np.ndarray
    lidar_from_camera: np.ndarray
    pixel_dirs: np.ndarray
    width: int
    height: int

    @property
    def pixel_rows(self) -> np.ndarray:
        """(3, H*W) float32 pixel rays, one contiguous row per axis."""
        return np.ascontiguousarray(self.pixel_dirs.T)

    @property
    def rays(self) -> int:
        return len(self.names) * len(self.pixel_dirs)


@lru_cache(maxsize=4)
def camera_rig(cfg: CameraConfig) -> CameraRig:
    """The rig for ``cfg`` (cached: frozen configs hash)."""
    w, h = cfg.width, cfg.height
    f = w / (2 * np.tan(np.radians(cfg.fov_deg) / 2))
    k = np.array([[f, 0, w / 2], [0, f, h / 2], [0, 0, 1.0]])
    u, v = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    d = np.stack([(u - w / 2) / f, (v - h / 2) / f, np.ones_like(u)], -1).reshape(-1, 3)
    d = (d / np.linalg.norm(d, axis=1, keepdims=True)).astype(np.float32)
    names = tuple(f"camera{i}" for i in range(cfg.count))
    return CameraRig(names=names, intrinsic=k, lidar_from_camera=camera_mounts(cfg.count), pixel_dirs=d,
                     width=w, height=h)


def camera_mounts(count: int, body: tuple[float, float, float, float] | None = None) -> np.ndarray:
    """(count, 4, 4) ``lidar_from_camera`` of the rig's cameras.

    body: ``(length, width, height, lidar_height)`` of the carrying vehicle (m): each camera sits
    10 cm outside the body where its viewing direction leaves it, 10 cm below the roof, so that it
    does not look at its own vehicle (like OPV2V's bumper and mirror cameras). None (a road-side
    unit): all cameras at the LiDAR, looking level.
    """
    mounts = []
    for yaw in np.radians(CAMERA_YAWS_DEG[:count]):
        c, s = np.cos(yaw), np.sin(yaw)
        if body is None:
            x = y = z = 0.0
        else:
            length, width, height, lidar_z = body
            reach = min(length / 2 / max(abs(c), 1e-9), width / 2 / max(abs(s), 1e-9)) + 0.1
            x, y, z = reach * c, reach * s, height - 0.1 - lidar_z
        m = se3_from_xyz_rpy(x, y, z, yaw=yaw)
        m[:3, :3] = m[:3, :3] @ LIDAR_FROM_OPENCV
        mounts.append(m)
    return np.stack(mounts)


def camera_groups(mounts: np.ndarray, world_from_lidar: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """(origin (3,), rotation (3, 3) world_from_camera) of each camera (mounts (K, 4, 4))."""
    out = []
    for m in mounts:
        world_from_cam = world_from_lidar @ m
        out.append((world_from_cam[:3, 3], world_from_cam[:3, :3]))
    return out


def render(rig: CameraRig, hits: Hits, sl: slice, max_depth: float = 250.0
           ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Images (H, W, 3) uint8 and depths (H, W) float32 (0 = sky) of one agent's cameras from the
    hits of rays ``sl`` (its cameras' pixel rays, camera after camera, row-major)."""
    d = hits.rays.dirs[:, sl].T.astype(np.float64)
    t_all = hits.t[sl]
    hit = np.isfinite(t_all) & (t_all < max_depth)
    _, _, color, n = hits.surface(sl)
    # Element-wise, not ``n @ _SUN``: a BLAS call spins up OpenBLAS threads that then compete
    # with Embree's for the cores.
    lambert = np.clip(n[:, 0] * _SUN[0] + n[:, 1] * _SUN[1] + n[:, 2] * _SUN[2], 0.0, 1.0)
    base = color.astype(np.float64) * (0.45 + 0.55 * lambert)[:, None]
    t = np.where(hit, t_all, 0.0)
    haze = (1 - np.exp(-t / 400.0))[:, None]
    up = np.clip(d[:, 2], 0.0, 1.0)[:, None]
    sky = _SKY_HORIZON * (1 - up) + _SKY_TOP * up
    rgb = np.where(hit[:, None], base * (1 - haze) + sky * haze, sky)
    z = np.tile(rig.pixel_dirs[:, 2], len(rig.names)) * t
    hw = (rig.height, rig.width)
    per = len(rig.pixel_dirs)
    images = [np.clip(rgb[k * per:(k + 1) * per], 0, 255).astype(np.uint8).reshape(*hw, 3)
              for k in range(len(rig.names))]
    depths = [z[k * per:(k + 1) * per].astype(np.float32).reshape(hw) for k in range(len(rig.names))]
    return images, depths
