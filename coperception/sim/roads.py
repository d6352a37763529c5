"""Road network of the grid town: lanes, junction connectors and lane-centre polylines.

Junction ``(i, j)`` sits at ``(X_i, Y_j)``, ``block_size`` apart, the town centred on the
origin (x east, y north). Traffic keeps right: a lane ``k`` (0 next to the centre line) of a
road heading ``d`` lies ``(k + 1/2) * lane_width`` to the right of the centre line. Every lane is
directed and is either an *approach* (from one junction's edge to the next junction's stop line)
or a *connector* across a junction (straight line, or a quarter circle for turns, centred on the
junction corner between the two legs). Lanes are resampled at a fixed step so that positions of
many vehicles are a vectorised interpolation on one concatenated point array.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from coperception.sim.config import TownConfig, slots_per_lane

SIDES: tuple[str, ...] = ("N", "E", "S", "W")
#: Unit vector from a junction centre towards each side.
SIDE_VECTORS = np.array([[0.0, 1.0], [1.0, 0.0], [0.0, -1.0], [-1.0, 0.0]])
MOVEMENTS: tuple[str, ...] = ("straight", "left", "right")
APPROACH, CONNECTOR = 0, 1
_STEP = 0.5  # polyline resampling step (m)


def _right_of(d: np.ndarray) -> np.ndarray:
    return np.array([d[1], -d[0]])


def _exit_side(side: int, movement: str) -> int:
    """Leg a vehicle leaves by, entering from ``side`` (travelling away from it)."""
    straight = (side + 2) % 4
    # Travelling north (from S): left is W, right is E. Sides are ordered clockwise N, E, S, W.
    return {"straight": straight, "left": (straight - 1) % 4, "right": (straight + 1) % 4}[movement]


@dataclass
class RoadNetwork:
    """All lanes of a town as flat arrays (L lanes, M resampled points).

    lane_kind/junction/side/index: (L,) int; side = leg the lane arrives from (connectors: the
    leg they leave from). lane_length: (L,) m. lane_offset/lane_points: (L,) index/count into
    ``points`` (M, 2) and ``headings`` (M,). conn_exit: (L,) exit lane of a connector (-1 else).
    options: approach lane id -> connector ids. turn_speed: (L,) curve speed limit (m/s).
    single_file: (L,) approach lanes of legs with no straight movement (their lanes queue as one
    near the stop line, see :func:`coperception.sim.traffic.gaps`).
    """

    town: TownConfig
    centers: np.ndarray
    legs: np.ndarray
    lane_kind: np.ndarray
    lane_junction: np.ndarray
    lane_side: np.ndarray
    lane_index: np.ndarray
    lane_length: np.ndarray
    lane_offset: np.ndarray
    lane_points: np.ndarray
    conn_exit: np.ndarray
    conn_source: np.ndarray
    conn_movement: np.ndarray
    turn_speed: np.ndarray
    points: np.ndarray
    headings: np.ndarray
    options: dict[int, np.ndarray]
    approach_id: dict[tuple[int, int, int], int]
    single_file: np.ndarray

    @property
    def lane_count(self) -> int:
        return len(self.lane_kind)

    def junction_index(self, ij: tuple[int, int]) -> int:
        return int(ij[0] * self.town.roads_y + ij[1])

    def pose(self, lanes: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Positions (V, 2) and headings (V,) of points ``s`` metres along ``lanes`` (V,)."""
        lanes = np.asarray(lanes, dtype=np.int64)
        ds = self.lane_length[lanes] / (self.lane_points[lanes] - 1)
        u = np.clip(np.asarray(s, dtype=np.float64), 0.0, self.lane_length[lanes]) / ds
        i0 = np.minimum(np.floor(u).astype(np.int64), self.lane_points[lanes] - 2)
        frac = (u - i0)[:, None]
        base = self.lane_offset[lanes] + i0
        xy = self.points[base] * (1.0 - frac) + self.points[base + 1] * frac
        return xy, self.headings[base]

    def path_point(self, lanes: np.ndarray, s: np.ndarray, prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
        """Points (V, 2) at arc position ``s`` of ``lanes`` where ``s`` may run off either end:
        onto the previous / next lane (-1 = unknown), else straight on along the end tangent."""
        lanes, prev, nxt = (np.asarray(a, dtype=np.int64) for a in (lanes, prev, nxt))
        length = self.lane_length
        back = (s < 0) & (prev >= 0)
        ahead = (s > length[lanes]) & (nxt >= 0)
        lane2 = np.where(back, prev, np.where(ahead, nxt, lanes))
        s2 = np.where(back, length[np.maximum(prev, 0)] + s, np.where(ahead, s - length[lanes], s))
        xy, heading = self.pose(lane2, s2)
        over = s2 - np.clip(s2, 0.0, length[lane2])
        return xy + over[:, None] * np.stack([np.cos(heading), np.sin(heading)], 1)

    def body_pose(self, lanes, s, lengths, prev, nxt) -> tuple[np.ndarray, np.ndarray]:
        """Centres (V, 2) and yaws (V,) of vehicle bodies whose front and rear centres are on the
        path ``lengths / 2`` ahead of and behind ``s``: on a curve the body is the chord, cutting
        inside as a real vehicle's rear axle does, instead of swinging out across the next lane."""
        front = self.path_point(lanes, s + lengths / 2, prev, nxt)
        rear = self.path_point(lanes, s - lengths / 2, prev, nxt)
        d = front - rear
        return (front + rear) / 2, np.arctan2(d[:, 1], d[:, 0])

    def spawn_slots(self, spacing: float) -> tuple[np.ndarray, np.ndarray]:
        """Spawn slots on approach lanes: lane ids (S,) and arc positions s (S,) in metres."""
        lanes = np.flatnonzero(self.lane_kind == APPROACH)
        n = slots_per_lane(self.town.segment_length, spacing)
        s = 6.0 + spacing * np.arange(n)
        return np.repeat(lanes, n), np.tile(s, len(lanes))


def _junction_grid(town: TownConfig) -> tuple[np.ndarray, np.ndarray]:
    xs = (np.arange(town.roads_x) - (town.roads_x - 1) / 2.0) * town.block_size
    ys = (np.arange(town.roads_y) - (town.roads_y - 1) / 2.0) * town.block_size
    centers = np.stack(np.meshgrid(xs, ys, indexing="ij"), -1).reshape(-1, 2)
    i, j = np.meshgrid(np.arange(town.roads_x), np.arange(town.roads_y), indexing="ij")
    i, j = i.ravel(), j.ravel()
    legs = np.stack([j < town.roads_y - 1, i < town.roads_x - 1, j > 0, i > 0], axis=1)
    return centers, legs


def _line(p0: np.ndarray, p1: np.ndarray) -> np.ndarray:
    n = max(2, int(np.ceil(np.linalg.norm(p1 - p0) / _STEP)) + 1)
    return p0 + np.linspace(0.0, 1.0, n)[:, None] * (p1 - p0)


def _arc(p0: np.ndarray, p1: np.ndarray, center: np.ndarray) -> np.ndarray:
    r = np.linalg.norm(p0 - center)
    a0 = np.arctan2(*(p0 - center)[::-1])
    da = (np.arctan2(*(p1 - center)[::-1]) - a0 + np.pi) % (2 * np.pi) - np.pi
    n = max(3, int(np.ceil(abs(da) * r / _STEP)) + 1)
    a = a0 + np.linspace(0.0, da, n)
    return center + r * np.stack([np.cos(a), np.sin(a)], 1)


def _lane_end(center: np.ndarray, side: int, k: int, hs: float, lw: float, inbound: bool) -> np.ndarray:
    """Point where lane ``k`` crosses the edge of a junction on leg ``side``."""
    d = -SIDE_VECTORS[side] if inbound else SIDE_VECTORS[side]
    return center + SIDE_VECTORS[side] * hs + _right_of(d) * (k + 0.5) * lw


def _movements_for_lane(k: int, lanes: int, has: dict[str, bool]) -> list[str]:
    """Movements allowed from lane ``k``: straight from any lane, left from the innermost and right
    from the outermost; where there is no straight leg every lane turns (inner ones left), so that
    the paths of one approach never cross."""
    out = ["straight"] if has["straight"] else []
    if has["left"] and (k == 0 or (not has["straight"] and (not has["right"] or k < lanes / 2))):
        out.append("left")
    if has["right"] and (k == lanes - 1 or (not has["straight"] and (not has["left"] or k >= lanes / 2))):
        out.append("right")
    return out


def build_road_network(town: TownConfig) -> RoadNetwork:
    """Lay out approach lanes and junction connectors of ``town`` (see module docstring)."""
    centers, legs = _junction_grid(town)
    hs, lw, L = town.road_half_width, town.lane_width, town.lanes_per_direction
    lanes: list[dict] = []
    approach_id: dict[tuple[int, int, int], int] = {}
    neighbour = {0: (0, 1), 1: (1, 0), 2: (0, -1), 3: (-1, 0)}
    for jid, c in enumerate(centers):
        i, j = divmod(jid, town.roads_y)
        for side in range(4):
            if not legs[jid, side]:
                continue
            di, dj = neighbour[side]
            other = centers[(i + di) * town.roads_y + (j + dj)]
            for k in range(L):
                start = _lane_end(other, (side + 2) % 4, k, hs, lw, inbound=False)
                end = _lane_end(c, side, k, hs, lw, inbound=True)
                approach_id[(jid, side, k)] = len(lanes)
                lanes.append(dict(kind=APPROACH, junction=jid, side=side, index=k, pts=_line(start, end),
                                  exit=-1, source=-1, movement=-1, vmax=np.inf))
    options: dict[int, list[int]] = {}
    for (jid, side, k), src in list(approach_id.items()):
        c = centers[jid]
        has = {m: bool(legs[jid, _exit_side(side, m)]) for m in MOVEMENTS}
        i, j = divmod(jid, town.roads_y)
        for m in _movements_for_lane(k, L, has):
            e = _exit_side(side, m)
            di, dj = neighbour[e]
            exit_lane = approach_id[((i + di) * town.roads_y + (j + dj), (e + 2) % 4, k)]
            p0, p1 = lanes[src]["pts"][-1], _lane_end(c, e, k, hs, lw, inbound=False)
            if m == "straight":
                pts, vmax = _line(p0, p1), np.inf
            else:
                pivot = c + hs * (SIDE_VECTORS[side] + SIDE_VECTORS[e])
                pts = _arc(p0, p1, pivot)
                vmax = float(np.sqrt(2.0 * np.linalg.norm(p0 - pivot)))  # 2 m/s^2 lateral
            options.setdefault(src, []).append(len(lanes))
            lanes.append(dict(kind=CONNECTOR, junction=jid, side=side, index=k, pts=pts, exit=exit_lane,
                              source=src, movement=MOVEMENTS.index(m), vmax=vmax))
    return _pack(town, centers, legs, lanes, options, approach_id)


def _pack(town, centers, legs, lanes, options, approach_id) -> RoadNetwork:
    pts = [ln["pts"] for ln in lanes]
    seg = [np.linalg.norm(np.diff(p, axis=0), axis=1) for p in pts]
    length = np.array([s.sum() for s in seg])
    # Resample each polyline uniformly by arc length so that pose() can index by s / ds.
    res = []
    for p, s, total in zip(pts, seg, length):
        cum = np.concatenate([[0.0], np.cumsum(s)])
        n = max(2, int(np.ceil(total / _STEP)) + 1)
        q = np.linspace(0.0, total, n)
        res.append(np.stack([np.interp(q, cum, p[:, 0]), np.interp(q, cum, p[:, 1])], 1))
    counts = np.array([len(r) for r in res])
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    points = np.concatenate(res)
    d = np.diff(points, axis=0, append=points[-1:])
    headings = np.arctan2(d[:, 1], d[:, 0])
    last = offsets + counts - 1  # the last point of a lane takes its predecessor's heading
    headings[last] = headings[last - 1]
    straight = MOVEMENTS.index("straight")
    single_file = np.zeros(len(lanes), bool)  # approach lanes of legs where every lane turns
    for lane, conns in options.items():
        single_file[lane] = all(lanes[c]["movement"] != straight for c in conns)
    col = {key: np.array([ln[key] for ln in lanes]) for key in ("kind", "junction", "side", "index",
                                                              "exit", "source", "movement", "vmax")}
    return RoadNetwork(
        town=town, centers=centers, legs=legs, lane_kind=col["kind"], lane_junction=col["junction"],
        lane_side=col["side"], lane_index=col["index"], lane_length=length, lane_offset=offsets,
        lane_points=counts, conn_exit=col["exit"], conn_source=col["source"], conn_movement=col["movement"],
        turn_speed=col["vmax"].astype(np.float64), points=points, headings=headings,
        options={k: np.array(v) for k, v in options.items()}, approach_id=approach_id, single_file=single_file)
