"""The ground layer of the town, intersected analytically: roads, raised blocks, curbs, paint.

The town's ground is a 2.5D surface made of axis-aligned pieces: road strips at z = 0, blocks
(sidewalk and lots) raised to the curb height, and painted lines on the road (centre double
line, lane dividers, edge lines, stop lines). A ray meets it in closed form: first the block
tops (plane z = curb), else the road plane (z = 0); a ray that reaches the road plane inside a
block came in through the curb face, found with the slab test (Kay & Kajiya, "Ray tracing
complex scenes", SIGGRAPH 1986). Keeping these large, thin surfaces out of the triangle BVH
leaves Embree with compact boxes only (buildings, poles, road users) and roughly halves the cost
of a cast; the result is exactly what casting the same geometry as triangles would give.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from coperception.sim.config import TownConfig

CURB_HEIGHT = 0.15
ROAD, SIDEWALK, CURB, YELLOW_PAINT, WHITE_PAINT, FIELD = range(6)
_BLOCK = 6  # lookup-only class: a raised block
#: LiDAR reflectivity and camera colour of each ground material, indexed by the constants above.
REFLECTIVITY = np.array([0.12, 0.35, 0.35, 0.7, 0.8, 0.2], np.float32)
COLOR = np.array([[70, 70, 75], [170, 170, 165], [150, 150, 145], [230, 190, 40], [235, 235, 235],
                  [95, 110, 80]], np.uint8)
_LINE_HALF_WIDTH = 0.06


@dataclass(frozen=True)
class Ground:
    """Road centre lines ``xs`` (nx,) / ``ys`` (ny,) (regular spacing), road half width ``hs``,
    lanes ``lanes`` x ``lane_width`` per direction, and the outer extent of the built-up area."""

    xs: np.ndarray
    ys: np.ndarray
    hs: float
    lane_width: float
    lanes: int
    extent: tuple[float, float, float, float]
    markings: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "_tables", self._build_tables())

    @staticmethod
    def from_town(town: TownConfig, xs: np.ndarray, ys: np.ndarray) -> "Ground":
        pad = town.road_half_width + town.sidewalk_width + town.outer_band
        return Ground(xs=np.asarray(xs, np.float64), ys=np.asarray(ys, np.float64), hs=town.road_half_width,
                      lane_width=town.lane_width, lanes=town.lanes_per_direction,
                      extent=(xs[0] - pad, ys[0] - pad, xs[-1] + pad, ys[-1] + pad), markings=town.markings)

    # ------------------------------------------------------------------ point classification
    def _road_distance(self, v: np.ndarray, centres: np.ndarray) -> np.ndarray:
        """Distance from coordinate ``v`` to the nearest road centre line along that axis."""
        step = float(centres[1] - centres[0])
        u = (v - np.float32(centres[0])) * np.float32(1.0 / step)
        return np.abs(u - np.clip(np.rint(u), 0, len(centres) - 1)) * np.float32(step)

    @staticmethod
    def _nearest_centre(v: np.ndarray, centres: np.ndarray) -> np.ndarray:
        i = np.clip(np.rint((v - centres[0]) / (centres[1] - centres[0])), 0, len(centres) - 1).astype(np.int64)
        return centres[i]

    def in_block(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """(N,) bool: the point lies on a raised block (not on a road, inside the town)."""
        x0, y0, x1, y1 = (float(v) for v in self.extent)
        hs = float(self.hs)
        within_x = (x >= float(self.xs[0]) - hs) & (x <= float(self.xs[-1]) + hs)
        within_y = (y >= float(self.ys[0]) - hs) & (y <= float(self.ys[-1]) + hs)
        on_ns = (self._road_distance(x, self.xs) < hs) & within_y
        on_ew = (self._road_distance(y, self.ys) < hs) & within_x
        return (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1) & ~on_ns & ~on_ew

    def _cell(self, v: np.ndarray, across: np.ndarray, centres: np.ndarray, across_centres: np.ndarray,
              lo_edge: float, hi_edge: float) -> tuple[np.ndarray, np.ndarray]:
        """Bounds [lo, hi] along one axis of the block containing a point with coordinate ``v`` on
        that axis and ``across`` on the other: between two roads, or the whole extent in the bands
        beyond the ring road."""
        step = centres[1] - centres[0]
        i = np.clip(np.floor((v - centres[0]) / step), 0, len(centres) - 2).astype(np.int64)
        hs = self.hs
        lo = np.where(v < centres[0], lo_edge, np.where(v > centres[-1], centres[-1] + hs, centres[i] + hs))
        hi = np.where(v < centres[0], centres[0] - hs, np.where(v > centres[-1], hi_edge, centres[i + 1] - hs))
        band = (across < across_centres[0] - self.hs) | (across > across_centres[-1] + self.hs)
        return np.where(band, lo_edge, lo), np.where(band, hi_edge, hi)

    def road_material(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """(N,) material of road-level points: ROAD, paint, or FIELD outside the town."""
        rx, ry = x - self._nearest_centre(x, self.xs), y - self._nearest_centre(y, self.ys)
        in_junction = (np.abs(rx) < self.hs) & (np.abs(ry) < self.hs)
        along_ew = (np.abs(ry) < self.hs) & ~in_junction  # on an east-west road segment
        offset = np.where(along_ew, np.abs(ry), np.abs(rx))
        on_segment = ~in_junction & ((np.abs(ry) < self.hs) | (np.abs(rx) < self.hs))
        yellow = on_segment & (np.abs(offset - 0.12) < _LINE_HALF_WIDTH)
        k = np.rint(offset / self.lane_width)
        white = on_segment & (k >= 1) & (k <= self.lanes) & (np.abs(offset - k * self.lane_width) < _LINE_HALF_WIDTH)
        near, far, span = self.hs + 0.1, self.hs + 0.5, self.lanes * self.lane_width
        stop = (((rx <= -near) & (rx >= -far) & (ry >= -span) & (ry <= 0))
                | ((rx >= near) & (rx <= far) & (ry >= 0) & (ry <= span))
                | ((ry >= near) & (ry <= far) & (rx >= -span) & (rx <= 0))
                | ((ry <= -near) & (ry >= -far) & (rx >= 0) & (rx <= span)))
        x0, y0, x1, y1 = self.extent
        outside = (x < x0) | (x > x1) | (y < y0) | (y > y1)
        out = np.full(len(x), ROAD, np.int8)
        if self.markings:
            out[white | stop] = WHITE_PAINT
            out[yellow] = YELLOW_PAINT
        out[outside] = FIELD
        return out

    # ------------------------------------------------------------------ interval tables
    def _boundaries(self, centres: np.ndarray, lo: float, hi: float) -> np.ndarray:
        """Every coordinate along one axis where block, junction or paint edges can lie."""
        lw, span, w = self.lane_width, self.lanes * self.lane_width, _LINE_HALF_WIDTH
        offs = [0.0, self.hs, self.hs + 0.1, self.hs + 0.5, span, 0.12 - w, 0.12 + w]
        offs += [k * lw + s * w for k in range(1, self.lanes + 1) for s in (-1, 1)]
        offs = np.array(offs)
        return np.concatenate([(centres[:, None] + offs).ravel(), (centres[:, None] - offs).ravel(), [lo, hi]])

    def _build_tables(self):
        """Per-axis interval tables and the class (BLOCK or a material) of every pair of intervals.

        The ground is piecewise constant on the product of the x and y intervals cut by
        :meth:`_boundaries` (every edge of a block, junction, paint line or stop line is one of
        them), so classifying the midpoint of each interval pair with the exact rules gives the
        class of every point of that rectangle."""
        x0, y0, x1, y1 = self.extent
        ax = _AxisIntervals.of(self._boundaries(self.xs, x0, x1))
        ay = _AxisIntervals.of(self._boundaries(self.ys, y0, y1))
        mx, my = np.meshgrid(ax.midpoints(), ay.midpoints(), indexing="ij")
        mx, my = mx.ravel(), my.ravel()
        table = np.where(self.in_block(mx, my), _BLOCK, self.road_material(mx, my)).astype(np.int8)
        return ax, ay, table

    def _classify(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """(N,) int8 class of points (N,) float32: BLOCK for a raised block, else the road-level
        material. Exact except within float32 rounding of an edge."""
        ax, ay, table = self._tables
        i = ax.index(x)
        i *= np.int32(len(ay.bounds) + 1)
        i += ay.index(y)
        return np.take(table, i)

    # ------------------------------------------------------------------ ray intersection
    def intersect(self, rays, t_max: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """First hit of a :class:`~coperception.sim.raycast.RayBatch` (origins above the curb) with
        the ground: t (R,) float32 (inf if none), material (R,) int8, and the axis of the hit
        surface's normal (R,) int8 (2 = up, 0 / 1 = a curb face normal along x / y).

        ``t_max`` (R,): distances at which the rays already hit something else; rays that do so
        before coming down to curb height are skipped (their ground t is inf).
        """
        hit = self.intersect_sparse(rays, t_max)
        t = np.full(len(rays), np.inf, np.float32)
        material = np.full(len(rays), ROAD, np.int8)
        axis = np.full(len(rays), 2, np.int8)
        t[hit.index], material[hit.index], axis[hit.index] = hit.t, hit.material, hit.axis
        return t, material, axis

    def intersect_sparse(self, rays, t_max: np.ndarray | None = None) -> "GroundHits":
        """As :meth:`intersect`, for the rays that come down to the ground (before ``t_max``)
        only (see :class:`GroundHits`); the cost is proportional to those rays."""
        parts = []
        for g, origin in enumerate(rays.origins):
            sl = rays.group(g)
            dz = rays.dirs[2, sl]
            with np.errstate(divide="ignore", invalid="ignore"):
                t_top = np.float32(CURB_HEIGHT - origin[2]) / dz
            need = dz < -1e-6
            if t_max is not None:
                need &= t_top < t_max[sl]
            idx = np.flatnonzero(need)
            d = np.empty((3, len(idx)), np.float32)
            for i in range(3):
                np.take(rays.dirs[i, sl], idx, out=d[i])
            hit = self._intersect_down(origin, d)
            if t_max is not None:  # the ground must come first
                first = hit[0] < np.take(t_max[sl], idx)
                idx, hit = idx[first], tuple(a[first] for a in hit)
            parts.append((idx + sl.start, *hit))
        if not parts:
            return GroundHits.empty()
        return GroundHits(*(np.concatenate(p) for p in zip(*parts)))

    def _intersect_down(self, origin: np.ndarray, d: np.ndarray):
        """t, material, normal axis and |cos incidence| of rays (3, N) that all point down."""
        ox, oy, oz = (np.float32(v) for v in origin)
        inv = np.float32(1.0) / d[2]
        t_road = np.float32(-oz) * inv
        t_top = np.float32(CURB_HEIGHT - oz) * inv
        top = self._classify(ox + t_top * d[0], oy + t_top * d[1]) == _BLOCK
        xr, yr = ox + t_road * d[0], oy + t_road * d[1]
        below = self._classify(xr, yr)
        curb = below == _BLOCK
        curb &= ~top
        t = np.where(top, t_top, t_road)
        material = np.where(top, np.int8(SIDEWALK), np.where(curb, np.int8(CURB), below))
        axis = np.full(len(t), 2, np.int8)
        cos = np.negative(d[2])  # |d . up| for rays that point down
        c = np.flatnonzero(curb)
        if len(c):
            o = np.broadcast_to(np.asarray(origin, np.float64), (len(c), 3))
            t[c], axis[c] = self._curb_face(o, d[:, c].T.astype(np.float64), xr[c], yr[c], t_top[c], t_road[c])
            cos[c] = np.abs(np.where(axis[c] == 0, d[0, c], d[1, c]))
        return t, material, axis, cos

    def _curb_face(self, o, d, xr, yr, t_top, t_road) -> tuple[np.ndarray, np.ndarray]:
        """Entry of rays into the block that contains their road-plane point (slab test in xy)."""
        x0, y0, x1, y1 = self.extent
        entries = []
        for k, (v, w, centres, other, lo_e, hi_e) in enumerate(((xr, yr, self.xs, self.ys, x0, x1),
                                                                 (yr, xr, self.ys, self.xs, y0, y1))):
            lo, hi = self._cell(v, w, centres, other, lo_e, hi_e)
            with np.errstate(divide="ignore", invalid="ignore"):
                t_lo, t_hi = (lo - o[:, k]) / d[:, k], (hi - o[:, k]) / d[:, k]
            entries.append(np.nan_to_num(np.minimum(t_lo, t_hi), nan=-np.inf))
        t_side = np.maximum(entries[0], entries[1])
        axis = np.where(entries[0] >= entries[1], 0, 1).astype(np.int8)
        return np.clip(t_side, t_top, t_road), axis


@dataclass(frozen=True)
class GroundHits:
    """Rays that hit the ground: ``index`` (K,) int64 ray indices (ascending), ``t`` (K,) float32
    distances, ``material`` (K,) int8, ``axis`` (K,) int8 of the surface normal (2 = up, 0 / 1 =
    a curb face along x / y) and ``cos`` (K,) float32 |cos| of the incidence angle."""

    index: np.ndarray
    t: np.ndarray
    material: np.ndarray
    axis: np.ndarray
    cos: np.ndarray

    @staticmethod
    def empty() -> "GroundHits":
        return GroundHits(np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, np.int8), np.zeros(0, np.int8),
                          np.zeros(0, np.float32))


@dataclass(frozen=True)
class _AxisIntervals:
    """Which interval of sorted ``bounds`` (B,) float64 a coordinate lies in (0 below the first,
    B above the last), through a table of ``1 / inv`` m cells: ``first`` (n,) int32 interval at
    each cell's start and ``inner`` (n,) float32, the boundary in the cell (inf if none; the cell
    size keeps it to one): interval = first + (v >= inner), two look-ups and no search."""

    bounds: np.ndarray
    origin: np.float32
    inv: np.float32
    first: np.ndarray
    inner: np.ndarray

    @staticmethod
    def of(bounds: np.ndarray, cell: float = 0.01) -> "_AxisIntervals":
        """Tables for ``bounds`` (any order, duplicates allowed); cells of ``cell`` m or half the
        smallest gap (not below 1 mm: edges closer than that may swap within the millimetre)."""
        b = np.unique(np.asarray(bounds, np.float32)).astype(np.float64)  # exact in float32
        gaps = np.diff(b)
        if len(gaps):
            cell = max(min(cell, float(gaps.min()) / 2), 1e-3)
        origin = b[0] - 2 * cell
        n = int(np.ceil((b[-1] - origin) / cell)) + 2
        starts = origin + np.arange(n) * cell
        first = np.searchsorted(b, starts, side="right")
        # The boundary in (start, end]; one on the end also starts the next cell's interval, so a
        # coordinate that rounds into either cell gets the same index.
        inside = np.searchsorted(b, starts + cell, side="right") > first
        inner = np.where(inside, b[np.minimum(first, len(b) - 1)], np.inf).astype(np.float32)
        return _AxisIntervals(b, np.float32(origin), np.float32(1.0 / cell), first.astype(np.int32), inner)

    def midpoints(self) -> np.ndarray:
        """(B + 1,) a point inside each interval."""
        b = self.bounds
        return np.concatenate([[b[0] - 1.0], (b[:-1] + b[1:]) / 2, [b[-1] + 1.0]])

    def index(self, v: np.ndarray) -> np.ndarray:
        """(N,) int32 interval of coordinates ``v`` (N,) finite float32."""
        c = v - self.origin
        c *= self.inv
        np.clip(c, 0, len(self.first) - 1, out=c)
        j = c.astype(np.int32)
        i = np.take(self.first, j)
        i += np.take(self.inner, j) <= v
        return i
