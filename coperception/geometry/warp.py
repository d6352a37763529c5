"""Warp each agent's BEV feature map into the ego's BEV frame.

Intermediate fusion (F-Cooper, AttFuse of "OPV2V: An Open Benchmark Dataset and Fusion Pipeline
for Perception with Vehicle-to-Vehicle Communication", Where2comm, ...) needs every agent's map
on the ego's cells. A map lives on the cells of a :class:`~coperception.geometry.grid.BEVGrid` at a
``stride``: cell ``(r, c)`` has its centre at ``(xmin + (c + .5) * sx, ymin + (r + .5) * sy)`` with
``(sx, sy) = grid.cell_size(stride)``, rows index y and columns x. Only the planar (SE(2)) part of
``ego_from_agent`` is used: the x/y translation and the yaw of the rotation's x axis.

For every ego cell centre ``p_e`` the agent's map is sampled at ``p_a = R(yaw)^T (p_e - t)``, the
same point in the agent's frame. With ``align_corners=False`` and normalised coordinates spanning
the map's extent ``[xmin, xmin + W * sx]`` the whole resampling is one affine map per agent, so
all agents go through a single ``affine_grid`` + ``grid_sample`` call. Agents whose transform is
(numerically) the identity -- the ego itself -- are passed through bit for bit instead of being
resampled, because float rounding in ``grid_sample``'s un-normalisation would otherwise perturb
them by ~1e-7. On the CPU, where reading the poses costs nothing, a batch in which every
transform is the identity (``agent_frame: ego``, OpenCOOD's ``proj_first``, or ego-only batches)
skips ``grid_sample`` altogether. (Resampling only the moved agents of a mixed batch, or
translating by separable ``lerp`` passes, measured slower on the CPU: the extra gather/scatter
passes over the maps cost more than the resampling they save.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from coperception.errors import ConfigError
from coperception.geometry.grid import BEVGrid

#: Sampling modes accepted by :func:`warp_to_ego`.
WARP_MODES: tuple[str, ...] = ("bilinear", "nearest")

# An agent is passed through untouched when its transform moves no ego cell centre by more
# than this fraction of a cell.
_IDENTITY_TOL_CELLS = 1e-4


def _check_inputs(features: torch.Tensor, ego_from_agent: torch.Tensor, grid: BEVGrid, stride: int,
                  mode: str) -> None:
    if features.ndim != 4:
        raise ValueError(f"features must be (A, C, H, W), got shape {tuple(features.shape)}")
    if tuple(ego_from_agent.shape) != (features.shape[0], 4, 4):
        raise ValueError(f"ego_from_agent must be ({features.shape[0]}, 4, 4) to match features, "
                         f"got shape {tuple(ego_from_agent.shape)}")
    if int(stride) < 1:
        raise ConfigError(f"stride must be >= 1, got {stride}")
    expected = grid.feature_shape(int(stride))
    if tuple(features.shape[-2:]) != expected:
        raise ConfigError(f"feature map of spatial shape {tuple(features.shape[-2:])} does not match grid "
                          f"{grid.lidar_range} / voxel {grid.voxel_size} at stride {stride}: expected {expected}")
    if mode not in WARP_MODES:
        raise ConfigError(f"warp mode must be one of {WARP_MODES}, got {mode!r}")


def planar_pose(ego_from_agent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SE(2) part of (A, 4, 4) transforms -> translations (A, 2) metres and yaws (A,) radians."""
    yaw = torch.atan2(ego_from_agent[:, 1, 0], ego_from_agent[:, 0, 0])
    return ego_from_agent[:, :2, 3], yaw


def sampling_theta(ego_from_agent: torch.Tensor, grid: BEVGrid, stride: int, hw: tuple[int, int]) -> torch.Tensor:
    """(A, 2, 3) ``affine_grid`` matrices mapping normalised ego coords to normalised agent coords.

    With ``D = diag(W*sx/2, H*sy/2)`` (half the map extent), ``m`` the map centre in metres and
    ``u`` normalised coordinates (``p = D u + m``), the agent point of ego point ``p_e`` is
    ``R^T (p_e - t)``, so ``u_a = D^-1 R^T D u_e + D^-1 (R^T (m - t) - m)``. Computed in float64.
    """
    h, w = hw
    sx, sy = grid.cell_size(int(stride))
    half_x, half_y = w * sx / 2.0, h * sy / 2.0
    mx, my = grid.lidar_range[0] + half_x, grid.lidar_range[1] + half_y  # map centre, metres
    # Python-float constants only: no host-to-device copies (and so no stream syncs) per call.
    t, yaw = planar_pose(ego_from_agent.to(torch.float64))
    cos, sin = torch.cos(yaw), torch.sin(yaw)
    dx, dy = mx - t[:, 0], my - t[:, 1]
    row_x = torch.stack([cos, sin * (half_y / half_x), (cos * dx + sin * dy - mx) / half_x], dim=-1)
    row_y = torch.stack([-sin * (half_x / half_y), cos, (-sin * dx + cos * dy - my) / half_y], dim=-1)
    return torch.stack([row_x, row_y], dim=1)


def identity_agents(ego_from_agent: torch.Tensor, grid: BEVGrid, stride: int) -> torch.Tensor:
    """(A,) bool: transforms that move no point of the grid by more than 1e-4 cell."""
    t, yaw = planar_pose(ego_from_agent.to(torch.float64))
    sx, sy = grid.cell_size(int(stride))
    shift = torch.sqrt((t[:, 0] / sx) ** 2 + (t[:, 1] / sy) ** 2)
    xmin, ymin, _, xmax, ymax, _ = grid.lidar_range
    # A yaw moves a point (x, y) by yaw * (-y, x): bound that, in cells, over the whole range.
    reach = (max(abs(xmin), abs(xmax)) + max(abs(ymin), abs(ymax))) / min(sx, sy) + 1.0
    return (shift + yaw.abs() * reach) <= _IDENTITY_TOL_CELLS


def _sample(x: torch.Tensor, theta: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One ``grid_sample`` over all agents -> (warped like ``x``, sampling grid (A, H, W, 2)).

    Runs in float32 at least: a half-precision sampling grid is off by up to ~0.3 cell.
    """
    work = x if x.dtype in (torch.float32, torch.float64) else x.float()
    sampling = F.affine_grid(theta.to(work.dtype), list(work.shape), align_corners=False)
    out = F.grid_sample(work, sampling, mode=mode, padding_mode="zeros", align_corners=False)
    return out.to(x.dtype), sampling


def _inside(sampling: torch.Tensor) -> torch.Tensor:
    """(A, H, W, 2) normalised sample points -> (A, 1, H, W) bool: inside the map's extent ([-1, 1])."""
    return (sampling.abs() <= 1.0 + 1e-6).all(dim=-1)[:, None]


def warp_with_valid(features: torch.Tensor, ego_from_agent: torch.Tensor, grid: BEVGrid, stride: int,
                    mode: str = "bilinear", mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Warp maps into the ego frame and say which ego cells each agent covers.

    features: (A, C, H, W), each agent's map in its own frame on ``grid`` at ``stride``.
    ego_from_agent: (A, 4, 4) right-handed transforms, metres (agent frame -> ego frame).
    mode: "bilinear" or "nearest"; samples outside an agent's map are zeros.
    mask: optional (A, 1, H, W) in each agent's own frame, 1 = cell sent / valid, 0 = not. The
        features are multiplied by it before warping (so a soft mask passes gradients) and it is
        warped with the same sampling.
    Returns ``(warped (A, C, H, W), valid (A, 1, H, W) bool)``: ``valid`` is true where the sample
    point lies inside the agent's map (half a cell beyond the outer centres, i.e. the map extent)
    and, with a mask, where the warped mask is >= 0.5. Identity-transform agents come back as the
    input (times the mask) exactly.
    """
    _check_inputs(features, ego_from_agent, grid, stride, mode)
    ego_from_agent = ego_from_agent.to(features.device)
    num, _, h, w = features.shape
    if mask is not None:
        if tuple(mask.shape) != (num, 1, h, w):
            raise ValueError(f"mask must be ({num}, 1, {h}, {w}), got shape {tuple(mask.shape)}")
        mask = mask.to(features.dtype)
        features = features * mask
    src = features if mask is None else torch.cat([features, mask], dim=1)
    keep = identity_agents(ego_from_agent, grid, stride)
    if src.device.type == "cpu" and bool(keep.all()):
        warped, inside = src, torch.ones((num, 1, h, w), dtype=torch.bool, device=src.device)
    else:
        theta = sampling_theta(ego_from_agent, grid, stride, (h, w))
        warped, sampling = _sample(src, theta, mode)
        warped = torch.where(keep[:, None, None, None], src, warped)
        inside = _inside(sampling) | keep[:, None, None, None]
    if mask is None:
        return warped, inside
    return warped[:, :-1], inside & (warped[:, -1:] >= 0.5)


def warp_to_ego(features: torch.Tensor, ego_from_agent: torch.Tensor, grid: BEVGrid, stride: int,
                mode: str = "bilinear") -> torch.Tensor:
    """(A, C, H, W) agent-frame maps -> (A, C, H, W) maps on the ego's cells (zeros outside).

    See :func:`warp_with_valid` for the conventions; this drops the validity mask.
    """
    return warp_with_valid(features, ego_from_agent, grid, stride, mode)[0]


def invert_rigid(transforms: torch.Tensor) -> torch.Tensor:
    """(N, 4, 4) rigid transforms -> inverses (exact for rotations)."""
    out = torch.zeros_like(transforms)
    rot_t = transforms[:, :3, :3].transpose(1, 2)
    out[:, :3, :3] = rot_t
    out[:, :3, 3] = -(rot_t @ transforms[:, :3, 3:]).squeeze(-1)
    out[:, 3, 3] = 1.0
    return out


def warp_maps(maps: torch.Tensor, target_from_source: torch.Tensor, grid: BEVGrid, stride: int) -> torch.Tensor:
    """(N, 1, H, W) maps in source frames -> target frames (nearest; 0 outside the source map)."""
    warped, valid = warp_with_valid(maps.float(), target_from_source, grid, stride, "nearest")
    return warped * valid
