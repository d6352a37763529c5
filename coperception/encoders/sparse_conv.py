"""Sparse 3D convolutions in plain torch (CPU and CUDA), interchangeable with spconv.

Submanifold and regular sparse convolutions as used by SECOND (Yan et al., "SECOND: Sparsely
Embedded Convolutional Detection", 2018) and "Submanifold Sparse Convolutional Networks"
(Graham & van der Maaten, 2017). spconv's CUDA wheels cannot be installed everywhere, so this
module carries a second backend written only with torch ops, and layer modules that run on
either: :class:`SparseConv3d` holds one weight and dispatches on the input tensor's type
(:class:`SparseTensor` -> torch backend, ``spconv.pytorch.SparseConvTensor`` -> spconv).

Semantics (identical to spconv 2.x, checked in tests against spconv and ``F.conv3d``):

* weight layout ``(C_out, kz, ky, kx, C_in)`` (spconv's "KRSC"); ``F.conv3d`` equivalent weight
  is ``weight.permute(0, 4, 1, 2, 3)``; cross-correlation, like ``F.conv3d``.
* submanifold conv: output sites = input sites, ``out[p] = sum_k W[k] in[p + (k - k//2) * dil]``.
* regular conv: ``out[o] = sum_k W[k] in[o * stride - pad + k * dil]``; an output site exists iff
  at least one active input lies in its receptive field and it is inside the output shape
  ``floor((n + 2 pad - dil (k - 1) - 1) / stride) + 1``.

How (no loop over voxels): sites are hashed to linear keys ``((b*D + z)*H + y)*W + x`` and
sorted once; neighbours of all sites for all kernel offsets are found with one
``searchsorted`` (submanifold) or enumerated from the inputs and de-duplicated with one
``unique`` (regular). The rule book, a (K, N_out) table of input rows, drives one of two
feature computations (:func:`apply_rulebook`): "scatter", per kernel offset gather -> matmul ->
``index_add_`` over its active pairs (CPU default), or "gather", one gather of all neighbours
and one matmul per layer (CUDA default: few kernel launches, 3x faster training on an H100).
Rule books of submanifold convs are cached on the tensor and reused by every later submanifold
conv on the same sites.

spconv 2.3.8 quirks met on the way (why the tests compare the backends on one CPU thread and
why 1x1x1 convs bypass spconv): its CPU kernels lose updates when torch runs several threads;
its CPU backward calls ``torch.cuda.current_stream()``; its 1x1x1 conv reads a KRSC weight as
(C_in, C_out); and it needs contiguous int32 indices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import nn

from coperception.errors import ConfigError


def _triple(v: int | Sequence[int], what: str) -> tuple[int, int, int]:
    t = (int(v),) * 3 if isinstance(v, int) else tuple(int(x) for x in v)
    if len(t) != 3:
        raise ConfigError(f"{what} must be an int or 3 ints (z, y, x), got {v}")
    return t  # type: ignore[return-value]


@dataclass
class Rulebook:
    """Which input site feeds which output site through each kernel offset.

    neighbours: (K, N_out) int64, the input row feeding output site n through offset k (offsets
        in row-major (kz, ky, kx) order), -1 where that input site is inactive.
    out_indices: (N_out, 4) int64 ``[b, z, y, x]`` of the output sites; out_shape: (D, H, W).
    identity_offset: for a submanifold conv, the offset that maps every site to itself.
    """

    neighbours: torch.Tensor
    out_indices: torch.Tensor
    out_shape: tuple[int, int, int]
    identity_offset: int | None = None
    _pairs: list[tuple[torch.Tensor, torch.Tensor]] | None = field(default=None, repr=False)

    def pairs(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per offset, (P_k,) input rows and (P_k,) output rows of its active pairs (computed once)."""
        if self._pairs is None:
            found = self.neighbours >= 0
            counts = found.sum(dim=1).tolist()  # one host sync
            k_out = found.nonzero()  # (P, 2) [k, out], sorted by k
            ins = self.neighbours[k_out[:, 0], k_out[:, 1]]
            self._pairs = list(zip(torch.split(ins, counts), torch.split(k_out[:, 1], counts)))
        return self._pairs


@dataclass
class SparseTensor:
    """A batch of sparse 3D feature grids (the torch backend's counterpart of spconv's tensor).

    features: (N, C) float, one row per active site.
    indices: (N, 4) int64 ``[batch, z, y, x]``, unique, inside ``spatial_shape``.
    spatial_shape: (D, H, W) voxels along z, y, x.
    batch_size: B.
    """

    features: torch.Tensor
    indices: torch.Tensor
    spatial_shape: tuple[int, int, int]
    batch_size: int
    rulebooks: dict[Any, Rulebook] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.spatial_shape = tuple(int(s) for s in self.spatial_shape)  # type: ignore[assignment]
        if self.features.ndim != 2 or self.indices.shape != (self.features.shape[0], 4):
            raise ConfigError(f"SparseTensor needs features (N, C) and indices (N, 4), got "
                              f"{tuple(self.features.shape)} and {tuple(self.indices.shape)}")
        self.indices = self.indices.to(device=self.features.device, dtype=torch.int64)

    def replace_feature(self, features: torch.Tensor) -> "SparseTensor":
        """Same sites (and cached rule books), new (N, C') features."""
        return SparseTensor(features, self.indices, self.spatial_shape, self.batch_size, self.rulebooks)

    def dense(self) -> torch.Tensor:
        """(B, C, D, H, W) with zeros at inactive sites."""
        return sparse_to_dense(self.features, self.indices, self.spatial_shape, self.batch_size)


def sparse_to_dense(features: torch.Tensor, indices: torch.Tensor, spatial_shape: Sequence[int],
                    batch_size: int) -> torch.Tensor:
    """Scatter (N, C) features at (N, 4) ``[b, z, y, x]`` sites into a (B, C, D, H, W) grid.

    Works for both backends' tensors (their ``features``/``indices`` have the same meaning).
    """
    d, h, w = (int(s) for s in spatial_shape)
    idx = indices.to(device=features.device, dtype=torch.int64)
    flat = ((idx[:, 0] * d + idx[:, 1]) * h + idx[:, 2]) * w + idx[:, 3]
    out = features.new_zeros(batch_size * d * h * w, features.shape[1])
    out = out.index_copy(0, flat, features)
    return out.view(batch_size, d, h, w, -1).permute(0, 4, 1, 2, 3).contiguous()


def _keys(coords: torch.Tensor, batch: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Linear keys of (..., 3) ``[z, y, x]`` coordinates and (...) batch indices."""
    d, h, w = shape
    return ((batch * d + coords[..., 0]) * h + coords[..., 1]) * w + coords[..., 2]


def kernel_offsets(kernel_size: Sequence[int], device: torch.device | None = None) -> torch.Tensor:
    """(K, 3) int64 ``[kz, ky, kx]`` positions in the kernel, row-major (the weight's order)."""
    grids = torch.meshgrid(*[torch.arange(int(k), device=device) for k in kernel_size], indexing="ij")
    return torch.stack(grids, dim=-1).reshape(-1, 3)


def subm_rulebook(indices: torch.Tensor, spatial_shape: Sequence[int], kernel_size: Sequence[int],
                  dilation: Sequence[int]) -> Rulebook:
    """Rule book of a submanifold conv: for site p and offset k, the input at p + (k - k//2)*dil."""
    if any(k % 2 == 0 for k in kernel_size):
        raise ConfigError(f"submanifold convolution needs odd kernel sizes, got {tuple(kernel_size)}")
    device, n = indices.device, indices.shape[0]
    shape = torch.tensor(spatial_shape, device=device)
    offs = kernel_offsets(kernel_size, device)
    centre = torch.tensor([k // 2 for k in kernel_size], device=device)
    delta = (offs - centre) * torch.tensor(dilation, device=device)
    keys = _keys(indices[:, 1:], indices[:, 0], spatial_shape)
    sorted_keys, order = torch.sort(keys)
    query = indices[None, :, 1:] + delta[:, None, :]  # (K, N, 3)
    inside = ((query >= 0) & (query < shape)).all(dim=-1)
    qkeys = _keys(query, indices[None, :, 0], spatial_shape)
    pos = torch.searchsorted(sorted_keys, qkeys).clamp_(max=max(n - 1, 0))
    found = inside & (sorted_keys[pos] == qkeys)
    neighbours = torch.where(found, order[pos], -1)
    identity = math.prod(kernel_size) // 2  # the centre of an odd kernel, row-major
    return Rulebook(neighbours, indices, tuple(int(s) for s in spatial_shape), identity)


def conv_output_shape(spatial_shape: Sequence[int], kernel_size: Sequence[int], stride: Sequence[int],
                      padding: Sequence[int], dilation: Sequence[int]) -> tuple[int, int, int]:
    """Output (D, H, W) of a regular conv: ``floor((n + 2p - dil (k - 1) - 1) / s) + 1``."""
    out = tuple((n + 2 * p - d * (k - 1) - 1) // s + 1
                for n, k, s, p, d in zip(spatial_shape, kernel_size, stride, padding, dilation))
    if any(o < 1 for o in out):
        raise ConfigError(f"sparse conv (kernel {tuple(kernel_size)}, stride {tuple(stride)}, padding "
                          f"{tuple(padding)}) on spatial shape {tuple(spatial_shape)} gives empty output {out}")
    return out  # type: ignore[return-value]


def conv_rulebook(indices: torch.Tensor, spatial_shape: Sequence[int], kernel_size: Sequence[int],
                  stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int]) -> Rulebook:
    """Rule book of a regular (strided) conv; output sites are sorted by ``[b, z, y, x]``."""
    device = indices.device
    out_shape = conv_output_shape(spatial_shape, kernel_size, stride, padding, dilation)
    offs = kernel_offsets(kernel_size, device) * torch.tensor(dilation, device=device)
    s = torch.tensor(stride, device=device)
    # o * s = i + pad - k * dil must be a multiple of s and land inside the output shape.
    num = indices[None, :, 1:] + torch.tensor(padding, device=device) - offs[:, None, :]  # (K, N, 3)
    o = torch.div(num, s, rounding_mode="floor")
    found = ((num % s == 0) & (o >= 0) & (o < torch.tensor(out_shape, device=device))).all(dim=-1)
    okeys = _keys(o, indices[None, :, 0], out_shape)
    unique_keys, inverse = torch.unique(okeys[found], return_inverse=True)
    k_in = found.nonzero()  # (P, 2) [offset, input site], in the order of okeys[found]
    neighbours = torch.full((len(offs), len(unique_keys)), -1, dtype=torch.int64, device=device)
    neighbours[k_in[:, 0], inverse] = k_in[:, 1]  # one input per (offset, output): no collisions
    d, h, w = out_shape
    out_indices = torch.stack([unique_keys // (d * h * w), (unique_keys // (h * w)) % d,
                               (unique_keys // w) % h, unique_keys % w], dim=1)
    return Rulebook(neighbours, out_indices, out_shape)


def _gather_matmul(features: torch.Tensor, w: torch.Tensor, neighbours: torch.Tensor) -> torch.Tensor:
    """(N_out, K * C_in) neighbour features (zeros where inactive) times the (K * C_in, C_out) weight.

    Only active pairs are gathered and placed (``index_copy`` into zeros), so the backward pass
    scatters into real rows only; gathering inactive entries from one shared zero row would make
    every backward ``index_add`` hammer that row.
    """
    c_out, k, c_in = w.shape
    n_out = neighbours.shape[1]
    nb = neighbours.t().reshape(-1)  # row n * K + k
    slot = (nb >= 0).nonzero().squeeze(1)
    vals = features.index_select(0, nb[slot])
    cols = vals.new_zeros(n_out * k, c_in).index_copy(0, slot, vals)
    return cols.reshape(n_out, k * c_in) @ w.permute(1, 2, 0).reshape(k * c_in, c_out)


def apply_rulebook(features: torch.Tensor, weight: torch.Tensor, rulebook: Rulebook,
                   method: str | None = None) -> torch.Tensor:
    """Sparse conv of (N_in, C_in) features with a (C_out, kz, ky, kx, C_in) weight -> (N_out, C_out).

    method "gather" (default on CUDA): one gather of every output site's K neighbours, zero rows
    for inactive ones, and one (N_out, K C_in) x (K C_in, C_out) matmul: few kernels, more memory.
    "scatter" (default on CPU): per kernel offset, gather its active pairs -> matmul ->
    ``index_add_``: only active pairs are multiplied.
    """
    method = method or ("gather" if features.is_cuda else "scatter")
    c_out, c_in = weight.shape[0], weight.shape[-1]
    w = weight.reshape(c_out, -1, c_in)
    n_out = rulebook.out_indices.shape[0]
    if method == "gather":
        return _gather_matmul(features, w, rulebook.neighbours)
    if method != "scatter":
        raise ConfigError(f"sparse conv method must be 'gather' or 'scatter', got {method!r}")
    k0 = rulebook.identity_offset
    # The identity offset of a submanifold conv pairs every site with itself: a plain matmul.
    out = features @ w[:, k0].t() if k0 is not None else None
    for k, (i, o) in enumerate(rulebook.pairs()):
        if k == k0 or i.numel() == 0:
            continue
        prod = features.index_select(0, i) @ w[:, k].t()
        if out is None:
            out = prod.new_zeros(n_out, c_out)
        out.index_add_(0, o, prod.to(out.dtype))
    if out is None:  # no pairs at all: keep the graph to the weight
        out = features.new_zeros(n_out, c_out) + 0.0 * weight.sum()
    return out


def _spconv_module(conv: "SparseConv3d") -> nn.Module:
    import spconv.pytorch as spconv

    kw = dict(bias=False, indice_key=conv.indice_key, dilation=conv.dilation)
    if conv.subm:
        return spconv.SubMConv3d(conv.in_channels, conv.out_channels, conv.kernel_size, **kw)
    return spconv.SparseConv3d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                               padding=conv.padding, **kw)


class SparseConv3d(nn.Module):
    """Sparse 3D conv (submanifold if ``subm``) running on either backend with one set of weights.

    weight: (C_out, kz, ky, kx, C_in); bias: (C_out,) or None. ``indice_key`` is passed to spconv
    (rule-book reuse); the torch backend caches submanifold rule books on the tensor by itself.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | Sequence[int] = 3,
                 stride: int | Sequence[int] = 1, padding: int | Sequence[int] = 0,
                 dilation: int | Sequence[int] = 1, subm: bool = False, bias: bool = False,
                 indice_key: str | None = None, method: str | None = None) -> None:
        super().__init__()
        self.method = method  # torch backend: "gather", "scatter" or None (by device), see apply_rulebook
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size = _triple(kernel_size, "kernel_size")
        self.stride, self.padding = _triple(stride, "stride"), _triple(padding, "padding")
        self.dilation = _triple(dilation, "dilation")
        self.subm, self.indice_key = bool(subm), indice_key
        if self.subm and (self.stride != (1, 1, 1)):
            raise ConfigError(f"a submanifold conv has stride 1, got {self.stride}")
        self.weight = nn.Parameter(torch.empty(self.out_channels, *self.kernel_size, self.in_channels))
        self.bias = nn.Parameter(torch.zeros(self.out_channels)) if bias else None
        fan_in = self.in_channels * math.prod(self.kernel_size)
        nn.init.uniform_(self.weight, -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))
        # Not a registered submodule: it borrows this module's weight at every call.
        self.__dict__["_spconv"] = None

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, subm={self.subm}")

    @property
    def pointwise(self) -> bool:
        """A 1x1x1 conv that keeps the sites: a plain matmul on the features."""
        return self.kernel_size == (1, 1, 1) and self.stride == (1, 1, 1) and (self.subm or self.padding == (0, 0, 0))

    def forward(self, x):
        """SparseTensor -> SparseTensor (torch backend); spconv SparseConvTensor -> same type."""
        if self.pointwise:
            # Done here for both backends: spconv 2.3.8's 1x1x1 path reads the weight as (C_in, C_out).
            out = x.features @ self.weight.reshape(self.out_channels, self.in_channels).t()
            return x.replace_feature(out + self.bias if self.bias is not None else out)
        if isinstance(x, SparseTensor):
            return self._forward_torch(x)
        if self.__dict__["_spconv"] is None:
            self.__dict__["_spconv"] = _spconv_module(self)
        impl = self.__dict__["_spconv"]
        impl.weight = self.weight  # share the parameter (no copy); rebound in case .to() replaced it
        impl.train(self.training)
        out = impl(x)
        return out.replace_feature(out.features + self.bias) if self.bias is not None else out

    def _forward_torch(self, x: SparseTensor) -> SparseTensor:
        if self.subm:
            key = ("subm", self.kernel_size, self.dilation)
            rb = x.rulebooks.get(key)
            if rb is None:
                rb = subm_rulebook(x.indices, x.spatial_shape, self.kernel_size, self.dilation)
                x.rulebooks[key] = rb
            cache = x.rulebooks
        else:
            rb = conv_rulebook(x.indices, x.spatial_shape, self.kernel_size, self.stride, self.padding,
                               self.dilation)
            cache = {}
        out = apply_rulebook(x.features, self.weight, rb, self.method)
        if self.bias is not None:
            out = out + self.bias
        return SparseTensor(out, rb.out_indices, rb.out_shape, x.batch_size, cache)


def set_method(module: nn.Module, method: str | None) -> None:
    """Set the torch backend's method ("gather", "scatter", None = by device) of every sparse conv in ``module``."""
    if method not in (None, "gather", "scatter"):
        raise ConfigError(f"sparse conv method must be 'gather', 'scatter' or None, got {method!r}")
    for m in module.modules():
        if isinstance(m, SparseConv3d):
            m.method = method


class SparseBNReLU(nn.Module):
    """BatchNorm1d (+ ReLU) over the active sites' features of either backend's tensor."""

    def __init__(self, channels: int, relu: bool = True) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(channels, eps=1e-3, momentum=0.01)
        self.relu = relu

    def forward(self, x):
        f = x.features
        if self.training and f.shape[0] < 2:
            # Batch statistics need two rows; normalise with the running statistics instead.
            f = nn.functional.batch_norm(f, self.norm.running_mean, self.norm.running_var, self.norm.weight,
                                         self.norm.bias, False, 0.0, self.norm.eps)
        else:
            f = self.norm(f)
        return x.replace_feature(torch.relu(f) if self.relu else f)


class SparseConvBlock(nn.Sequential):
    """conv -> BN -> ReLU (OpenPCDet's ``post_act_block``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | Sequence[int] = 3,
                 stride: int | Sequence[int] = 1, padding: int | Sequence[int] = 0, subm: bool = False,
                 indice_key: str | None = None) -> None:
        super().__init__(SparseConv3d(in_channels, out_channels, kernel_size, stride, padding, subm=subm,
                                      indice_key=indice_key),
                         SparseBNReLU(out_channels))
