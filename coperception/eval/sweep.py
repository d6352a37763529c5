"""Bandwidth sweep: AP against measured bytes for several strategies and budgets, one encoder pass.

Each frame is encoded once; then every (strategy, budget) point runs its own selection, wire
encoding, decoding and fusion on those maps (``CooperativeDetector.communicate``), so a sweep of
N points costs one backbone pass plus N cheap fusion/head passes per frame. Bytes are
``len(wire.encode(message))`` of every transmission -- requests and supply maps included.

Points are made from spec strings by :func:`coperception.engine.sweep.parse_strategy`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch

from coperception.comm.select import Strategy
from coperception.comm.volume import CommStats
from coperception.eval.ap import APEvaluator, APResult
from coperception.geometry.boxes import boxes_in_range_mask


@dataclass
class SweepPoint:
    """One curve point: a label, the strategy (None = ego alone) and its budget (None = unlimited)."""

    label: str
    strategy: Strategy | None
    budget: int | None
    mode: str = "intermediate"
    evaluator: APEvaluator | None = None
    comm: CommStats = field(default_factory=CommStats)
    result: APResult | None = None

    def row(self) -> dict:
        s = self.comm.summary()
        return {"strategy": self.label, "budget": self.budget, **self.result.to_dict(),
                "bytes_per_agent_frame": s.bytes_per_agent_frame,
                "log2_bytes": s.log2_bytes_per_agent_frame if s.bytes_per_agent_frame > 0 else None,
                "mbps_per_link": s.mbps_per_link, "comm": s.as_dict()}


def run_sweep(model, batches: Iterable, points: Sequence[SweepPoint], *, lidar_range: Sequence[float],
              iou_thresholds: Sequence[float] = (0.3, 0.5, 0.7), global_sort: bool = True,
              score_threshold: float = 0.2, nms_threshold: float = 0.15, device: torch.device | str = "cpu",
              on_batch: Callable[[int], None] | None = None) -> list[SweepPoint]:
    """Fill every point's AP and bytes over ``batches`` (the model is encoded once per batch)."""
    model.eval()
    for p in points:
        p.evaluator = APEvaluator(tuple(iou_thresholds))
        p.comm = CommStats()
    decode = dict(score_threshold=score_threshold, nms_threshold=nms_threshold)
    frame = 0
    with torch.no_grad():
        for batch in batches:
            batch = model.with_cells(batch.to(device))
            feats = model.encode(batch)
            for p in points:
                if p.strategy is None:
                    out = model.infer(batch, "single", **decode)
                else:
                    out = model.communicate(batch, feats, p.strategy, p.budget, None, frame, decode)
                for b, dets in enumerate(out.detections):
                    keep = boxes_in_range_mask(dets.boxes, lidar_range, min_corners=8, use_z=False)
                    gt = batch.gt_boxes[b][batch.gt_mask[b]].double().cpu().numpy()
                    p.evaluator.add_frame(dets.boxes[keep], dets.scores[keep], gt)
                    for s in out.sent[b]:
                        p.comm.record(frame + b, s.message.sender_id, s.receivers, s.nbytes)
            frame += len(batch)
            if on_batch is not None:
                on_batch(len(batch))
    for p in points:
        p.result = p.evaluator.result(global_sort=global_sort)
    return list(points)


def plot_sweep(points: Sequence[SweepPoint], path: str | Path, iou: float = 0.5) -> Path:
    """AP@``iou`` against log2(bytes per agent per frame), one line per strategy."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2), dpi=120)
    curves: dict[str, list[tuple[float, float]]] = {}
    for p in points:
        ap = next(t.ap for t in p.result.thresholds if math.isclose(t.iou_threshold, iou))
        nbytes = p.comm.summary().bytes_per_agent_frame
        curves.setdefault(p.label, []).append((math.log2(nbytes) if nbytes > 0 else 0.0, 100 * ap))
    for label, pts in curves.items():
        pts.sort()
        xs, ys = zip(*pts)
        if label == "single":
            ax.axhline(ys[0], color="grey", linestyle="--", label="single (ego only)")
        else:
            ax.plot(xs, ys, marker="o", label=label)
    ax.set_xlabel("log2(bytes per agent per frame), measured")
    ax.set_ylabel(f"AP@{iou:g} (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
