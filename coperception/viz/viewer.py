"""An interactive Open3D point viewer, used only when a display exists."""

from __future__ import annotations

import logging
import os

import numpy as np

from coperception.viz.bev import AGENT_COLOURS

log = logging.getLogger(__name__)


def show_points(points_per_agent) -> bool:
    """Open an Open3D window with each agent's (P, >=3) points in its colour; False without a display."""
    if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        log.warning("no display: skipping the Open3D viewer (the PNG was written)")
        return False
    import open3d as o3d

    clouds = []
    for i, pts in enumerate(points_per_agent):
        cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.asarray(pts)[:, :3].astype(np.float64)))
        cloud.paint_uniform_color(AGENT_COLOURS[i % len(AGENT_COLOURS)] / 255.0)
        clouds.append(cloud)
    o3d.visualization.draw_geometries(clouds)
    return True
