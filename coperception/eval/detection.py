"""Evaluate a cooperative detector on a dataset: AP (OpenCOOD protocol) and bytes sent, per mode.

For every inference mode (single / late / intermediate / early) the same frames are detected,
predictions outside the evaluation range are dropped as OpenCOOD does (all BEV corners inside
the range), and AP is computed at each IoU threshold with :class:`APEvaluator`. Communication is
measured, not estimated: each collaborator's message is encoded with :func:`comm.wire.encode`
and its length recorded in a :class:`CommStats`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import torch

from coperception.comm.volume import CommStats
from coperception.eval.ap import APEvaluator, APResult
from coperception.geometry.boxes import boxes_in_range_mask


@dataclass
class ModeReport:
    """AP and communication of one inference mode."""

    mode: str
    ap: APResult
    comm: CommStats = field(default_factory=CommStats)

    def bytes_per_agent_frame(self) -> float:
        """Mean bytes a collaborator sends per frame (0 when nothing is sent)."""
        return float(self.comm.summary().bytes_per_agent_frame)

    def to_dict(self) -> dict:
        return {"mode": self.mode, **self.ap.to_dict(), "comm": self.comm.summary().as_dict()}


def evaluate_detector(model: torch.nn.Module, batches: Iterable, modes: Sequence[str], *,
                      lidar_range: Sequence[float], iou_thresholds: Sequence[float] = (0.3, 0.5, 0.7),
                      global_sort: bool = True, score_threshold: float = 0.2, nms_threshold: float = 0.15,
                      device: torch.device | str = "cpu", budget: int | None = None, strategy=None,
                      channel_factory: Callable[[], object] | None = None,
                      on_batch: Callable[[int], None] | None = None) -> dict[str, ModeReport]:
    """Run ``model.infer`` over ``batches`` for each mode and collect AP and message sizes.

    budget: bytes per agent per frame (None = unlimited); strategy: overrides the model's
    communication strategy for intermediate inference; channel_factory: makes a fresh
    :class:`~coperception.comm.channel.Channel` per mode and scenario (same seed -> same losses
    for every mode). With channel latency, give the frames in time order with batch size 1.
    Every transmission's bytes are recorded, requests and supply maps included.
    """
    model.eval()
    evaluators = {m: APEvaluator(tuple(iou_thresholds)) for m in modes}
    comms = {m: CommStats() for m in modes}
    channels = {m: None for m in modes}
    frame, scenario = 0, None
    for batch in batches:
        batch = batch.to(device)
        if channel_factory is not None and batch.keys[0][0] != scenario:
            # a fresh channel per scenario: nothing in flight crosses into another scene
            scenario = batch.keys[0][0]
            channels = {m: channel_factory() for m in modes}
        for mode in modes:
            out = model.infer(batch, mode, score_threshold=score_threshold, nms_threshold=nms_threshold,
                              budget=budget, strategy=strategy, channel=channels[mode], frame_index=frame)
            for b, dets in enumerate(out.detections):
                keep = boxes_in_range_mask(dets.boxes, lidar_range, min_corners=8, use_z=False)
                gt = batch.gt_boxes[b][batch.gt_mask[b]].double().cpu().numpy()
                evaluators[mode].add_frame(dets.boxes[keep], dets.scores[keep], gt)
                for s in out.sent[b]:
                    comms[mode].record(frame + b, s.message.sender_id, s.receivers, s.nbytes)
        frame += len(batch)
        if on_batch is not None:
            on_batch(len(batch))
    return {m: ModeReport(m, evaluators[m].result(global_sort=global_sort), comms[m]) for m in modes}

