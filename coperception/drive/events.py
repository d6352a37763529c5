"""Infraction checks of the embedded closed loop: collisions, red lights, driving outside the route's lanes.

They follow the CARLA leaderboard's criteria (``CollisionTest``, ``RunningRedLightTest``,
``OutsideRouteLanesTest`` of the scenario runner), on the embedded town's geometry:

* collisions are overlaps of bird's-eye-view rectangles, tested with the separating-axis theorem
  (two convex polygons are disjoint iff their projections on one of the edge normals are; for
  rectangles those are the four edge directions), vectorised over all pairs; a contact is
  reported once, on its first tick, and again only after the two have separated
  (:class:`ContactTracker`);
* a red light is run when the ego's centre crosses the stop line of a signalised approach,
  moving into the junction, while that approach is red;
* outside the route's lanes: the ego's centre off the driving lanes (parking lane, curb,
  sidewalk, off road) or in a lane whose direction opposes the route's; junction boxes are not
  judged (their connectors overlap), as CARLA skips junctions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from coperception.drive.footprints import footprints_overlap
from coperception.sim.raycast import Mesh
from coperception.sim.roads import APPROACH, SIDE_VECTORS, RoadNetwork


def _as_boxes(boxes: np.ndarray) -> np.ndarray:
    b = np.asarray(boxes, dtype=np.float64)
    if b.ndim == 1:
        b = b[None]
    if b.ndim != 2 or b.shape[1] != 7:
        raise ValueError(f"boxes must be (N, 7) [x, y, z, l, w, h, yaw], got shape {b.shape}")
    return b


def boxes_overlap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, M) bool: bird's-eye-view footprints of boxes ``a`` (N, 7) and ``b`` (M, 7) overlap
    (touching edges do not count). A single (7,) box is taken as (1, 7)."""
    return footprints_overlap(_as_boxes(a)[:, None], _as_boxes(b)[None], touching=False)


def mesh_boxes(mesh: Mesh) -> np.ndarray:
    """(B, 7) boxes of a mesh made only of boxes (:func:`coperception.sim.raycast.box_mesh`: 8
    vertices per box, corner ``i`` with x, y, z signs from bits 0, 1, 2)."""
    v = np.asarray(mesh.vertices, np.float64)
    if len(v) % 8 or len(mesh.triangles) != 12 * (len(v) // 8):
        raise ValueError(f"mesh of {len(v)} vertices / {len(mesh.triangles)} triangles is not made of boxes")
    v = v.reshape(-1, 8, 3)
    ex, ey, ez = v[:, 1] - v[:, 0], v[:, 2] - v[:, 0], v[:, 4] - v[:, 0]
    centre = v.mean(1)
    return np.column_stack([centre, np.linalg.norm(ex, axis=1), np.linalg.norm(ey, axis=1),
                            np.linalg.norm(ez, axis=1), np.arctan2(ex[:, 1], ex[:, 0])])


def footprint_samples(box: np.ndarray) -> np.ndarray:
    """(8, 2) corners and edge midpoints of a box's footprint (where a curb is first touched)."""
    x, y, _, l, w, _, yaw = np.asarray(box, np.float64)
    u = np.array([[1, 1], [1, -1], [-1, -1], [-1, 1], [1, 0], [0, -1], [-1, 0], [0, 1]]) * 0.5
    c, s = np.cos(yaw), np.sin(yaw)
    lx, ly = u[:, 0] * l, u[:, 1] * w
    return np.column_stack([x + c * lx - s * ly, y + s * lx + c * ly])


@dataclass
class ContactTracker:
    """Remembers who is in contact, so that each contact is reported on its first tick only."""

    active: set[str] = field(default_factory=set)

    def update(self, touching: set[str]) -> list[str]:
        """The parties of ``touching`` that were not touching on the previous call (sorted)."""
        new = sorted(touching - self.active)
        self.active = set(touching)
        return new


@dataclass(frozen=True)
class StopLines:
    """The stop lines of every signalised approach: (K,) junction and side, segment ends (K, 2)
    ``a`` (centre line) and ``b`` (outer lane edge), and the inbound direction (K, 2)."""

    junction: np.ndarray
    side: np.ndarray
    a: np.ndarray
    b: np.ndarray
    inbound: np.ndarray

    @staticmethod
    def of(roads: RoadNetwork) -> "StopLines":
        town = roads.town
        jid, side = np.nonzero(roads.legs)
        inbound = -SIDE_VECTORS[side]
        right = np.stack([inbound[:, 1], -inbound[:, 0]], 1)
        a = roads.centers[jid] + SIDE_VECTORS[side] * town.road_half_width
        b = a + right * town.lanes_per_direction * town.lane_width
        return StopLines(jid, side, a, b, inbound)

    def crossed(self, p: np.ndarray, q: np.ndarray) -> np.ndarray:
        """(K,) bool: the move ``p -> q`` (2,) crosses each stop line towards its junction."""
        p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
        move = q - p
        if not move.any():
            return np.zeros(len(self.a), bool)

        def cross(u, v):
            return u[..., 0] * v[..., 1] - u[..., 1] * v[..., 0]

        seg = self.b - self.a
        side_p, side_q = cross(seg, p - self.a), cross(seg, q - self.a)
        side_a, side_b = cross(move, self.a - p), cross(move, self.b - p)
        hit = (side_p * side_q <= 0) & (side_p != side_q) & (side_a * side_b <= 0)
        return hit & (self.inbound @ move > 0)


class LaneJudge:
    """Decides whether a point is inside the route's lanes (see the module docstring)."""

    def __init__(self, roads: RoadNetwork):
        lane_of_point = np.repeat(np.arange(roads.lane_count), roads.lane_points)
        approach = roads.lane_kind[lane_of_point] == APPROACH
        self.points = roads.points[approach]
        self.headings = roads.headings[approach]
        self.centers = roads.centers
        self.half_width = roads.town.lane_width / 2
        self.junction_half = roads.town.road_half_width

    def outside(self, xy: np.ndarray, route_heading: float) -> bool:
        """Whether ``xy`` (2,) is off the driving lanes or in a lane opposing ``route_heading``."""
        xy = np.asarray(xy, np.float64)
        if (np.abs(self.centers - xy).max(1) <= self.junction_half).any():
            return False
        d = np.einsum("ij,ij->i", self.points - xy, self.points - xy)
        k = int(np.argmin(d))
        if d[k] > self.half_width ** 2:
            return True
        return bool(np.cos(self.headings[k] - route_heading) < 0.0)
