"""The static town: buildings, signal poles, the ground layer (roads, raised blocks, curbs, road
markings; see :mod:`coperception.sim.ground`), parked vehicles and the sidewalk loops
pedestrians walk on.

Blocks are the cells between road centre lines (plus a built-up band outside the ring road).
Each block is split into a random grid of lots; a lot gets a box building set back from the
sidewalk, so that buildings near junction corners hide the cross streets from an approaching
vehicle: the occlusion that makes collaboration worth having. Parked vehicles stand in the
parking lane at the curb and are labelled objects like moving ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from coperception.sim.config import TownConfig
from coperception.sim.ground import Ground
from coperception.sim.objects import CLASS_INDEX, sample_sizes
from coperception.sim.raycast import Mesh, box_mesh
from coperception.sim.roads import SIDE_VECTORS, RoadNetwork, build_road_network

METAL = (0.5, (90, 90, 95))
_FACADES = np.array([[150, 80, 60], [180, 175, 165], [100, 130, 160], [200, 185, 150], [120, 110, 100]], np.uint8)
CORNER_SIGNS = {"NE": (1, 1), "NW": (-1, 1), "SE": (1, -1), "SW": (-1, -1)}


@dataclass
class World:
    """Static part of a scenario.

    static: the mesh of buildings and poles; ground: roads, blocks and paint. parked_boxes: (N, 7) world boxes and
    parked_classes: (N,) class indices of parked vehicles. sidewalk_loops: (P, 4) rectangles
    ``xmin, ymin, xmax, ymax`` pedestrians walk around, at height CURB_HEIGHT.
    """

    town: TownConfig
    roads: RoadNetwork
    static: Mesh
    ground: Ground
    parked_boxes: np.ndarray
    parked_classes: np.ndarray
    sidewalk_loops: np.ndarray

    def corner_mount(self, junction: int, corner: str, inset: float = 1.0) -> tuple[np.ndarray, float]:
        """Sidewalk position (2,) at ``corner`` of ``junction`` and the yaw facing the junction."""
        sx, sy = CORNER_SIGNS[corner]
        d = self.town.road_half_width + inset
        xy = self.roads.centers[junction] + np.array([sx * d, sy * d])
        return xy, float(np.arctan2(-sy, -sx))


def _block_cells(roads: RoadNetwork, town: TownConfig) -> np.ndarray:
    """(K, 4) ``xmin, ymin, xmax, ymax`` of raised blocks: the cells between roads plus four
    bands around the ring road (north and south span the full width), tiling all non-road ground."""
    xs, ys = np.unique(roads.centers[:, 0]), np.unique(roads.centers[:, 1])
    hs, outer = town.road_half_width, town.sidewalk_width + town.outer_band
    lx, hx = xs[:-1] + hs, xs[1:] - hs
    ly, hy = ys[:-1] + hs, ys[1:] - hs
    gx, gy = np.meshgrid(np.arange(len(lx)), np.arange(len(ly)), indexing="ij")
    inner = np.stack([lx[gx.ravel()], ly[gy.ravel()], hx[gx.ravel()], hy[gy.ravel()]], 1)
    x0, x1, y0, y1 = xs[0] - hs - outer, xs[-1] + hs + outer, ys[0] - hs - outer, ys[-1] + hs + outer
    bands = np.array([[x0, ys[-1] + hs, x1, y1], [x0, y0, x1, ys[0] - hs],
                      [x0, ys[0] - hs, xs[0] - hs, ys[-1] + hs], [xs[-1] + hs, ys[0] - hs, x1, ys[-1] + hs]])
    cells = np.concatenate([inner, bands])
    return cells[(cells[:, 2] > cells[:, 0]) & (cells[:, 3] > cells[:, 1])]


def _buildings(cells: np.ndarray, town: TownConfig, rng: np.random.Generator) -> Mesh:
    """Box buildings on a random lot grid inside each block (inside its sidewalk)."""
    rects = []
    for x0, y0, x1, y1 in cells + np.array([1, 1, -1, -1]) * town.sidewalk_width:
        if x1 - x0 < 4 or y1 - y0 < 4:
            continue
        # Lots per side as drawn for a city block, more along the long outer bands.
        typical = max(town.block_size - 2 * (town.road_half_width + town.sidewalk_width), 10.0)
        scale = np.maximum(1, np.rint(np.array([x1 - x0, y1 - y0]) / typical)).astype(int)
        nx, ny = rng.integers(town.building_lots[0], town.building_lots[1] + 1, 2) * scale
        gx, gy = np.linspace(x0, x1, nx + 1), np.linspace(y0, y1, ny + 1)
        lo_x, lo_y = np.meshgrid(gx[:-1], gy[:-1], indexing="ij")
        hi_x, hi_y = np.meshgrid(gx[1:], gy[1:], indexing="ij")
        lots = np.stack([lo_x.ravel(), lo_y.ravel(), hi_x.ravel(), hi_y.ravel()], 1)
        on_edge = np.isclose(lots, [x0, y0, x1, y1])
        back = rng.uniform(*town.building_setback, lots.shape)
        gap = rng.uniform(0.5, 2.0, lots.shape)
        inset = np.where(on_edge, back, gap) * np.array([1, 1, -1, -1])
        rects.append(lots + inset)
    if not rects:
        return Mesh.empty()
    r = np.concatenate(rects)
    keep = (r[:, 2] - r[:, 0] >= 3.0) & (r[:, 3] - r[:, 1] >= 3.0) & (rng.random(len(r)) < town.building_fill)
    r = r[keep]
    h = rng.uniform(*town.building_height, len(r))
    centres = np.stack([(r[:, 0] + r[:, 2]) / 2, (r[:, 1] + r[:, 3]) / 2, h / 2], 1)
    sizes = np.stack([r[:, 2] - r[:, 0], r[:, 3] - r[:, 1], h], 1)
    color = _FACADES[rng.integers(0, len(_FACADES), len(r))]
    return box_mesh(centres, sizes, np.zeros(len(r)), rng.uniform(0.25, 0.7, len(r)), color)


def _segments(roads: RoadNetwork) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each road segment once: (midpoint (2,), unit direction east or north (2,))."""
    out = []
    for jid, c in enumerate(roads.centers):
        for side in (0, 1):  # N and E legs
            if roads.legs[jid, side]:
                out.append((c + SIDE_VECTORS[side] * roads.town.block_size / 2, SIDE_VECTORS[side]))
    return out


def _poles(roads: RoadNetwork, town: TownConfig) -> Mesh:
    """A 5.5 m signal pole at every sidewalk corner of every junction."""
    d = town.road_half_width + 0.4
    signs = np.array(list(CORNER_SIGNS.values()), np.float64)
    xy = (roads.centers[:, None] + signs[None] * d).reshape(-1, 2)
    centres = np.concatenate([xy, np.full((len(xy), 1), 2.75)], 1)
    return box_mesh(centres, np.tile([0.25, 0.25, 5.5], (len(xy), 1)), np.zeros(len(xy)), *METAL)


def _parked(roads: RoadNetwork, town: TownConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Vehicles in the curbside parking lanes, never within 8 m of a junction."""
    if town.parking_width < 2.1 or town.parked_density <= 0:
        return np.zeros((0, 7)), np.zeros(0, np.int64)
    spacing, seg_len = 6.8, town.segment_length
    along = np.arange(8.0 + spacing / 2, seg_len - 8.0 - spacing / 2 + 1e-6, spacing) - seg_len / 2
    boxes, classes = [], []
    for mid, d in _segments(roads):
        for direction in (d, -d):
            right = np.array([direction[1], -direction[0]])
            lateral = town.lanes_per_direction * town.lane_width + town.parking_width / 2
            keep = rng.random(len(along)) < town.parked_density
            n = int(keep.sum())
            cls = np.where(rng.random(n) < 0.85, CLASS_INDEX["car"], CLASS_INDEX["van"])
            size = sample_sizes(cls, rng)
            xy = mid + along[keep, None] * d + right * (lateral + rng.uniform(-0.1, 0.1, (n, 1)))
            yaw = np.arctan2(direction[1], direction[0]) + rng.normal(0.0, 0.02, n)
            boxes.append(np.column_stack([xy, size[:, 2] / 2, size, yaw]))
            classes.append(cls)
    return np.concatenate(boxes), np.concatenate(classes).astype(np.int64)


def build_world(town: TownConfig, rng: np.random.Generator) -> World:
    """Lay out roads, blocks, buildings, poles, markings and parked vehicles of ``town``."""
    roads = build_road_network(town)
    cells = _block_cells(roads, town)
    ground = Ground.from_town(town, np.unique(roads.centers[:, 0]), np.unique(roads.centers[:, 1]))
    parts = [_buildings(cells, town, rng)] + ([_poles(roads, town)] if town.poles else [])
    parked_boxes, parked_classes = _parked(roads, town, rng)
    inset = 0.6 * town.sidewalk_width
    loops = cells + np.array([1, 1, -1, -1]) * inset
    loops = loops[(loops[:, 2] > loops[:, 0]) & (loops[:, 3] > loops[:, 1])] if town.sidewalk_width > 0 else loops[:0]
    return World(town=town, roads=roads, static=Mesh.concat(parts), ground=ground, parked_boxes=parked_boxes,
                 parked_classes=parked_classes, sidewalk_loops=loops)
