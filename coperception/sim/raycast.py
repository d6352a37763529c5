"""Triangle meshes of the world and batched ray casting with Open3D's ``RaycastingScene``
(Embree), or, where Open3D cannot be installed (e.g. a Python without its wheels, a GPU
machine), with a brute-force torch caster that runs on CUDA when there is one
(:func:`cast_torch`; ``COPERCEPTION_RAYCAST=embree|torch`` forces either).

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

import os
from dataclasses import dataclass

import numpy as np

from coperception.sim.objects import PARTS_PER_OBJECT

try:
    import open3d as o3d
except ImportError:  # the torch caster below takes over
    o3d = None

#: Embree's "no hit" primitive id.
INVALID_ID = np.uint32(2**32 - 1)

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
    mesh = Mesh.concat([static, dynamic])
    if raycast_backend() == "torch":
        mesh_hits = cast_torch(mesh, rays)
    else:
        scene = o3d.t.geometry.RaycastingScene()
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


def raycast_backend() -> str:
    """"embree" (Open3D) when it imports, else "torch"; ``COPERCEPTION_RAYCAST`` overrides."""
    forced = os.environ.get("COPERCEPTION_RAYCAST", "").strip().lower()
    if forced not in ("", "embree", "torch"):
        from coperception.errors import ConfigError
        raise ConfigError(f"COPERCEPTION_RAYCAST must be 'embree' or 'torch', got {forced!r}")
    if forced == "embree" and o3d is None:
        from coperception.errors import ConfigError
        raise ConfigError("COPERCEPTION_RAYCAST=embree but open3d does not import here "
                          "(Debian: apt-get install libusb-1.0-0; or use the torch caster)")
    return forced or ("embree" if o3d is not None else "torch")


def cast_torch(mesh: Mesh, rays: RayBatch, device=None, chunk_pairs: int | None = None) -> dict[str, np.ndarray]:
    """First hits of ``rays`` on ``mesh`` by brute force in torch (CUDA when available): the
    Moller-Trumbore test ("Fast, Minimum Storage Ray/Triangle Intersection", 1997) of every ray
    against every triangle, written so that the per-ray work is three dot products: rays of one
    group share an origin ``o``, so with ``e1 = v1 - v0``, ``e2 = v2 - v0``, ``s = o - v0`` the
    determinant, the two barycentric numerators and the distance numerator are
    ``d . (e2 x e1)``, ``d . (e2 x s)``, ``d . (s x e1)`` and ``e2 . (s x e1)`` -- one (n, 3) x
    (3, 3T) matrix product per chunk of rays.

    Returns Open3D's ``cast_rays`` fields as numpy: ``t_hit`` (R,) float32 (inf on a miss),
    ``primitive_ids`` (R,) uint32 (2**32 - 1 on a miss), ``primitive_normals`` (R, 3) float32
    unit normals ``e1 x e2`` of the hit triangle (0 on a miss). chunk_pairs bounds the
    ray x triangle pairs held at once, ~45 bytes each (default 2**27 on CUDA, ~6 GB; 2**24 on
    the CPU, ~0.75 GB).
    """
    import torch

    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if chunk_pairs is None:
        chunk_pairs = 1 << 27 if dev.type == "cuda" else 1 << 24
    r = len(rays)
    t_out = np.full(r, np.inf, np.float32)
    id_out = np.full(r, INVALID_ID, np.uint32)
    n_out = np.zeros((r, 3), np.float32)
    if r == 0 or len(mesh.triangles) == 0:
        return {"t_hit": t_out, "primitive_ids": id_out, "primitive_normals": n_out}
    verts = torch.from_numpy(np.ascontiguousarray(mesh.vertices, np.float32)).to(dev)
    tris = torch.from_numpy(mesh.triangles.astype(np.int64)).to(dev)
    v0, v1, v2 = verts[tris[:, 0]], verts[tris[:, 1]], verts[tris[:, 2]]
    e1, e2 = v1 - v0, v2 - v0
    a = torch.linalg.cross(e2, e1)
    normal = torch.linalg.cross(e1, e2)
    normal = normal / normal.norm(dim=1, keepdim=True).clamp(min=1e-20)
    num_tris = tris.shape[0]
    step = max(1, chunk_pairs // num_tris)
    dirs = torch.from_numpy(np.ascontiguousarray(rays.dirs.T, np.float32)).to(dev)  # (R, 3)
    t_all = torch.full((r,), float("inf"), device=dev)
    id_all = torch.full((r,), -1, dtype=torch.int64, device=dev)
    for g in range(len(rays.origins)):
        sl = rays.group(g)
        if sl.stop <= sl.start:
            continue
        s = torch.as_tensor(rays.origins[g], dtype=torch.float32, device=dev) - v0  # (T, 3)
        b = torch.linalg.cross(e2, s)
        q = torch.linalg.cross(s, e1)
        t_num = (e2 * q).sum(dim=1)  # (T,)
        basis = torch.cat([a, b, q], dim=0).T.contiguous()  # (3, 3T)
        for lo in range(sl.start, sl.stop, step):
            hi = min(lo + step, sl.stop)
            det, u_num, v_num = (dirs[lo:hi] @ basis).split(num_tris, dim=1)
            inv = 1.0 / det
            u, v, t = u_num * inv, v_num * inv, t_num * inv
            ok = (det.abs() > 1e-12) & (u >= 0) & (v >= 0) & (u + v <= 1) & (t > 0)
            best, idx = torch.where(ok, t, torch.full_like(t, float("inf"))).min(dim=1)
            t_all[lo:hi] = best
            id_all[lo:hi] = torch.where(torch.isfinite(best), idx, torch.full_like(idx, -1))
    hit = id_all >= 0
    normals = torch.where(hit[:, None], normal[id_all.clamp(min=0)], torch.zeros((), device=dev))
    t_out[:] = t_all.cpu().numpy()
    ids = id_all.cpu().numpy()
    id_out[ids >= 0] = ids[ids >= 0].astype(np.uint32)
    n_out[:] = normals.cpu().numpy()
    return {"t_hit": t_out, "primitive_ids": id_out, "primitive_normals": n_out}
