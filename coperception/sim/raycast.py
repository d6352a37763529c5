"""Triangle meshes of the world and batched ray casting with Open3D's ``RaycastingScene``.

The scene of one step is two geometries: the static world (buildings, poles; built once per
scenario as one mesh) and all road users (two boxes of 12 triangles each per object, rebuilt
each step); the flat ground layer is intersected in closed form (:mod:`coperception.sim.ground`)
and merged by distance. All agents' LiDAR and camera rays are cast in one call (Embree BVH
traversal, see Wald et al., "Embree: A Kernel Framework for Efficient CPU Ray Tracing", 2014);
the object hit by a ray is ``primitive_id // TRIANGLES_PER_OBJECT`` of the dynamic geometry, so
per-object hit counts are one ``np.bincount``.
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
        """(R, 6) float32 ``[ox, oy, oz, dx, dy, dz]``, the layout Open3D takes."""
        out = np.empty((len(self), 6), np.float32) if out is None else out
        for g in range(len(self.origins)):
            out[self.group(g), :3] = self.origins[g]
        out[:, 3:] = self.dirs.T
        return out


class Hits:
    """First hits of a :class:`RayBatch` on the meshes and the analytic ground.

    t: (R,) float32 distance along the unit ray, inf on a miss; on_ground: (R,) bool.
    """

    def __init__(self, rays: RayBatch, mesh: dict, ground: tuple | None, static: Mesh, dynamic: Mesh,
                 ids: dict[str, int]):
        self.rays, self._mesh, self._ground = rays, mesh, ground
        self._static, self._dynamic, self._ids = static, dynamic, ids
        t_mesh = mesh["t_hit"]
        if ground is None:
            self.on_ground = np.zeros(len(t_mesh), bool)
            self.t = t_mesh
        else:
            self.on_ground = ground[0] < t_mesh
            self.t = np.where(self.on_ground, ground[0], t_mesh)

    def __len__(self) -> int:
        return len(self.t)

    def _is_dynamic(self, geom: np.ndarray, ground: np.ndarray) -> np.ndarray:
        return (geom == np.uint32(self._ids.get("dynamic", 2 ** 32 - 2))) & ~ground

    def lidar_terms(self, tables: "MaterialTables", sl: slice = slice(None)
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Whole-array terms for LiDAR returns of rays ``sl``: reflectivity (R,) float32,
        |cos incidence| (R,) float32 and object index (R,) int64 (NO_OBJECT off road users)."""
        geom, prim, ground = self._mesh["geometry_ids"][sl], self._mesh["primitive_ids"][sl], self.on_ground[sl]
        is_dyn = self._is_dynamic(geom, ground)
        tri = np.minimum(prim + np.where(is_dyn, np.uint32(tables.dynamic_start), np.uint32(0)),
                         np.uint32(len(tables.reflectivity) - 1))
        refl = tables.reflectivity[tri]
        d, n = self.rays.dirs[:, sl], self._mesh["primitive_normals"][sl]
        cos = np.abs(n[:, 0] * d[0] + n[:, 1] * d[1] + n[:, 2] * d[2])
        obj = np.where(is_dyn, (prim // np.uint32(TRIANGLES_PER_OBJECT)).astype(np.int64), np.int64(NO_OBJECT))
        if self._ground is not None:
            from coperception.sim.ground import REFLECTIVITY
            material, axis = self._ground[1][sl], self._ground[2][sl]
            refl = np.where(ground, REFLECTIVITY[material], refl)
            ground_cos = np.abs(np.where(axis == 2, d[2], np.where(axis == 0, d[0], d[1])))
            cos = np.where(ground, ground_cos, cos)
        return refl, cos, obj

    def surface(self, sl: slice = slice(None)):
        """For rays ``sl``: object index (n,) (NO_OBJECT for anything but a road user),
        reflectivity (n,) float32, colour (n, 3) uint8 (0 on a miss) and the unit normal (n, 3)
        float32 of the surface hit, turned to face the ray."""
        geom = self._mesh["geometry_ids"][sl]
        prim = self._mesh["primitive_ids"][sl].astype(np.int64)
        normal = self._mesh["primitive_normals"][sl].copy()
        ground = self.on_ground[sl]
        is_static = (geom == np.uint32(self._ids.get("static", 2 ** 32 - 2))) & ~ground
        is_dynamic = self._is_dynamic(geom, ground)
        obj = np.where(is_dynamic, prim // TRIANGLES_PER_OBJECT, NO_OBJECT)
        refl = np.zeros(len(geom), np.float32)
        color = np.zeros((len(geom), 3), np.uint8)
        for mask, mesh in ((is_static, self._static), (is_dynamic, self._dynamic)):
            if mask.any():
                refl[mask] = mesh.reflectivity[prim[mask]]
                color[mask] = mesh.color[prim[mask]]
        if ground.any():
            from coperception.sim.ground import COLOR, REFLECTIVITY
            material, axis = self._ground[1][sl][ground], self._ground[2][sl][ground]
            refl[ground], color[ground] = REFLECTIVITY[material], COLOR[material]
            normal[ground] = np.eye(3, dtype=np.float32)[axis]
        d = self.rays.dirs[:, sl].T
        facing = np.sign(np.einsum("ij,ij->i", normal, d))
        normal *= -np.where(facing == 0, 1.0, facing)[:, None].astype(np.float32)
        return obj, refl, color, normal


@dataclass
class MaterialTables:
    """Per-triangle reflectivity of the static mesh followed by the dynamic mesh's (plus a zero
    entry for misses); ``dynamic_start`` is where the dynamic triangles begin."""

    reflectivity: np.ndarray
    dynamic_start: int

    @staticmethod
    def of(static: Mesh, dynamic: Mesh) -> "MaterialTables":
        refl = np.concatenate([static.reflectivity, dynamic.reflectivity, [0.0]]).astype(np.float32)
        return MaterialTables(refl, len(static.reflectivity))


def cast_rays(static: Mesh, dynamic: Mesh, rays: RayBatch, ground=None, nthreads: int = 0,
              buffer: np.ndarray | None = None) -> Hits:
    """Cast ``rays`` at the two meshes and, if given, the analytic
    :class:`~coperception.sim.ground.Ground`; ``buffer``: a reusable (R, 6) float32 array."""
    scene = o3d.t.geometry.RaycastingScene()
    ids = {}
    for name, mesh in (("static", static), ("dynamic", dynamic)):
        if len(mesh.triangles):
            ids[name] = scene.add_triangles(o3d.core.Tensor(mesh.vertices), o3d.core.Tensor(mesh.triangles))
    out = scene.cast_rays(o3d.core.Tensor(rays.aos(buffer)), nthreads=nthreads)
    # .numpy() views share memory with the tensors and keep them alive (their base is a capsule).
    mesh = {k: out[k].numpy() for k in ("t_hit", "geometry_ids", "primitive_ids", "primitive_normals")}
    ground_hits = None if ground is None else ground.intersect(rays, mesh["t_hit"])
    return Hits(rays, mesh, ground_hits, static, dynamic, ids)


def count_hits(obj: np.ndarray, group: np.ndarray, n_groups: int, n_objects: int) -> np.ndarray:
    """Hits per (group, object): obj (H,) object indices (NO_OBJECT ignored), group (H,) e.g. the
    agent of each return -> (n_groups, n_objects) int32 counts."""
    keep = obj >= 0
    flat = group[keep].astype(np.int64) * n_objects + obj[keep]
    return np.bincount(flat, minlength=n_groups * n_objects).reshape(n_groups, n_objects).astype(np.int32)
