"""Camera inputs of cooperative samples: which agent senses with what, images, calibrations, depth.

Heterogeneous collaboration as in HEAL (Lu et al., "An Extensible Framework for Open Heterogeneous
Collaborative Perception", ICLR 2024): each agent is LiDAR-only, camera-only or both. The
assignment is by agent kind (vehicle / infrastructure, the ego optionally fixed), or a seeded
random draw per (scenario, agent) with given shares, stable across frames, epochs and worker
processes (HEAL's ``modality_assign``).

Per sample, each camera agent's images are resized to one size (bilinear with antialiasing, the
filter of :func:`~coperception.encoders.camera.camera_batch`) and kept as uint8; the **original**
intrinsics and the resize factors travel with them (the :class:`CameraBatch` convention).
Depth targets for lift-splat's depth head (Philion & Fidler, "Lift, Splat, Shoot", ECCV 2020;
LiDAR depth supervision as in BEVDepth and HEAL) are sparse depth images: the agent's LiDAR points
projected into each resized image, nearest camera-frame z per pixel, 0 where none. They are made
before a camera-only agent's points are dropped, so no LiDAR reaches that agent's features.

Augmentation. The dataset's global transform ``G`` (flip, rotate, scale of every agent frame) is
composed onto the extrinsics, ``lidar_from_camera' = G @ lidar_from_camera``; images stay as they
are. A frustum point of pixel (u, v) at depth d then lands where ``G`` moves the 3D point it
images, so camera features, points and boxes stay consistent. The result is affine (a mirror
when flipped, scaled), which :func:`~coperception.encoders.lss.lift_points` applies as is;
camera-frame depths, hence the depth targets, are unchanged by ``G``.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, replace
from typing import Literal, Sequence

import numpy as np
import torch

from coperception.structures.records import AgentObservation
from coperception.structures.camera import IMAGE_MEAN, IMAGE_STD, CameraBatch, CameraSample
from coperception.errors import ConfigError, FormatError

Modality = Literal["lidar", "camera", "lidar_camera"]
MODALITIES: tuple[str, ...] = ("lidar", "camera", "lidar_camera")
#: Points nearer than this to a camera (metres along its optical axis) give no depth target.
MIN_DEPTH = 0.1


@dataclass(frozen=True)
class ModalityConfig:
    """Which sensors each agent uses, and the camera input size.

    vehicle / infrastructure: modality of each agent kind ("lidar", "camera", "lidar_camera").
    ego: the ego's modality, overriding its kind or draw (None: no override).
    shares: (lidar, camera, lidar_camera) weights of a random draw per (scenario, agent), seeded
        by ``seed``; when set, it replaces ``vehicle`` / ``infrastructure``.
    image_hw: (H, W) pixels every image is resized to (a multiple of the image backbone stride).
    depth_targets: also make sparse LiDAR depth images for the depth loss.
    """

    vehicle: Modality = "lidar"
    infrastructure: Modality = "lidar"
    ego: Modality | None = None
    shares: tuple[float, float, float] | None = None
    seed: int = 0
    image_hw: tuple[int, int] = (240, 320)
    depth_targets: bool = True

    def __post_init__(self) -> None:
        for name in ("vehicle", "infrastructure", "ego"):
            value = getattr(self, name)
            if value is not None and value not in MODALITIES:
                raise ConfigError(f"modality.{name} must be one of {MODALITIES}, got {value!r}")
        if len(self.image_hw) != 2 or min(self.image_hw) < 8:
            raise ConfigError(f"modality.image_hw must be (H, W) of at least 8 pixels, got {self.image_hw}")
        if self.shares is not None:
            if len(self.shares) != 3 or min(self.shares) < 0 or sum(self.shares) <= 0:
                raise ConfigError(f"modality.shares must be 3 weights >= 0 (lidar, camera, lidar_camera) with a "
                                  f"positive sum, got {self.shares}")

    @property
    def possible(self) -> set[str]:
        """Every modality some agent may get."""
        if self.shares is not None:
            out = {m for m, w in zip(MODALITIES, self.shares) if w > 0}
        else:
            out = {self.vehicle, self.infrastructure}
        return out | ({self.ego} if self.ego is not None else set())

    @property
    def uses_cameras(self) -> bool:
        return any("camera" in m for m in self.possible)

    def of(self, scenario: str, agent: AgentObservation, is_ego: bool) -> str:
        """The modality of ``agent`` in ``scenario`` (the same in every frame of the scenario)."""
        if is_ego and self.ego is not None:
            return self.ego
        if self.shares is None:
            return self.infrastructure if agent.is_infrastructure else self.vehicle
        key = [self.seed, zlib.crc32(scenario.encode()), zlib.crc32(str(agent.agent_id).encode())]
        u = np.random.default_rng(key).random()
        cum = np.cumsum(self.shares) / sum(self.shares)
        return MODALITIES[int(np.searchsorted(cum, u, side="right").clip(max=2))]

    def assign(self, scenario: str, agents: Sequence[AgentObservation]) -> tuple[np.ndarray, np.ndarray]:
        """(A,) bool has_lidar and (A,) bool has_camera of ``agents`` (ego first)."""
        kinds = [self.of(scenario, a, i == 0) for i, a in enumerate(agents)]
        return (np.array(["lidar" in k for k in kinds], dtype=bool),
                np.array(["camera" in k for k in kinds], dtype=bool))


def _resize(image: np.ndarray, image_hw: tuple[int, int]) -> np.ndarray:
    """(H0, W0, 3) uint8 -> (H, W, 3) uint8, bilinear with antialiasing.

    PIL's filter, which torch's ``antialias=True`` reproduces (within one grey level), on uint8
    directly: 2.4x faster than torch on one thread for 400 x 300 -> 320 x 240.
    """
    if image.shape[:2] == tuple(image_hw):
        return image
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((image_hw[1], image_hw[0]), Image.BILINEAR))


def _check_image(image, where: str, agent_id: str, name: str) -> np.ndarray:
    if image is None:
        raise FormatError(f"{where}: camera agent {agent_id} has no image for {name} (open the reader with "
                          f"load_cameras=True)")
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise FormatError(f"{where}: agent {agent_id} {name} must be an (H, W, 3) uint8 image, "
                          f"got {image.dtype} {image.shape}")
    return image


def load_cameras(agents: Sequence[AgentObservation], has_camera: np.ndarray, image_hw: tuple[int, int],
                 where: Sequence[str]) -> dict[str, torch.Tensor]:
    """Images, calibrations and mask of the camera agents (others stay padding).

    where: one source description per agent (e.g. its folder) for error messages.
    Returns images, intrinsics, lidar_from_camera, image_scale, camera_mask as in :class:`CameraSample`.
    """
    for agent, uses, source in zip(agents, has_camera, where):
        if uses and not agent.cameras:
            raise FormatError(f"{source}: agent {agent.agent_id} uses cameras but its frame has no camera images "
                              f"(generate the data with cameras, e.g. `coperception generate --cameras`)")
    a, n = len(agents), max([len(o.cameras) for o, u in zip(agents, has_camera) if u] + [1])
    H, W = image_hw
    out = dict(images=torch.zeros(a, n, 3, H, W, dtype=torch.uint8), intrinsics=torch.eye(3).repeat(a, n, 1, 1),
               lidar_from_camera=torch.eye(4).repeat(a, n, 1, 1), image_scale=torch.ones(a, n, 2),
               camera_mask=torch.zeros(a, n, dtype=torch.bool))
    for i in np.flatnonzero(has_camera):  # a handful of agents and cameras: per-image resize is the unit
        cams = agents[i].cameras
        imgs = [_check_image(c.image, where[i], agents[i].agent_id, c.name) for c in cams]
        k = len(cams)
        out["images"][i, :k] = torch.from_numpy(np.stack([_resize(im, image_hw) for im in imgs])).permute(0, 3, 1, 2)
        out["intrinsics"][i, :k] = torch.from_numpy(np.stack([c.intrinsic for c in cams]).astype(np.float32))
        out["lidar_from_camera"][i, :k] = torch.from_numpy(np.stack([c.lidar_from_camera for c in cams])
                                                           .astype(np.float32))
        hw0 = torch.tensor([im.shape[:2] for im in imgs], dtype=torch.float32)
        out["image_scale"][i, :k] = torch.stack([W / hw0[:, 1], H / hw0[:, 0]], dim=1)
        out["camera_mask"][i, :k] = True
    return out


def depth_images(points: torch.Tensor, intrinsics: torch.Tensor, lidar_from_camera: torch.Tensor,
                 image_hw: tuple[int, int]) -> torch.Tensor:
    """Sparse depth images of one agent's cameras from its LiDAR points.

    points: (P, >=3) LiDAR frame, metres; intrinsics: (n, 3, 3) K of the **resized** images;
    lidar_from_camera: (n, 4, 4); image_hw: (H, W). Returns (n, H, W) float32: the smallest
    camera-frame z (metres) of the points projecting into each pixel, 0 where none does.
    """
    n, (H, W) = len(intrinsics), image_hw
    nearest = torch.full((n * H * W,), float("inf"))
    if n and len(points):
        cam_from_lidar = torch.linalg.inv(lidar_from_camera.double()).float()
        xyz = points[:, :3].float()
        p = torch.einsum("nij,pj->npi", cam_from_lidar[:, :3, :3], xyz) + cam_from_lidar[:, None, :3, 3]
        z = p[..., 2]
        uvw = torch.einsum("nij,npj->npi", intrinsics.float(), p)
        front = z > MIN_DEPTH
        u = torch.floor(uvw[..., 0] / z.clamp(min=MIN_DEPTH))
        v = torch.floor(uvw[..., 1] / z.clamp(min=MIN_DEPTH))
        ok = front & (u >= 0) & (u < W) & (v >= 0) & (v < H)
        cam = torch.arange(n).view(n, 1).expand_as(z)
        flat = (cam * H + v.long().clamp(0, H - 1)) * W + u.long().clamp(0, W - 1)
        nearest.scatter_reduce_(0, flat[ok], z[ok], "amin")
    return torch.where(torch.isfinite(nearest), nearest, torch.zeros(())).view(n, H, W)


def sample_depth(clouds: Sequence[torch.Tensor], cams: dict[str, torch.Tensor],
                 image_hw: tuple[int, int]) -> torch.Tensor:
    """(A, N, H, W) depth images of every agent's real cameras (0 on padding) from its own cloud."""
    a, n = cams["camera_mask"].shape
    depth = torch.zeros(a, n, *image_hw)
    scaled = cams["intrinsics"] * torch.cat([cams["image_scale"], torch.ones(a, n, 1)], dim=-1).unsqueeze(-1)
    for i in cams["camera_mask"].any(dim=1).nonzero()[:, 0].tolist():
        k = int(cams["camera_mask"][i].sum())
        depth[i, :k] = depth_images(clouds[i], scaled[i, :k], cams["lidar_from_camera"][i, :k], image_hw)
    return depth


def collate_cameras(parts: Sequence[CameraSample]) -> tuple[CameraBatch, torch.Tensor | None, torch.Tensor,
                                                             torch.Tensor]:
    """Stack samples' cameras along agents, padded to the batch's most cameras per agent.

    Returns the :class:`CameraBatch` (images as float, normalised by IMAGE_MEAN / IMAGE_STD, zero on
    padding, as :func:`~coperception.encoders.camera.camera_batch`), the
    (A, N, H, W) depth images (None unless every sample has them), has_lidar (A,) and has_camera (A,).
    """
    sizes = {tuple(p.images.shape[-2:]) for p in parts}
    if len(sizes) != 1:
        raise ValueError(f"samples have different camera image sizes {sorted(sizes)}")
    n = max(p.images.shape[1] for p in parts)

    def pad(name: str, fill: torch.Tensor | None = None) -> torch.Tensor:
        out = []
        for p in parts:
            x = getattr(p, name)
            extra = n - x.shape[1]
            if extra:
                filler = (torch.zeros(x.shape[0], extra, *x.shape[2:], dtype=x.dtype) if fill is None
                          else fill.to(x.dtype).expand(x.shape[0], extra, *x.shape[2:]))
                x = torch.cat([x, filler], dim=1)
            out.append(x)
        return torch.cat(out, dim=0)

    std = torch.tensor(IMAGE_STD).view(1, 1, 3, 1, 1)
    offset = -torch.tensor(IMAGE_MEAN).view(1, 1, 3, 1, 1) / std
    mask = pad("camera_mask")
    images = pad("images").float().mul_(1.0 / (255.0 * std)).add_(offset)  # (x / 255 - mean) / std, in place
    images[~mask] = 0.0
    batch = CameraBatch(images, pad("intrinsics", torch.eye(3)), pad("lidar_from_camera", torch.eye(4)),
                        pad("image_scale", torch.ones(2)), mask)
    depth = pad("depth") if all(p.depth is not None for p in parts) else None
    return (batch, depth, torch.cat([p.has_lidar for p in parts]), torch.cat([p.has_camera for p in parts]))
