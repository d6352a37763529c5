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
_BLOCK, _MIXED = 6, 7  # raster-only codes: a raised block; a cell that straddles an edge
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
        object.__setattr__(self, "_raster", self._build_raster())

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

    # ------------------------------------------------------------------ lookup raster
    def _boundaries(self, centres: np.ndarray, lo: float, hi: float) -> np.ndarray:
        """Every coordinate along one axis where block, junction or paint edges can lie."""
        lw, span, w = self.lane_width, self.lanes * self.lane_width, _LINE_HALF_WIDTH
        offs = [0.0, self.hs, self.hs + 0.1, self.hs + 0.5, span, 0.12 - w, 0.12 + w]
        offs += [k * lw + s * w for k in range(1, self.lanes + 1) for s in (-1, 1)]
        offs = np.array(offs)
        return np.concatenate([(centres[:, None] + offs).ravel(), (centres[:, None] - offs).ravel(), [lo, hi]])

    def _build_raster(self, res: float = 0.25):
        """Material of every ``res``-metre cell (BLOCK for raised blocks), or MIXED where an edge
        crosses the cell; points in MIXED cells are classified exactly."""
        x0, y0, x1, y1 = self.extent
        res = max(res, max(x1 - x0, y1 - y0) / 4000.0)
        ox, oy = x0 - 2 * res, y0 - 2 * res
        nx, ny = int(np.ceil((x1 - x0) / res)) + 4, int(np.ceil((y1 - y0) / res)) + 4
        cx, cy = ox + (np.arange(nx) + 0.5) * res, oy + (np.arange(ny) + 0.5) * res
        gx, gy = np.meshgrid(cx, cy)
        gx, gy = gx.ravel().astype(np.float32), gy.ravel().astype(np.float32)
        block = self.in_block(gx, gy)
        raster = np.where(block, _BLOCK, self.road_material(gx, gy)).astype(np.int8).reshape(ny, nx)

        def mixed(origin, n, bounds):
            lo = origin + np.arange(n) * res
            idx = np.searchsorted(np.sort(bounds), lo - 1e-3)
            nxt = np.sort(bounds)[np.minimum(idx, len(bounds) - 1)]
            return (nxt <= lo + res + 1e-3) & (idx < len(bounds))

        raster[:, mixed(ox, nx, self._boundaries(self.xs, x0, x1))] = _MIXED
        raster[mixed(oy, ny, self._boundaries(self.ys, y0, y1)), :] = _MIXED
        raster[[0, -1], :], raster[:, [0, -1]] = FIELD, FIELD
        return raster, np.float32(ox), np.float32(oy), np.float32(1.0 / res)

    def _lookup(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        raster, ox, oy, inv = self._raster
        ny, nx = raster.shape
        with np.errstate(invalid="ignore"):
            # fmax/fmin map NaN (rays that never come down) to the border, which is FIELD.
            ix = np.fmin(np.fmax((x - ox) * inv, 0), nx - 1).astype(np.int32)
            iy = np.fmin(np.fmax((y - oy) * inv, 0), ny - 1).astype(np.int32)
        iy *= nx
        iy += ix
        return np.take(raster.ravel(), iy)

    def _classify(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Raster class of points, with MIXED cells resolved exactly (to BLOCK or a material)."""
        c = self._lookup(x, y)
        m = np.flatnonzero(c == _MIXED)
        if len(m):
            xm, ym = x[m], y[m]
            c[m] = np.where(self.in_block(xm, ym), _BLOCK, self.road_material(xm, ym))
        return c

    # ------------------------------------------------------------------ ray intersection
    def intersect(self, rays, t_max: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """First hit of a :class:`~coperception.sim.raycast.RayBatch` (origins above the curb) with
        the ground: t (R,) float32 (inf if none), material (R,) int8, and the axis of the hit
        surface's normal (R,) int8 (2 = up, 0 / 1 = a curb face normal along x / y).

        ``t_max`` (R,): distances at which the rays already hit something else; rays that do so
        before coming down to curb height are skipped (their ground t is inf).
        """
        n = len(rays)
        t = np.full(n, np.inf, np.float32)
        material = np.full(n, ROAD, np.int8)
        axis = np.full(n, 2, np.int8)
        for g, origin in enumerate(rays.origins):
            sl = rays.group(g)
            dz = rays.dirs[2, sl]
            with np.errstate(divide="ignore", invalid="ignore"):
                t_top = np.float32(CURB_HEIGHT - origin[2]) / dz
            need = (dz < -1e-6) if t_max is None else (dz < -1e-6) & (t_top < t_max[sl])
            idx = np.flatnonzero(need)
            d = np.take(rays.dirs[:, sl], idx, axis=1)
            idx += sl.start
            t[idx], material[idx], axis[idx] = self._intersect_down(origin, d)
        return t, material, axis

    def _intersect_down(self, origin: np.ndarray, d: np.ndarray):
        """Hits of rays (3, N) that all point down."""
        ox, oy, oz = (float(v) for v in origin)
        inv = np.float32(1.0) / d[2]
        t_road = np.float32(-oz) * inv
        t_top = np.float32(CURB_HEIGHT - oz) * inv
        top = self._classify(ox + t_top * d[0], oy + t_top * d[1]) == _BLOCK
        xr, yr = ox + t_road * d[0], oy + t_road * d[1]
        below = self._classify(xr, yr)
        curb = ~top & (below == _BLOCK)
        t = np.where(top, t_top, t_road)
        material = np.where(top, np.int8(SIDEWALK), np.where(curb, np.int8(CURB), below))
        axis = np.full(len(t), 2, np.int8)
        c = np.flatnonzero(curb)
        if len(c):
            o = np.broadcast_to(np.asarray(origin, np.float64), (len(c), 3))
            t[c], axis[c] = self._curb_face(o, d[:, c].T.astype(np.float64), xr[c], yr[c], t_top[c], t_road[c])
        return t, material, axis

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
