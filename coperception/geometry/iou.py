"""Rotated bird's-eye-view IoU of boxes, vectorised in torch (CPU and CUDA).

The BEV footprint of a box is the convex quadrilateral of its bottom corners 0-3 (OpenCOOD's
corner order, see :mod:`coperception.geometry.boxes`); OpenCOOD evaluates detections with the
IoU of exactly these polygons (shapely, one pair at a time). Here the intersection area of two
convex quadrilaterals is computed for many pairs at once by convex polygon clipping: each edge
of one polygon is clipped to the other with the parametric line clipping of Cyrus and Beck
("Generalized two- and three-dimensional clipping", Computers & Graphics, 1978), and the area of
the intersection follows from Green's theorem as half the sum of ``cross(start, end)`` over the
clipped edges of both polygons (the boundary of the intersection). Every pair costs a fixed
4 x 4 edge/half-plane table, so the work is a fixed-size tensor program with no loop over
boxes and no sorting of vertices. Edges lying on each other (identical boxes, yaw vs yaw + pi,
touching boxes, a box inside another sharing an edge) are detected within a tolerance and
counted once, or not at all when the polygons only touch.

Pairs whose axis-aligned ("standup") bounds do not overlap have IoU 0 and are skipped, so
pairwise IoU of a scene costs about the number of overlapping pairs, not N x M.

All public functions take ``torch.Tensor`` or ``np.ndarray`` and return the same kind. Float64
inputs agree with shapely's polygon IoU to ~1e-12; float32 to ~1e-5. Half precision inputs
are computed in float32. Inputs are not validated here (hot path): check boxes with
:func:`coperception.geometry.boxes.validate_boxes` where they enter the library.
"""

from __future__ import annotations

import numpy as np
import torch

from coperception.geometry.boxes import boxes_to_bev_corners

#: Pairs per chunk of the intersection kernel: ~2 KiB of temporaries per pair in float64, so a
#: chunk stays in cache (measured ~2x faster than one big batch on CPU).
_CHUNK_PAIRS = 1 << 13


def _to_torch(x) -> tuple[torch.Tensor, bool]:
    if isinstance(x, torch.Tensor):
        t, was_numpy = x, False
    else:
        t, was_numpy = torch.from_numpy(np.ascontiguousarray(x)), True
    if t.dtype not in (torch.float32, torch.float64):
        t = t.to(torch.float32 if t.is_floating_point() else torch.float64)
    return t, was_numpy


def _back(t: torch.Tensor, was_numpy: bool):
    return t.cpu().numpy() if was_numpy else t


def _cross(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]


def _signed_area(quads: torch.Tensor) -> torch.Tensor:
    """(..., 4, 2) -> (...) shoelace area, positive for counter-clockwise winding."""
    return 0.5 * _cross(quads, quads.roll(-1, dims=-2)).sum(-1)


def _counter_clockwise(quads: torch.Tensor) -> torch.Tensor:
    """Reverse the winding of clockwise quads so that every quad is counter-clockwise."""
    clockwise = _signed_area(quads) < 0
    if not clockwise.any():  # the common case: boxes_to_bev_corners yields counter-clockwise quads
        return quads
    return torch.where(clockwise[..., None, None], quads[..., [0, 3, 2, 1], :], quads)


def _tolerance(dtype: torch.dtype) -> float:
    return 1e-10 if dtype == torch.float64 else 1e-5


def _edges_inside(p: torch.Tensor, q: torch.Tensor, keep_shared: bool, tol: float) -> torch.Tensor:
    """Fraction (K, 4) of each edge of p that lies inside q (Cyrus-Beck parametric clipping).

    p, q: (K, 4, 2) counter-clockwise convex quads near the origin. Edge i of p,
    ``p_i + t d_i, t in [0, 1]``, is inside q's half-plane j where
    ``f(t) = cross(e_j, p_i - q_j) + t cross(e_j, d_i) >= 0``; the inside part is the interval
    [max of the entering bounds, min of the leaving bounds]. An edge lying on a q edge's line
    (within ``tol``) is inside if the two run the same way and ``keep_shared`` (so a boundary
    shared by both polygons is counted once, for p only), else outside (opposite directions
    mean the polygons only touch there).
    """
    px, py = p[..., 0][:, :, None], p[..., 1][:, :, None]  # (K, 4 edges of p, 1)
    nxt = p.roll(-1, dims=-2)
    dx, dy = (nxt[..., 0] - p[..., 0])[:, :, None], (nxt[..., 1] - p[..., 1])[:, :, None]
    qn = q.roll(-1, dims=-2)
    qx, qy = q[..., 0][:, None, :], q[..., 1][:, None, :]  # (K, 1, 4 half-planes of q)
    ex, ey = (qn[..., 0] - q[..., 0])[:, None, :], (qn[..., 1] - q[..., 1])[:, None, :]
    a = ex * (py - qy) - ey * (px - qx)  # (K, 4, 4): f(0)
    b = ex * dy - ey * dx  # f'(t)
    d_len, e_len = torch.hypot(dx, dy), torch.hypot(ex, ey)
    extent = p.abs().amax(dim=(-2, -1))[:, None, None] + q.abs().amax(dim=(-2, -1))[:, None, None]
    parallel = b.abs() <= tol * d_len * e_len
    on_line = parallel & (a.abs() <= tol * extent * e_len)
    same_way = (dx * ex + dy * ey) > 0
    parallel_inside = torch.where(on_line, same_way & keep_shared, a > 0)
    ratio = -a / torch.where(parallel, torch.ones_like(b), b)
    t0 = torch.where(~parallel & (b > 0), ratio, torch.zeros_like(ratio)).amax(-1).clamp(min=0)
    t1 = torch.where(~parallel & (b < 0), ratio, torch.ones_like(ratio)).amin(-1).clamp(max=1)
    blocked = (parallel & ~parallel_inside).any(-1)
    return torch.where(blocked, torch.zeros_like(t0), (t1 - t0).clamp(min=0))


def _intersection_area(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """(K, 4, 2), (K, 4, 2) counter-clockwise convex quads -> (K,) area of their intersection.

    Green's theorem: the area is half the sum of ``cross(start, end)`` over the boundary of
    p ∩ q, which is made of the parts of p's edges inside q and of q's edges inside p. For an
    edge ``p_i + t d_i`` clipped to ``[t0, t1]`` that term is ``(t1 - t0) * cross(p_i, d_i)``.
    """
    origin = p.mean(-2, keepdim=True)  # work near the origin: far-away boxes keep their precision
    p, q = p - origin, q - origin
    tol = _tolerance(p.dtype)
    p_next, q_next = p.roll(-1, dims=-2), q.roll(-1, dims=-2)
    p_terms = _edges_inside(p, q, True, tol) * _cross(p, p_next)  # cross(p_i, d_i) == cross(p_i, p_i+1)
    q_terms = _edges_inside(q, p, False, tol) * _cross(q, q_next)
    return (0.5 * (p_terms.sum(-1) + q_terms.sum(-1))).clamp(min=0)


def _quad_iou_pairs(p: torch.Tensor, q: torch.Tensor, area_p: torch.Tensor, area_q: torch.Tensor) -> torch.Tensor:
    """IoU of aligned (K, 4, 2) counter-clockwise quads with known (K,) areas, in chunks."""
    out = []
    for start in range(0, len(p), _CHUNK_PAIRS):
        sl = slice(start, start + _CHUNK_PAIRS)
        inter = _intersection_area(p[sl], q[sl])
        union = area_p[sl] + area_q[sl] - inter
        iou = torch.where(union > 0, inter / union.clamp(min=torch.finfo(union.dtype).tiny), torch.zeros_like(inter))
        out.append(iou.clamp(0, 1))
    return torch.cat(out) if out else p.new_zeros(0)


def _standup(quads: torch.Tensor) -> torch.Tensor:
    return torch.cat([quads.amin(-2), quads.amax(-2)], dim=-1)


def _pairwise_quad_iou(a: torch.Tensor, b: torch.Tensor, valid_a: torch.Tensor | None = None,
                       valid_b: torch.Tensor | None = None) -> torch.Tensor:
    """(B, N, 4, 2) x (B, M, 4, 2) -> (B, N, M); pairs with a False validity mask get 0."""
    a, b = _counter_clockwise(a), _counter_clockwise(b)
    sa, sb = _standup(a), _standup(b)
    overlap = ((sa[:, :, None, 0] < sb[:, None, :, 2]) & (sb[:, None, :, 0] < sa[:, :, None, 2])
               & (sa[:, :, None, 1] < sb[:, None, :, 3]) & (sb[:, None, :, 1] < sa[:, :, None, 3]))
    if valid_a is not None:
        overlap &= valid_a[:, :, None]
    if valid_b is not None:
        overlap &= valid_b[:, None, :]
    bi, ni, mi = overlap.nonzero(as_tuple=True)
    out = a.new_zeros(overlap.shape)
    area_a, area_b = _signed_area(a), _signed_area(b)
    out[bi, ni, mi] = _quad_iou_pairs(a[bi, ni], b[bi, mi], area_a[bi, ni], area_b[bi, mi])
    return out


def quad_iou(a, b, valid_a=None, valid_b=None):
    """Pairwise IoU of convex quadrilaterals: (N, 4, 2), (M, 4, 2) -> (N, M), or batched (B, ...) -> (B, N, M).

    Either winding is accepted. (N, 8, 3) corner arrays may be passed: their first four corners
    (x, y) are used, as in OpenCOOD's evaluation. valid_a (…, N) and valid_b (…, M) bool masks
    mark padding rows of ragged batches: pairs involving them get IoU 0 at no cost.
    """
    ta, was_numpy = _to_torch(a)
    tb, _ = _to_torch(b)
    ta, tb = ta[..., :4, :2], tb[..., :4, :2]
    dtype = torch.promote_types(ta.dtype, tb.dtype)
    ta, tb = ta.to(dtype), tb.to(dtype)
    masks = [None if v is None else torch.as_tensor(v, dtype=torch.bool, device=ta.device) for v in (valid_a, valid_b)]
    batched = ta.dim() == 4
    if not batched:
        ta, tb = ta[None], tb[None]
        masks = [None if m is None else m[None] for m in masks]
    out = _pairwise_quad_iou(ta, tb, *masks)
    return _back(out if batched else out[0], was_numpy)


def quad_iou_aligned(a, b):
    """IoU of matching rows of convex quadrilaterals: (N, 4, 2), (N, 4, 2) -> (N,)."""
    ta, was_numpy = _to_torch(a)
    tb, _ = _to_torch(b)
    dtype = torch.promote_types(ta.dtype, tb.dtype)
    ta, tb = _counter_clockwise(ta[..., :4, :2].to(dtype)), _counter_clockwise(tb[..., :4, :2].to(dtype))
    shape = ta.shape[:-2]
    ta, tb = ta.reshape(-1, 4, 2), tb.reshape(-1, 4, 2)
    out = _quad_iou_pairs(ta, tb, _signed_area(ta), _signed_area(tb))
    return _back(out.reshape(shape), was_numpy)


def bev_iou(a, b):
    """Pairwise rotated BEV IoU of boxes ``[x, y, z, l, w, h, yaw]``.

    a: (N, 7), b: (M, 7) -> (N, M); or batched a: (B, N, 7), b: (B, M, 7) -> (B, N, M).
    Torch in, torch out (same device); numpy in, numpy out.
    """
    ta, was_numpy = _to_torch(a)
    tb, _ = _to_torch(b)
    return _back(quad_iou(boxes_to_bev_corners(ta), boxes_to_bev_corners(tb)), was_numpy)


def bev_iou_aligned(a, b):
    """Rotated BEV IoU of matching rows: (N, 7), (N, 7) -> (N,)."""
    ta, was_numpy = _to_torch(a)
    tb, _ = _to_torch(b)
    return _back(quad_iou_aligned(boxes_to_bev_corners(ta), boxes_to_bev_corners(tb)), was_numpy)


def standup_iou(a, b):
    """Pairwise IoU of axis-aligned rectangles ``[xmin, ymin, xmax, ymax]``: (..., N, 4), (..., M, 4) -> (..., N, M).

    Use :func:`coperception.geometry.boxes.boxes_to_standup` to get the rectangles of boxes.
    """
    ta, was_numpy = _to_torch(a)
    tb, _ = _to_torch(b)
    ta, tb = ta[..., :, None, :], tb[..., None, :, :]
    iw = (torch.minimum(ta[..., 2], tb[..., 2]) - torch.maximum(ta[..., 0], tb[..., 0])).clamp(min=0)
    ih = (torch.minimum(ta[..., 3], tb[..., 3]) - torch.maximum(ta[..., 1], tb[..., 1])).clamp(min=0)
    inter = iw * ih
    area_a = (ta[..., 2] - ta[..., 0]) * (ta[..., 3] - ta[..., 1])
    area_b = (tb[..., 2] - tb[..., 0]) * (tb[..., 3] - tb[..., 1])
    union = area_a + area_b - inter
    out = torch.where(union > 0, inter / union.clamp(min=torch.finfo(union.dtype).tiny), torch.zeros_like(inter))
    return _back(out, was_numpy)
