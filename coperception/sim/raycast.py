"""Triangle meshes of the world and batched ray casting with Open3D's ``RaycastingScene``.

The scene of one step is one triangle geometry: the static world (buildings, poles; built once
per scenario) followed by all road users (two boxes of 12 triangles each per object, rebuilt
each step); the flat ground layer is intersected in closed form (:mod:`coperception.sim.ground`)
and merged by distance. All agents' LiDAR and camera rays are cast in one call (Embree BVH
traversal, see Wald et al., "Embree: A Kernel Framework for Efficient CPU Ray Tracing", 2014).
What a ray hit is one *surface id* (triangle id, or a ground material after the triangles), so
reflectivity and colour are one table look-up, and the object hit by a ray is
``(surface - static_triangles) // TRIANGLES_PER_OBJECT``: per-object hit counts are one
``np.bincount``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import open3d as o3d

from coperception.sim.objects import PARTS_PER_OBJECT

TRIANGLES_PER_BOX = 12
TRIANGLES_PER_OBJECT = TRIANGLES_PER_BOX * PARTS_PER_OBJECT
#: Returned as the object index of rays that hit no road user.
NO_OBJECT = -1

# Corner i of a unit box has x, y, z signs from bits 0, 1, 2 of i; faces wound counter-clockwise
# seen from outside, so Open3D's primitive normals point outwards.
_CORNERS = np.array([[(i & 1) - 0.5, ((i >> 1) & 1) - 0.5, ((i >> 2) & 1) - 0.5] for i in range(8)])
_BOX_TRIANGLES = np.array([[0, 2, 1], [1, 2, 3], [4, 5, 6], [5, 7, 6], [0, 1, 5], [0, 5, 4],
                           [2, 6, 7], [2, 7, 3], [0, 4, 6], [0, 6, 2], [1, 3, 7], [1, 7, 5]])
_QUAD_TRIANGLES = np.array([[0, 1, 2], [1, 3, 2]])


@dataclass
class Mesh:
    """Triangles with a material per triangle.

    vertices: (V, 3) float32 world metres; triangles: (T, 3) uint32 vertex indices;
    reflectivity: (T,) float32 in [0, 1] (LiDAR); color: (T, 3) uint8 RGB (cameras).
    """

    vertices: np.ndarray
    triangles: np.ndarray
    reflectivity: np.ndarray
    color: np.ndarray

    @staticmethod
    def empty() -> "Mesh":
        return Mesh(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint32), np.zeros(0, np.float32),
                    np.zeros((0, 3), np.uint8))

    @staticmethod
    def concat(meshes: list["Mesh"]) -> "Mesh":
        meshes = [m for m in meshes if len(m.triangles)]
        if not meshes:
            return Mesh.empty()
        starts = np.cumsum([0] + [len(m.vertices) for m in meshes[:-1]])
        return Mesh(np.concatenate([m.vertices for m in meshes]).astype(np.float32),
                    np.concatenate([m.triangles + s for m, s in zip(meshes, starts)]).astype(np.uint32),
                    np.concatenate([m.reflectivity for m in meshes]).astype(np.float32),
                    np.concatenate([m.color for m in meshes]).astype(np.uint8))


def _rotate_xy(local: np.ndarray, yaw: np.ndarray) -> np.ndarray:
    c, s = np.cos(yaw)[:, None], np.sin(yaw)[:, None]
    out = local.copy()
    out[..., 0] = c * local[..., 0] - s * local[..., 1]
    out[..., 1] = s * local[..., 0] + c * local[..., 1]
    return out


def _materials(n: int, per: int, reflectivity, color) -> tuple[np.ndarray, np.ndarray]:
    refl = np.broadcast_to(np.asarray(reflectivity, np.float32), (n,))
    col = np.broadcast_to(np.asarray(color, np.uint8), (n, 3))
    return np.repeat(refl, per), np.repeat(col, per, axis=0)


def box_mesh(centers, sizes, yaws, reflectivity=0.5, color=(128, 128, 128)) -> Mesh:
    """Boxes rotated by ``yaws`` (B,) about z: centres (B, 3), full sizes (B, 3) metres.

    Triangles of box b are rows ``12 b .. 12 b + 11``; materials broadcast per box.
    """
    centers = np.asarray(centers, np.float64).reshape(-1, 3)
    n = len(centers)
    local = _CORNERS[None] * np.asarray(sizes, np.float64).reshape(-1, 1, 3)
    verts = _rotate_xy(local, np.asarray(yaws, np.float64).reshape(n)) + centers[:, None]
    tris = _BOX_TRIANGLES[None] + 8 * np.arange(n)[:, None, None]
    refl, col = _materials(n, TRIANGLES_PER_BOX, reflectivity, color)
    return Mesh(verts.reshape(-1, 3).astype(np.float32), tris.reshape(-1, 3).astype(np.uint32), refl, col)


def quad_mesh(centers, sizes, yaws, reflectivity=0.5, color=(128, 128, 128)) -> Mesh:
    """Upward-facing rectangles: centres (Q, 3), sizes (Q, 2) length x width, yaws (Q,)."""
    centers = np.asarray(centers, np.float64).reshape(-1, 3)
    n = len(centers)
    corners = np.array([[-0.5, -0.5, 0.0], [0.5, -0.5, 0.0], [-0.5, 0.5, 0.0], [0.5, 0.5, 0.0]])
    size3 = np.concatenate([np.asarray(sizes, np.float64).reshape(-1, 2), np.ones((n, 1))], 1)
    verts = _rotate_xy(corners[None] * size3[:, None], np.asarray(yaws, np.float64).reshape(n)) + centers[:, None]
    tris = _QUAD_TRIANGLES[None] + 4 * np.arange(n)[:, None, None]
    refl, col = _materials(n, 2, reflectivity, color)
    return Mesh(verts.reshape(-1, 3).astype(np.float32), tris.reshape(-1, 3).astype(np.uint32), refl, col)


@dataclass
class RayBatch:
    """Rays in groups that share an origin (one LiDAR or one camera each).

    origins: (G, 3) float64 world origin of each group; starts: (G + 1,) first ray of each group;
    dirs: (3, R) float32 unit world directions, one contiguous row per axis (vectorised maths on
    rows is several times faster than on the columns of an (R, 6) array).
    """

    origins: np.ndarray
    starts: np.ndarray
    dirs: np.ndarray

    def __len__(self) -> int:
        return self.dirs.shape[1]

    def group(self, g: int) -> slice:
        return slice(int(self.starts[g]), int(self.starts[g + 1]))

    def aos(self, out: np.ndarray | None = None) -> np.ndarray:
        """(R, 6) float32 ``[ox, oy, oz, dx, dy, dz]``, the layout Open3D takes.

        Written column by column: numpy copies a (3, R) block into (R, 3) columns with a 3-long
        inner loop, several times slower than six strided 1-D copies."""
        out = np.empty((len(self), 6), np.float32) if out is None else out
        for j in range(3):
            out[:, 3 + j] = self.dirs[j]
        for g in range(len(self.origins)):
            sl = self.group(g)
            for j in range(3):
                out[sl, j] = self.origins[g][j]
        return out


@dataclass
class MaterialTables:
    """Reflectivity (S + D + M + 1,) float32 and colour (S + D + M + 1, 3) uint8 of every surface a
    ray can hit, indexed by surface id: the S static triangles, the D dynamic triangles (road
    users, object ``(id - S) // TRIANGLES_PER_OBJECT``), the M ground materials, then a miss
    (reflectivity 0, black); Embree's invalid id (2**32 - 1) clips to the miss."""

    reflectivity: np.ndarray
    color: np.ndarray
    dynamic_start: int
    ground_start: int

    @staticmethod
    def of(static: Mesh, dynamic: Mesh) -> "MaterialTables":
        from coperception.sim.ground import COLOR, REFLECTIVITY
        refl = np.concatenate([static.reflectivity, dynamic.reflectivity, REFLECTIVITY, [0.0]]).astype(np.float32)
        color = np.concatenate([static.color, dynamic.color, COLOR, [[0, 0, 0]]]).astype(np.uint8)
        s, d = len(static.reflectivity), len(dynamic.reflectivity)
        return MaterialTables(refl, color, s, s + d)

    def object_index(self, surface: np.ndarray) -> np.ndarray:
        """(N,) int64 road-user index of surface ids (N,) uint32; NO_OBJECT for anything else."""
        rel = surface - np.uint32(self.dynamic_start)  # wraps below the dynamic block
        dyn = np.flatnonzero(rel < np.uint32(self.ground_start - self.dynamic_start))  # a small share
        out = np.full(len(surface), NO_OBJECT, np.int64)
        out[dyn] = np.take(rel, dyn) // np.uint32(TRIANGLES_PER_OBJECT)
        return out


class Hits:
    """First hits of a :class:`RayBatch` on the meshes and the analytic ground.

    t: (R,) float32 distance along the unit ray, inf on a miss; surface: (R,) uint32 surface id
    (see :class:`MaterialTables`); ground: the rays whose first hit is the ground
    (:class:`~coperception.sim.ground.GroundHits`, nearer than the mesh hit); normals: (R, 3) float32 Embree's triangle
    normals (not facing-corrected; meaningless where the ground was hit).
    """

    def __init__(self, rays: RayBatch, mesh: dict, ground, tables: MaterialTables):
        from coperception.sim.ground import GroundHits
        self.rays, self.tables = rays, tables
        self.t, self.surface_ids, self.normals = mesh["t_hit"], mesh["primitive_ids"], mesh["primitive_normals"]
        ground = GroundHits.empty() if ground is None else ground
        self.ground = ground
        # In place (Open3D's output buffers are ours): the ground's distances and surface ids.
        self.t[ground.index] = ground.t
        self.surface_ids[ground.index] = np.uint32(tables.ground_start) + ground.material.astype(np.uint32)

    def __len__(self) -> int:
        return len(self.t)

    @property
    def on_ground(self) -> np.ndarray:
        """(R,) bool: the first hit is the ground."""
        out = np.zeros(len(self.t), bool)
        out[self.ground.index] = True
        return out

    def cos_incidence(self, stop: int) -> np.ndarray:
        """(stop,) float32 |cos| of the angle between rays ``0 .. stop - 1`` and the surface they
        hit (0 on a miss)."""
        n, d = self.normals, self.rays.dirs
        cos = n[:stop, 0] * d[0, :stop]
        cos += n[:stop, 1] * d[1, :stop]
        cos += n[:stop, 2] * d[2, :stop]
        np.abs(cos, out=cos)
        g = self.ground
        k = np.searchsorted(g.index, stop)
        cos[g.index[:k]] = g.cos[:k]
        return cos

    def surface(self, sl: slice = slice(None)):
        """For rays ``sl``: object index (n,) (NO_OBJECT for anything but a road user),
        reflectivity (n,) float32, colour (n, 3) uint8 (0 on a miss) and the unit normal (n, 3)
        float32 of the surface hit, turned to face the ray."""
        sid = self.surface_ids[sl]
        obj = self.tables.object_index(sid)
        refl = np.take(self.tables.reflectivity, sid, mode="clip")
        color = np.take(self.tables.color, sid, axis=0, mode="clip")
        normal = self.normals[sl].copy()
        lo = sl.start or 0
        a, b = np.searchsorted(self.ground.index, [lo, lo + len(sid)])
        normal[self.ground.index[a:b] - lo] = np.eye(3, dtype=np.float32)[self.ground.axis[a:b]]
        d = self.rays.dirs[:, sl]
        facing = np.sign(normal[:, 0] * d[0] + normal[:, 1] * d[1] + normal[:, 2] * d[2])
        normal *= -np.where(facing == 0, 1.0, facing)[:, None].astype(np.float32)
        return obj, refl, color, normal


def cast_rays(static: Mesh, dynamic: Mesh, rays: RayBatch, ground=None, nthreads: int = 0,
              buffer: np.ndarray | None = None, aos_ready: bool = False) -> Hits:
    """Cast ``rays`` at the two meshes (one Embree geometry: triangle ids index both, static
    first) and, if given, the analytic :class:`~coperception.sim.ground.Ground`.

    buffer: a reusable (R, 6) float32 array (``aos_ready``: it already holds the rays)."""
    scene = o3d.t.geometry.RaycastingScene()
    mesh = Mesh.concat([static, dynamic])
    if len(mesh.triangles):
        scene.add_triangles(o3d.core.Tensor(mesh.vertices), o3d.core.Tensor(mesh.triangles))
    aos = buffer if aos_ready else rays.aos(buffer)
    out = scene.cast_rays(o3d.core.Tensor.from_numpy(np.ascontiguousarray(aos)), nthreads=nthreads)
    # .numpy() views share memory with the tensors and keep them alive (their base is a capsule).
    mesh_hits = {k: out[k].numpy() for k in ("t_hit", "primitive_ids", "primitive_normals")}
    ground_hits = None if ground is None else ground.intersect_sparse(rays, mesh_hits["t_hit"])
    return Hits(rays, mesh_hits, ground_hits, MaterialTables.of(static, dynamic))


def count_hits(obj: np.ndarray, group: np.ndarray, n_groups: int, n_objects: int) -> np.ndarray:
    """Hits per (group, object): obj (H,) object indices (NO_OBJECT ignored), group (H,) e.g. the
    agent of each return -> (n_groups, n_objects) int32 counts."""
    keep = obj >= 0
    flat = group[keep].astype(np.int64) * n_objects + obj[keep]
    return np.bincount(flat, minlength=n_groups * n_objects).reshape(n_groups, n_objects).astype(np.int32)
