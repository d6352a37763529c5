"""Bird's-eye-view renders: every agent's points (one colour per agent), ground truth and
predicted boxes, agent positions, written as PNG.

Pure numpy rasterisation for the points (one fancy-index assignment, no per-point Python) and
PIL for box outlines, so a frame renders in milliseconds without a display.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from coperception.geometry.boxes import boxes_to_bev_corners

#: Distinct colours for agents 0, 1, 2, ... (ego first), RGB.
AGENT_COLOURS = np.array([
    (90, 170, 255), (255, 170, 60), (120, 220, 120), (230, 110, 220), (240, 230, 90),
    (110, 230, 230), (255, 120, 120), (180, 180, 180),
], dtype=np.uint8)
GT_COLOUR = (60, 255, 60)
PRED_COLOUR = (255, 60, 60)


@dataclass(frozen=True)
class View:
    """The rendered window in the ego frame: x/y extents (metres) and resolution (metres/pixel)."""

    x_range: tuple[float, float] = (-70.0, 70.0)
    y_range: tuple[float, float] = (-40.0, 40.0)
    resolution: float = 0.1

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels; x grows to the right, y grows upwards."""
        w = int(round((self.x_range[1] - self.x_range[0]) / self.resolution))
        h = int(round((self.y_range[1] - self.y_range[0]) / self.resolution))
        return w, h

    def to_pixels(self, xy: np.ndarray) -> np.ndarray:
        """(..., 2) metres -> (..., 2) float pixel (column, row)."""
        col = (xy[..., 0] - self.x_range[0]) / self.resolution
        row = (self.y_range[1] - xy[..., 1]) / self.resolution
        return np.stack([col, row], axis=-1)


def _draw_points(canvas: np.ndarray, view: View, points: np.ndarray, colour: np.ndarray) -> None:
    px = np.floor(view.to_pixels(points[:, :2])).astype(np.int64)
    h, w = canvas.shape[:2]
    ok = (px[:, 0] >= 0) & (px[:, 0] < w) & (px[:, 1] >= 0) & (px[:, 1] < h)
    canvas[px[ok, 1], px[ok, 0]] = colour


def _draw_boxes(draw: ImageDraw.ImageDraw, view: View, boxes: np.ndarray, colour, width: int) -> None:
    if len(boxes) == 0:
        return
    corners = view.to_pixels(np.asarray(boxes_to_bev_corners(np.asarray(boxes, dtype=np.float64))))
    for quad in corners:
        pts = [tuple(p) for p in quad]
        draw.line(pts + [pts[0]], fill=colour, width=width)
        draw.line([pts[0], pts[1]], fill=(255, 255, 255), width=width)  # front edge (+x side)


def render_bev(points_per_agent: Sequence[np.ndarray], *, gt_boxes: np.ndarray | None = None,
               pred_boxes: np.ndarray | None = None, agent_xy: np.ndarray | None = None,
               view: View = View()) -> Image.Image:
    """Render one frame in the ego frame.

    points_per_agent: sequence of (P_i, >=2) arrays already in the ego frame (ego first).
    gt_boxes / pred_boxes: (N, 7) boxes in the ego frame. agent_xy: (A, 2) agent positions.
    """
    w, h = view.size
    canvas = np.zeros((h, w, 3), dtype=np.uint8)
    for i, pts in enumerate(points_per_agent):
        _draw_points(canvas, view, np.asarray(pts), AGENT_COLOURS[i % len(AGENT_COLOURS)])
    image = Image.fromarray(canvas)
    draw = ImageDraw.Draw(image)
    width = max(1, int(round(0.15 / view.resolution)))
    if gt_boxes is not None:
        _draw_boxes(draw, view, gt_boxes, GT_COLOUR, width)
    if pred_boxes is not None:
        _draw_boxes(draw, view, pred_boxes, PRED_COLOUR, width)
    if agent_xy is not None:
        r = max(3, int(round(1.5 / view.resolution)))
        for i, (c, rr) in enumerate(view.to_pixels(np.asarray(agent_xy, dtype=np.float64))):
            colour = tuple(int(v) for v in AGENT_COLOURS[i % len(AGENT_COLOURS)])
            draw.ellipse([c - r, rr - r, c + r, rr + r], outline=colour, width=width)
    return image


def save_png(image: Image.Image, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path
