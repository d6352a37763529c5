"""Intermediate fusion: combine the ego's BEV map with the maps received from other agents.

Every module here has one interface (:class:`BEVFusion`)::

    forward(features (sum_A, C, H, W), agents_per_sample (B,), ego_from_agent (sum_A, 4, 4),
            mask (sum_A, 1, H, W) | None) -> (B, C, H, W)

The agents of one sample are contiguous and the ego comes first. Each map is in its agent's own
frame; the module warps all of them to the ego's cells in one batched ``grid_sample``
(:mod:`coperception.geometry.warp`), stacks them as (B, L, C, H, W) with L the largest agent count,
and reduces over agents per location. ``mask`` is an optional per-agent selection (1 = cell sent,
in the sender's frame, e.g. Where2comm's request/confidence mask); masked-out cells are zeroed
and, for the methods that look at coverage, count as not observed. A new method subclasses
:class:`BEVFusion` and implements :meth:`BEVFusion.fuse`.

Methods:

* :class:`MaxFusion` -- the ``max`` fusion of OpenCOOD/HEAL: element-wise max over the warped
  maps, with zeros where an agent sees nothing (those zeros take part in the max).
* :class:`FCooperFusion` -- "F-Cooper: Feature based Cooperative Perception for Autonomous Vehicle
  Edge Computing System Using 3D Point Clouds" (Chen et al., SEC 2019). Maxout over the agents
  that actually cover a location; a location covered by one agent keeps that agent's feature.
  ``level="spatial"`` is the paper's Spatial Feature Fusion (SFF: maps after the feature-learning
  network, before the RPN); ``level="voxel"`` is its Voxel Feature Fusion (VFF: per-voxel
  features right after the VFE layers, i.e. the stride-1 scattered pillar/voxel map): voxels are
  moved with nearest sampling instead of being interpolated, and only non-empty voxels take part.
  It differs from :class:`MaxFusion` only where features can be negative (an out-of-view zero
  never wins the max) and, for VFF, in the nearest resampling and the occupancy test; on ReLU
  outputs SFF and MaxFusion give the same map.
* :class:`AttentionFusion` -- AttFuse of "OPV2V: An Open Benchmark Dataset and Fusion Pipeline
  for Perception with Vehicle-to-Vehicle Communication" (Xu et al., ICRA 2022): at each location,
  parameter-free scaled dot-product self-attention over the agents' C-dim feature vectors; the
  ego's output row is kept. Only the ego row is computed (the other rows are discarded anyway).
* :class:`Where2commFusion` -- attention restricted to the cells each agent transmitted.
* :class:`ConfidenceFusion` -- per location, a softmax over the covering agents of each agent's
  own detection confidence (the detector passes the shared head's class logits of every unfused
  map as ``scores``): the agent that sees a location best dominates it.
* :class:`MultiScaleFusion` -- one fusion per backbone level (HEAL/CoAlign multi-scale fusion):
  takes a list of per-level maps, returns the list of fused maps.
"""

from __future__ import annotations

import abc
import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from coperception.errors import ConfigError
from coperception.geometry.grid import BEVGrid
from coperception.geometry.warp import WARP_MODES, warp_with_valid


def _agent_counts(agents_per_sample: torch.Tensor | Sequence[int], num_maps: int) -> list[int]:
    """Validated per-sample agent counts as a Python list (one device sync if given on the GPU)."""
    counts = [int(c) for c in torch.as_tensor(agents_per_sample).reshape(-1).tolist()]
    if not counts or min(counts) < 1:
        raise ValueError(f"agents_per_sample must be non-empty with every entry >= 1, got {counts}")
    if sum(counts) != num_maps:
        raise ValueError(f"agents_per_sample sums to {sum(counts)} but there are {num_maps} agent maps")
    return counts


def _stack(x: torch.Tensor, counts: list[int], fill: float = 0.0) -> torch.Tensor:
    """(sum_A, ...) -> (B, L, ...); a free view when every sample has L agents, else padded with ``fill``."""
    longest = max(counts)
    if min(counts) == longest:
        return x.reshape((len(counts), longest) + tuple(x.shape[1:]))
    # (sample, slot) of every agent row, built on the host from a handful of counts.
    rows = torch.tensor([(b, a) for b, c in enumerate(counts) for a in range(c)], device=x.device)
    stacked = x.new_full((len(counts), longest) + tuple(x.shape[1:]), fill)
    stacked[rows[:, 0], rows[:, 1]] = x
    return stacked


def _slots(counts: list[int], device: torch.device) -> torch.Tensor:
    """(B, L) bool on ``device``, True for real agents."""
    if min(counts) == max(counts):
        return torch.ones(len(counts), max(counts), dtype=torch.bool, device=device)
    return (torch.arange(max(counts))[None, :] < torch.tensor(counts)[:, None]).to(device)


def stack_agents(x: torch.Tensor, agents_per_sample: torch.Tensor | Sequence[int],
                 fill: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad per-agent rows into per-sample stacks.

    x: (sum_A, ...) with the agents of each sample contiguous; agents_per_sample: (B,) ints >= 1.
    Returns ``(stacked (B, L, ...), slots (B, L) bool)``, L = max agents; padding rows hold
    ``fill`` and ``slots`` is false there. Pass ``agents_per_sample`` on the CPU to avoid a sync.
    """
    counts = _agent_counts(agents_per_sample, x.shape[0])
    return _stack(x, counts, fill), _slots(counts, x.device)


class BEVFusion(nn.Module, abc.ABC):
    """Warp every agent's map to the ego frame, stack per sample, and reduce over agents.

    grid / stride: the geometry of the maps this module fuses ((H, W) == grid.feature_shape(stride)).
    warp_mode: "bilinear" or "nearest" resampling of non-ego maps.
    """

    #: Value of the padding rows of samples with fewer agents than the longest one.
    pad_value: float = 0.0

    def __init__(self, grid: BEVGrid, stride: int, warp_mode: str = "bilinear") -> None:
        super().__init__()
        if warp_mode not in WARP_MODES:
            raise ConfigError(f"fusion warp_mode must be one of {WARP_MODES}, got {warp_mode!r}")
        if int(stride) < 1:
            raise ConfigError(f"fusion stride must be >= 1, got {stride}")
        self.grid, self.stride, self.warp_mode = grid, int(stride), warp_mode

    #: The module needs ``scores`` (per-agent detection logits) in :meth:`forward`.
    needs_scores: bool = False

    def forward(self, features: torch.Tensor, agents_per_sample: torch.Tensor, ego_from_agent: torch.Tensor,
                mask: torch.Tensor | None = None, scores: torch.Tensor | None = None) -> torch.Tensor:
        """(sum_A, C, H, W) agent-frame maps -> (B, C, H, W) fused maps in each sample's ego frame.

        scores: (sum_A, 1, H, W) per-agent confidence logits on the same cells, for modules with
        ``needs_scores`` (warped with the features as one more channel, see :meth:`fuse`)."""
        counts = _agent_counts(agents_per_sample, features.shape[0])
        mask = self.agent_mask(features, mask)
        if self.needs_scores:
            if scores is None or tuple(scores.shape) != (features.shape[0], 1, *features.shape[-2:]):
                raise ValueError(f"{type(self).__name__} needs scores of shape ({features.shape[0]}, 1, "
                                 f"{features.shape[-2]}, {features.shape[-1]}), got "
                                 f"{None if scores is None else tuple(scores.shape)}")
            features = torch.cat([features, scores.to(features.dtype)], dim=1)
        warped, valid = warp_with_valid(features, ego_from_agent, self.grid, self.stride, self.warp_mode, mask)
        stacked = _stack(warped, counts, self.pad_value)
        present = _stack(valid, counts, False)
        out = self.fuse(stacked, present, _slots(counts, features.device))
        # Under autocast grid_sample runs in fp32; the fused map keeps the dtype of the input maps.
        return out.to(features.dtype)

    def agent_mask(self, features: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor | None:
        """The (sum_A, 1, H, W) mask to warp with the features (default: the caller's mask)."""
        return mask

    @abc.abstractmethod
    def fuse(self, x: torch.Tensor, present: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """Reduce warped stacks over agents.

        x: (B, L, C, H, W) warped maps, ego at index 0, ``pad_value`` in padding rows; for a module
            with ``needs_scores`` the last of the C channels is the agent's warped score.
        present: (B, L, 1, H, W) bool, the agent covers (and sent) the location.
        slots: (B, L) bool, the row is a real agent (not padding).
        Returns (B, C, H, W).
        """


def _masked_max(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Max over dim 1 of ``x`` where ``keep`` (broadcastable); 0 where nothing is kept."""
    best = x.masked_fill(~keep, float("-inf")).max(dim=1).values
    return torch.where(keep.any(dim=1), best, torch.zeros((), dtype=x.dtype, device=x.device))


class MaxFusion(BEVFusion):
    """Element-wise max over all agents' warped maps (out-of-view cells are zeros and take part)."""

    pad_value = float("-inf")  # padding rows never win; the ego row always exists

    def fuse(self, x: torch.Tensor, present: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        return x.max(dim=1).values


class FCooperFusion(BEVFusion):
    """F-Cooper maxout over the agents that cover each location.

    level: "spatial" (SFF, bilinear warping of backbone maps) or "voxel" (VFF, nearest warping of
        stride-1 voxel/pillar feature maps; a voxel is present where any channel is non-zero).
    """

    LEVELS: tuple[str, ...] = ("spatial", "voxel")

    def __init__(self, grid: BEVGrid, stride: int, level: str = "spatial") -> None:
        if level not in self.LEVELS:
            raise ConfigError(f"F-Cooper level must be one of {self.LEVELS}, got {level!r}")
        super().__init__(grid, stride, "nearest" if level == "voxel" else "bilinear")
        self.level = level

    def agent_mask(self, features: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor | None:
        if self.level != "voxel":
            return mask
        occupied = (features != 0).any(dim=1, keepdim=True).to(features.dtype)
        return occupied if mask is None else occupied * (mask >= 0.5).to(features.dtype)

    def fuse(self, x: torch.Tensor, present: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        return _masked_max(x, present)


def _agent_dots(a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) . (B, L, C, H, W) over C -> (B, L, H, W), one agent at a time (no L-map temporary)."""
    return torch.stack([torch.linalg.vecdot(x[:, i], a, dim=1) for i in range(x.shape[1])], dim=1)


def _combine(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """sum_l w[:, l] * x[:, l] -> (B, C, H, W) by in-place multiply-adds (one pass per agent)."""
    out = x[:, 0] * w[:, 0, None]
    for i in range(1, x.shape[1]):
        out.addcmul_(x[:, i], w[:, i, None])
    return out


def _combine_backward(grad: torch.Tensor, x: torch.Tensor, w: torch.Tensor, need_x: bool = True,
                      need_w: bool = True) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Gradients of :func:`_combine` for upstream ``grad`` (B, C, H, W): (d/dx, d/dw)."""
    gx = None
    if need_x:
        gx = torch.empty_like(x)
        for i in range(x.shape[1]):
            torch.mul(grad, w[:, i, None], out=gx[:, i])
    return gx, (_agent_dots(grad, x) if need_w else None)


class _WeightedSum(torch.autograd.Function):
    """``(w[:, :, None] * x).sum(1)`` for x (B, L, C, H, W), w (B, L, H, W), without the (B, L, C, H, W)
    temporaries autograd would keep: on the CPU these maps are memory-bound and the hand-written
    backward halves the fusion's time (benchmarks/RESULTS.md)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, w)
        return _combine(x, w)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, w = ctx.saved_tensors
        return _combine_backward(grad, x, w, *ctx.needs_input_grad)


class _AttendEgo(torch.autograd.Function):
    """AttFuse's ego row: ``softmax_l(<x_l, x_0> / sqrt(C))`` over the ``keys`` (B, L, H, W) agents,
    then the weighted sum of x (B, L, C, H, W); 0 where no key is valid. Same maths as the
    broadcast-multiply formulation, with one pass per agent forward and backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        scale = 1.0 / math.sqrt(x.shape[2])
        # scores and softmax in float32 at least (fp16 maps under autocast)
        scores = _agent_dots(x[:, 0], x).to(torch.promote_types(x.dtype, torch.float32)) * scale
        # A finite fill keeps the backward pass NaN-free where no key is valid.
        weights = torch.softmax(scores.masked_fill(~keys, -1e30), dim=1) * keys.any(dim=1, keepdim=True)
        weights = weights.to(x.dtype)
        ctx.save_for_backward(x, weights)
        ctx.scale = scale
        return _combine(x, weights)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, w = ctx.saved_tensors
        gx, gw = _combine_backward(grad, x, w)  # d out / d x_i at fixed weights, d out / d w
        work = torch.promote_types(x.dtype, torch.float32)
        gw, wf = gw.to(work), w.to(work)
        # softmax backward; masked and padding agents have w = 0 and get no score gradient
        gs = (wf * (gw - (wf * gw).sum(dim=1, keepdim=True)) * ctx.scale).to(x.dtype)
        ego = x[:, 0]
        for i in range(x.shape[1]):  # d score_i / d x_i (the key side)
            gx[:, i].addcmul_(ego, gs[:, i, None])
        for i in range(x.shape[1]):  # d score_i / d x_0 (the ego is every score's query)
            gx[:, 0].addcmul_(x[:, i], gs[:, i, None])
        return gx, None


class AttentionFusion(BEVFusion):
    """AttFuse: per-location scaled dot-product attention of the ego's vector over all agents'.

    mask_invalid: exclude agents that do not cover a location from its softmax (default). False
        reproduces OpenCOOD/HEAL, where the zero vector of an out-of-view agent is a key with
        score 0 and dilutes the ego's feature near view borders.
    """

    def __init__(self, grid: BEVGrid, stride: int, mask_invalid: bool = True, warp_mode: str = "bilinear") -> None:
        super().__init__(grid, stride, warp_mode)
        self.mask_invalid = bool(mask_invalid)

    def fuse(self, x: torch.Tensor, present: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        keys = present[:, :, 0] if self.mask_invalid else slots[:, :, None, None].expand(-1, -1, *x.shape[-2:])
        return _AttendEgo.apply(x, keys)


class Where2commFusion(AttentionFusion):
    """Where2comm's fusion of *sparse* messages (Hu et al., NeurIPS 2022, ``AttenFusion``): per
    location, the ego's vector attends over the agents that actually sent that cell. The
    selection mask of each received map (1 = cell transmitted, in the sender's frame) is warped
    with the features; unsent and out-of-view cells are excluded from the softmax instead of
    entering as zero keys, so a sparse message never dilutes the ego's feature where it is
    silent. The ego's own map is always complete.
    """

    def __init__(self, grid: BEVGrid, stride: int, warp_mode: str = "bilinear") -> None:
        super().__init__(grid, stride, mask_invalid=True, warp_mode=warp_mode)


class ConfidenceFusion(BEVFusion):
    """Confidence-weighted fusion: per location, ``softmax_agents(score / temperature)`` over the
    agents that cover (and sent) it, times their vectors.

    ``score`` is each agent's own detection confidence at the cell -- the largest class logit
    over its anchors from the shared head on its *unfused* map (what the per-agent loss trains;
    Where2comm's confidence map before the sigmoid). The agent that sees a location best
    dominates it, so an object only a collaborator sees is carried by that collaborator's vector,
    not diluted by the ego's empty one, and where several agents see it the more confident views
    mix. Close to HEAL's pyramid fusion (Lu et al., ICLR 2024: per-agent foreground scores,
    softmax over agents), with the scores taken from the detection head instead of a separate
    occupancy head. The detector passes the scores detached: the per-agent loss calibrates them
    and the fused loss cannot bend them.

    temperature: > 0; lower sharpens the choice towards the single most confident agent.
    """

    needs_scores = True

    def __init__(self, grid: BEVGrid, stride: int, temperature: float = 1.0, warp_mode: str = "bilinear") -> None:
        super().__init__(grid, stride, warp_mode)
        if not float(temperature) > 0:
            raise ConfigError(f"confidence fusion temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    def fuse(self, x: torch.Tensor, present: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        x, scores = x[:, :, :-1], x[:, :, -1:]  # the score rides as the last channel
        logits = (scores.float() / self.temperature).masked_fill(~present, -1e30)
        weights = torch.softmax(logits, dim=1).to(x.dtype) * present.any(dim=1, keepdim=True)
        return _WeightedSum.apply(x, weights[:, :, 0])


class MultiScaleFusion(nn.Module):
    """Fuse each backbone level with its own fusion module (HEAL/CoAlign multi-scale fusion).

    fusions: one :class:`BEVFusion` per level, finest first, each built for that level's stride.
    ``forward(features: list of (sum_A, C_i, H_i, W_i), agents_per_sample, ego_from_agent, mask)``
    returns the list of (B, C_i, H_i, W_i). ``mask`` is None, one tensor (resized to every level
    by nearest interpolation) or a list with one entry per level (None = unmasked level; e.g.
    ``[mask, None, None]`` masks level 0 only, as HEAL's Where2comm does).
    """

    def __init__(self, fusions: Sequence[BEVFusion]) -> None:
        super().__init__()
        if not fusions:
            raise ConfigError("MultiScaleFusion needs at least one level")
        self.levels = nn.ModuleList(fusions)

    @classmethod
    def for_strides(cls, fusion_cls: type[BEVFusion], grid: BEVGrid, strides: Sequence[int]) -> "MultiScaleFusion":
        """One ``fusion_cls(grid, stride)`` per stride (e.g. the backbone's cumulative strides)."""
        return cls([fusion_cls(grid, int(s)) for s in strides])

    def forward(self, features: Sequence[torch.Tensor], agents_per_sample: torch.Tensor,
                ego_from_agent: torch.Tensor,
                mask: torch.Tensor | Sequence[torch.Tensor | None] | None = None) -> list[torch.Tensor]:
        if len(features) != len(self.levels):
            raise ValueError(f"MultiScaleFusion has {len(self.levels)} levels but got {len(features)} maps")
        masks = self._level_masks(features, mask)
        return [fusion(level, agents_per_sample, ego_from_agent, m)
                for fusion, level, m in zip(self.levels, features, masks)]

    def _level_masks(self, features: Sequence[torch.Tensor],
                     mask: torch.Tensor | Sequence[torch.Tensor | None] | None) -> list[torch.Tensor | None]:
        if mask is None:
            return [None] * len(features)
        if isinstance(mask, torch.Tensor):
            return [mask if mask.shape[-2:] == f.shape[-2:]
                    else F.interpolate(mask.float(), size=tuple(f.shape[-2:]), mode="nearest").to(mask.dtype)
                    for f in features]
        if len(mask) != len(features):
            raise ValueError(f"got {len(mask)} masks for {len(features)} levels")
        return list(mask)
