"""The communication strategies (one interface, :class:`coperception.comm.select.Strategy`).

* ``dense`` -- the whole BEV map (the intermediate-fusion baseline), fp32 / fp16 / int8, optionally
  through a learned per-cell 1x1 autoencoder (``compress_ratio``). Under a budget the most precise
  encoding that fits is sent (fp32 -> fp16 -> int8), else an explicit Empty message.
* ``where2comm`` -- Where2comm (Hu et al., NeurIPS 2022): the sender's spatial confidence map
  (max anchor objectness, Gaussian-smoothed k5/sigma1) picks the cells above ``threshold``, most
  confident first; with ``request: true`` the ego first broadcasts a request map (its cells with
  confidence below ``request_threshold``) and senders send only requested cells (multi-round).
* ``supply_demand`` -- CoSDH (Xu et al., CVPR 2025): the ego's demand map (cells where its own
  LiDAR has fewer than ``req_points`` points per pillar) AND the sender's supply (confidence above
  ``threshold``), most confident first; features through a C/``compress_ratio`` fp16 compressor.
  ``hybrid: true`` is CoSDH's intermediate-late hybrid: each sender also sends its confident
  boxes (score >= ``box_threshold``), late-fused by the ego with scores x ``box_beta``.
* ``codebook`` -- CodeFilling (Hu et al., CVPR 2024): cells travel as integer codes of a learned
  residual codebook (:class:`~coperception.comm.represent.Codebook`), chosen by information
  filling: the ego broadcasts its demand (cells with confidence below ``demand_threshold``), each
  sender broadcasts its supply (a cell set, a few hundred bytes, counted), and every sender runs
  the same deterministic solver -- a demanded cell is filled by exactly one supplier, the nearest
  (densest points) -- so no two senders spend bytes on the same cell. ``solver: none`` keeps
  Where2comm's selection.
* ``late`` -- boxes and scores only, highest scores first under the budget.

Every byte is counted: requests and supply maps are messages of the ego / sender, and each agent's
messages of one frame together fit its budget (see :mod:`coperception.comm.budget`).
"""

from __future__ import annotations

import numpy as np
import torch

from coperception.comm.budget import check_budget, fit_first, fit_prefix
from coperception.comm.message import Boxes, Composite, Empty, Message
from coperception.comm.represent import Codebook, Compressor, FloatCells
from coperception.comm.select import (
    SampleView,
    Sent,
    Strategy,
    cell_set_message,
    collaborator_rows,
    gaussian_smooth,
    message_of,
    random_topk_mask,
    ranked_cells,
    sent,
    split_parts,
)
from coperception.comm.wire import min_message_bytes
from coperception.errors import ConfigError
from coperception.geometry.grid import BEVGrid
from coperception.geometry.warp import invert_rigid, warp_maps

_DTYPE_CHAIN = ("fp32", "fp16", "int8")
_BOX_BYTES = 7 * 4 + 4 + 1  # a box on the wire: 7 f32, f32 score, u8 label
TRAIN_SELECTIONS = ("random_topk", "threshold", "all")


def _representation(channels: int, dtype: str, compress_ratio: int, recon_weight: float) -> FloatCells:
    if compress_ratio == 1:
        return FloatCells(channels, dtype)
    return Compressor(channels, compress_ratio, dtype, recon_weight)


def _roundtrip_collaborators(rep, features: torch.Tensor, agents_per_sample: torch.Tensor
                             ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Collaborators' rows of (sum_A, C, H, W) ``features`` through ``rep.roundtrip`` (the ego's
    map never travels) -> (features, collaborator rows (sum_A,) bool, aux losses)."""
    rows = collaborator_rows(agents_per_sample).to(features.device)
    sent_maps, aux = rep.roundtrip(features[rows])
    full = torch.zeros_like(features).index_put((rows.nonzero().flatten(),), sent_maps.to(features.dtype))
    return torch.where(rows[:, None, None, None], full, features), rows, aux


class DenseStrategy(Strategy):
    """Whole maps. dtype: preferred wire precision; compress_ratio: 1 (raw) or C/ratio autoencoder."""

    name = "dense"

    def __init__(self, channels: int, grid: BEVGrid, stride: int, dtype: str = "fp32", compress_ratio: int = 1,
                 recon_weight: float = 1.0) -> None:
        super().__init__(channels, grid, stride)
        self.rep = _representation(channels, dtype, compress_ratio, recon_weight)

    def transmit(self, view: SampleView, budget: int | None) -> list[Sent]:
        ego, out = str(view.agent_ids[0]), []
        chain = _DTYPE_CHAIN[_DTYPE_CHAIN.index(self.rep.dtype):]
        for row in range(1, view.num_agents):
            check_budget(budget, str(view.agent_ids[row]))
            cands = [lambda dt=dt, row=row: message_of(view, row, self.rep.payload(view.features[row], None, dt))
                     for dt in chain]
            cands.append(lambda row=row: message_of(view, row, Empty()))
            msg, data, _ = fit_first(cands, budget)
            out.append(Sent(msg, data, (ego,)))
        return out

    def simulate(self, features, confidence, agents_per_sample):
        if not isinstance(self.rep, Compressor):
            return features, None, {}
        out, _, aux = _roundtrip_collaborators(self.rep, features, agents_per_sample)
        return out, None, aux


class SparseStrategy(Strategy):
    """Shared machinery of the cell-selecting strategies.

    threshold: a cell is a candidate where the smoothed confidence exceeds it;
    smooth_sigma: Gaussian smoothing of the confidence map (0 = none, kernel 5);
    train_selection: the training mask -- "random_topk" (K ~ U(0,1) H W), "threshold" or "all".
    """

    trains_on_confidence = True

    def __init__(self, channels: int, grid: BEVGrid, stride: int, rep, threshold: float = 0.01,
                 smooth_sigma: float = 1.0, train_selection: str = "random_topk") -> None:
        super().__init__(channels, grid, stride)
        if train_selection not in TRAIN_SELECTIONS:
            raise ConfigError(f"train_selection must be one of {TRAIN_SELECTIONS}, got {train_selection!r}")
        if not 0.0 <= threshold < 1.0:
            raise ConfigError(f"threshold must be in [0, 1), got {threshold}")
        self.rep, self.threshold, self.smooth_sigma = rep, float(threshold), float(smooth_sigma)
        self.train_selection = train_selection

    # -- hooks --------------------------------------------------------------------------------
    def demand(self, view: SampleView) -> torch.Tensor | None:
        """(1, H, W) ego-frame demand mask broadcast before selection, or None (no request round)."""
        return None

    def candidates(self, view: SampleView, supply: torch.Tensor, demand: torch.Tensor | None,
                   budgets_used: dict[int, int], budget: int | None, out: list[Sent]) -> dict[int, torch.Tensor]:
        """Per collaborator row: (1, H, W) bool candidate cells in its frame (may append messages)."""
        cands = {}
        for row in range(1, view.num_agents):
            c = supply[row] > self.threshold
            if demand is not None:
                c &= self._demand_in(view, demand, row) > 0.5
            cands[row] = c
        return cands

    def fixed_parts(self, view: SampleView, row: int, budget: int | None) -> list:
        """Payloads a sender sends before any cell (hybrid: its boxes)."""
        return []

    # -- protocol -----------------------------------------------------------------------------
    def _demand_in(self, view: SampleView, demand: torch.Tensor, row: int) -> torch.Tensor:
        tf = invert_rigid(view.ego_from_agent[row:row + 1].to(demand.device))
        return warp_maps(demand[None], tf, self.grid, self.stride)[0]

    def transmit(self, view: SampleView, budget: int | None) -> list[Sent]:
        ids = [str(a) for a in view.agent_ids]
        for a in ids:
            check_budget(budget, a)
        out: list[Sent] = []
        used: dict[int, int] = {}
        demand = self.demand(view)
        if demand is not None:
            req = sent(cell_set_message(ids[0], view.timestamp, np.eye(4), demand), ids[1:], "request")
            if budget is None or req.nbytes <= budget:
                out.append(req)
                used[0] = req.nbytes
            else:
                demand = None  # no request fits: senders assume everything is demanded
        supply = gaussian_smooth(view.confidence.float(), self.smooth_sigma)
        cands = self.candidates(view, supply, demand, used, budget, out)
        for row in range(1, view.num_agents):
            left = None if budget is None else budget - used.get(row, 0)
            fixed = self.fixed_parts(view, row, left)
            cells = ranked_cells(supply[row], cands[row])

            def build(k: int, row=row, fixed=fixed, cells=cells) -> Message:
                parts = list(fixed)
                if k:
                    parts.append(self.rep.payload(view.features[row], cells[:k]))
                payload = Empty() if not parts else parts[0] if len(parts) == 1 else Composite(tuple(parts))
                return message_of(view, row, payload)

            msg, data, _ = fit_prefix(build, int(cells.numel()), left, item_min_bytes=self.rep.cell_min_bytes)
            out.append(Sent(msg, data, (ids[0],), "features"))
        return out

    def simulate(self, features, confidence, agents_per_sample):
        out, rows, aux = _roundtrip_collaborators(self.rep, features, agents_per_sample)
        if self.train_selection == "all":
            return out, None, aux
        conf = gaussian_smooth(confidence.detach().float(), self.smooth_sigma)
        if self.train_selection == "threshold":
            mask = (conf > self.threshold).to(features.dtype)
        else:
            mask = random_topk_mask(conf).to(features.dtype)
        mask[~rows] = 1.0
        return out, mask, aux


class Where2commStrategy(SparseStrategy):
    """Where2comm: confident cells, optional request round (see the module docstring)."""

    name = "where2comm"

    def __init__(self, channels: int, grid: BEVGrid, stride: int, threshold: float = 0.01, smooth_sigma: float = 1.0,
                 dtype: str = "fp16", request: bool = False, request_threshold: float = 0.5,
                 train_selection: str = "random_topk") -> None:
        super().__init__(channels, grid, stride, FloatCells(channels, dtype), threshold, smooth_sigma, train_selection)
        self.request, self.request_threshold = bool(request), float(request_threshold)

    def demand(self, view: SampleView) -> torch.Tensor | None:
        if not self.request:
            return None
        return (gaussian_smooth(view.confidence[:1].float(), self.smooth_sigma)[0] < self.request_threshold).float()


class SupplyDemandStrategy(SparseStrategy):
    """CoSDH supply x demand selection, compressed features, optional intermediate-late hybrid."""

    name = "supply_demand"
    needs_occupancy = True

    def __init__(self, channels: int, grid: BEVGrid, stride: int, threshold: float = 0.01, smooth_sigma: float = 1.0,
                 req_points: float = 4.0, compress_ratio: int = 1, dtype: str = "fp16", recon_weight: float = 1.0,
                 hybrid: bool = False, box_threshold: float = 0.3, box_beta: float = 0.8,
                 train_selection: str = "random_topk") -> None:
        super().__init__(channels, grid, stride, _representation(channels, dtype, compress_ratio, recon_weight),
                         threshold, smooth_sigma, train_selection)
        self.req_points, self.hybrid = float(req_points), bool(hybrid)
        self.box_threshold, self.box_beta = float(box_threshold), float(box_beta)

    @property
    def needs_detections(self) -> bool:  # type: ignore[override]
        return self.hybrid

    def demand(self, view: SampleView) -> torch.Tensor | None:
        if view.occupancy is None:
            raise ConfigError("supply_demand needs LiDAR occupancy (points per cell) in the SampleView")
        per_pillar = view.occupancy[0].float() / (self.stride ** 2)
        return (per_pillar < self.req_points).float()

    def fixed_parts(self, view: SampleView, row: int, budget: int | None) -> list:
        if not self.hybrid:
            return []
        if view.detections is None:
            raise ConfigError("the hybrid strategy needs each agent's detections in the SampleView")
        boxes = _confident_boxes(view.detections[row], self.box_threshold)
        msg, _, _ = fit_prefix(lambda k: message_of(view, row, _top_boxes(boxes, k) if k else Empty()),
                               len(boxes), budget, item_min_bytes=_BOX_BYTES)
        return split_parts(msg.payload)


class CodebookStrategy(SparseStrategy):
    """CodeFilling: codebook codes + information-filling selection (see the module docstring)."""

    name = "codebook"

    def __init__(self, channels: int, grid: BEVGrid, stride: int, groups: int = 2, stages: int = 3, size: int = 16,
                 threshold: float = 0.01, smooth_sigma: float = 1.0, solver: str = "nearest",
                 demand_threshold: float = 0.5, beta: float = 0.25, loss_weight: float = 1.0,
                 train_selection: str = "random_topk") -> None:
        super().__init__(channels, grid, stride, Codebook(channels, groups, stages, size, beta, loss_weight),
                         threshold, smooth_sigma, train_selection)
        if solver not in ("nearest", "none"):
            raise ConfigError(f"codebook solver must be 'nearest' or 'none', got {solver!r}")
        self.solver, self.demand_threshold = solver, float(demand_threshold)

    def demand(self, view: SampleView) -> torch.Tensor | None:
        if self.solver == "none":
            return None
        return (gaussian_smooth(view.confidence[:1].float(), self.smooth_sigma)[0] < self.demand_threshold).float()

    def candidates(self, view, supply, demand, budgets_used, budget, out):
        if demand is None:
            return super().candidates(view, supply, demand, budgets_used, budget, out)
        ids = [str(a) for a in view.agent_ids]
        own = {row: supply[row] > self.threshold for row in range(1, view.num_agents)}
        announced = {}
        for row, mask in own.items():  # round 2: every sender broadcasts its supply cell set
            s = sent(cell_set_message(ids[row], view.timestamp, view.pose(row), mask.float()),
                     [a for i, a in enumerate(ids) if i != row], "supply")
            if budget is None or s.nbytes + min_message_bytes(ids[row]) <= budget:  # room left for its cells
                out.append(s)
                budgets_used[row] = s.nbytes
                announced[row] = mask
        return self._fill(view, demand, own, announced)

    def _fill(self, view, demand, own, announced) -> dict[int, torch.Tensor]:
        """Each demanded ego cell goes to the nearest sender that announced supply there; senders
        whose announcement did not fit fall back to their own supply x demand."""
        cands = {row: own[row] & (self._demand_in(view, demand, row) > 0.5) for row in own}
        if not announced:
            return cands
        rows = sorted(announced)
        tf = view.ego_from_agent[rows].to(demand.device)
        sup_ego = warp_maps(torch.stack([announced[r].float() for r in rows]), tf, self.grid, self.stride)
        xs, ys = (torch.as_tensor(v, dtype=torch.float32, device=demand.device)
                  for v in self.grid.cell_centers(self.stride))
        centres = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)  # (H, W, 2) x, y
        dist = torch.linalg.norm(centres[None] - tf[:, None, None, :2, 3].float(), dim=-1)  # (R, H, W)
        dist = torch.where(sup_ego[:, 0] > 0.5, dist, torch.full_like(dist, float("inf")))
        winner = dist.argmin(dim=0)
        filled = torch.isfinite(dist.min(dim=0).values) & (demand[0] > 0.5)
        for i, row in enumerate(rows):
            assign = (filled & (winner == i)).float()[None, None]
            back = warp_maps(assign, invert_rigid(tf[i:i + 1]), self.grid, self.stride)[0]
            cands[row] = own[row] & (back > 0.5)
        return cands


class LateStrategy(Strategy):
    """Boxes and scores of each sender's own detections, highest scores first under the budget."""

    name = "late"
    needs_detections = True

    sends_features = False

    def transmit(self, view: SampleView, budget: int | None) -> list[Sent]:
        if view.detections is None:
            raise ConfigError("late communication needs each agent's detections in the SampleView")
        ego, out = str(view.agent_ids[0]), []
        for row in range(1, view.num_agents):
            check_budget(budget, str(view.agent_ids[row]))
            dets = view.detections[row]
            order = np.argsort(-dets.scores, kind="stable")
            boxes = Boxes(dets.boxes[order], dets.scores[order], dets.labels[order])
            msg, data, _ = fit_prefix(lambda k, row=row, b=boxes: message_of(view, row, _top_boxes(b, k) if k else Empty()),
                                      len(boxes), budget, item_min_bytes=_BOX_BYTES)
            out.append(Sent(msg, data, (ego,), "boxes"))
        return out



def _confident_boxes(dets, threshold: float) -> Boxes:
    keep = dets.scores >= threshold
    order = np.argsort(-dets.scores[keep], kind="stable")
    return Boxes(dets.boxes[keep][order], dets.scores[keep][order], dets.labels[keep][order])


def _top_boxes(boxes: Boxes, k: int) -> Boxes:
    return Boxes(boxes.boxes[:k], boxes.scores[:k], boxes.labels[:k])


#: Strategies by config name: ``STRATEGIES[name](channels, grid, stride, **args)``.
STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls for cls in (DenseStrategy, Where2commStrategy, SupplyDemandStrategy, CodebookStrategy, LateStrategy)
}


def build_strategy(name: str, channels: int, grid: BEVGrid, stride: int, **args) -> Strategy:
    if name not in STRATEGIES:
        raise ConfigError(f"unknown communication strategy {name!r}; known: {sorted(STRATEGIES)}")
    return STRATEGIES[name](channels, grid, stride, **args)
