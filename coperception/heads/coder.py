"""Residual box coding against anchors, and the direction-bin classifier's targets and decoding.

The encoding of VoxelNet (Zhou & Tuzel, "VoxelNet: End-to-End Learning for Point Cloud Based 3D
Object Detection") and SECOND as used by OpenCOOD/HEAL: with the anchor's BEV diagonal
``d_a = sqrt(l_a^2 + w_a^2)``,

    dx = (x - x_a) / d_a,  dy = (y - y_a) / d_a,  dz = (z - z_a) / h_a,
    dl = log(l / l_a),     dw = log(w / w_a),     dh = log(h / h_a),   dyaw = yaw - yaw_a.

The yaw residual is not wrapped (the regression loss compares ``sin`` of the difference, which
cannot tell a box from its 180-degree twin). SECOND's direction classifier recovers the heading:
with ``num_bins`` bins of width ``2*pi/num_bins`` starting at ``dir_offset``, the target is the bin
of the true yaw, and decoding moves the regressed yaw into the predicted bin (HEAL's
``dir_offset = 0.7853``, two bins).
"""

from __future__ import annotations

import math

import torch


def limit_period(x: torch.Tensor, offset: float = 0.5, period: float = 2 * math.pi) -> torch.Tensor:
    """Map ``x`` into ``[-offset*period, (1-offset)*period)``."""
    return x - torch.floor(x / period + offset) * period


def encode_boxes(boxes: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """boxes, anchors: (..., 7) ``[x, y, z, l, w, h, yaw]`` -> (..., 7) residuals (see module doc)."""
    diag = torch.hypot(anchors[..., 3], anchors[..., 4])
    return torch.stack([
        (boxes[..., 0] - anchors[..., 0]) / diag,
        (boxes[..., 1] - anchors[..., 1]) / diag,
        (boxes[..., 2] - anchors[..., 2]) / anchors[..., 5],
        torch.log(boxes[..., 3] / anchors[..., 3]),
        torch.log(boxes[..., 4] / anchors[..., 4]),
        torch.log(boxes[..., 5] / anchors[..., 5]),
        boxes[..., 6] - anchors[..., 6],
    ], dim=-1)


def decode_boxes(deltas: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`encode_boxes`: (..., 7) residuals and anchors -> (..., 7) boxes."""
    diag = torch.hypot(anchors[..., 3], anchors[..., 4])
    return torch.stack([
        deltas[..., 0] * diag + anchors[..., 0],
        deltas[..., 1] * diag + anchors[..., 1],
        deltas[..., 2] * anchors[..., 5] + anchors[..., 2],
        torch.exp(deltas[..., 3]) * anchors[..., 3],
        torch.exp(deltas[..., 4]) * anchors[..., 4],
        torch.exp(deltas[..., 5]) * anchors[..., 5],
        deltas[..., 6] + anchors[..., 6],
    ], dim=-1)


def direction_target(yaw: torch.Tensor, num_bins: int = 2, dir_offset: float = math.pi / 4) -> torch.Tensor:
    """yaw: (...) radians -> (...) int64 bin index in ``[0, num_bins)``."""
    width = 2 * math.pi / num_bins
    shifted = limit_period(yaw - dir_offset, 0.0, 2 * math.pi)
    return torch.floor(shifted / width).long().clamp(0, num_bins - 1)


def apply_direction(yaw: torch.Tensor, bins: torch.Tensor, num_bins: int = 2,
                    dir_offset: float = math.pi / 4) -> torch.Tensor:
    """Move regressed ``yaw`` (...) into the predicted direction ``bins`` (...); result in [-pi, pi)."""
    width = 2 * math.pi / num_bins
    within = limit_period(yaw - dir_offset, 0.0, width)
    return limit_period(within + dir_offset + width * bins.to(yaw.dtype), 0.5, 2 * math.pi)
