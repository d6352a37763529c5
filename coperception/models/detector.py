"""One cooperative detector: encoder -> (message selection) -> fusion -> head, each passed in.

Early, late and intermediate collaboration are not forked model classes but modes of this one
module (STYLE.md: compose, don't copy variants):

* ``single``: the ego's own map only (no collaboration), the lower bound;
* ``early``: the dataset already fused the raw points (one cloud per sample);
* ``late``: every agent detects on its own map; boxes move to the ego frame and are NMS'd;
* ``intermediate``: every agent's map is warped into the ego frame and fused before the head.

Training in intermediate mode adds a per-agent ("single") loss on the unfused maps, as
Where2comm does, so that one trained model also serves ego-only and late inference and yields
the per-agent confidence maps that message selection needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from coperception.comm.message import Boxes as BoxesPayload
from coperception.comm.message import DenseFeatures, Message
from coperception.data.collate import CooperativeBatch
from coperception.data.records import Detections
from coperception.encoders.base import BEVFeatures
from coperception.errors import ConfigError
from coperception.fusion.late import fuse_detections
from coperception.heads.detection_head import AnchorHead

Mode = Literal["single", "early", "late", "intermediate"]


def _per_sample(boxes: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
    """(B, N, 7) padded boxes + (B, N) mask -> list of (M_b, 7)."""
    return [b[m] for b, m in zip(boxes, mask)]


def ego_rows(agents_per_sample: torch.Tensor) -> torch.Tensor:
    """Row index of each sample's ego (its first agent) in agent-stacked tensors."""
    counts = agents_per_sample.to("cpu", torch.long)
    return torch.cumsum(counts, 0) - counts


class CooperativeDetector(nn.Module):
    """encoder: cells -> BEVFeatures; fusion: a BEVFusion (None for early/late/single models);
    head: AnchorHead on the encoder's grid and stride; mode: the training mode;
    single_loss_weight: weight of the per-agent loss in intermediate training (0 disables it).
    """

    def __init__(self, encoder: nn.Module, head: AnchorHead, fusion: nn.Module | None = None, *,
                 mode: Mode = "intermediate", single_loss_weight: float = 1.0) -> None:
        super().__init__()
        if mode == "intermediate" and fusion is None:
            raise ConfigError("intermediate mode needs a fusion module")
        self.encoder, self.head, self.fusion = encoder, head, fusion
        self.mode, self.single_loss_weight = mode, float(single_loss_weight)

    # -- shared steps --------------------------------------------------------------------------
    def encode(self, batch: CooperativeBatch) -> BEVFeatures:
        """Every agent's BEV map. An encoder with ``consumes_batch = True`` (multi-sensor /
        heterogeneous agents) reads the whole batch; a LiDAR encoder reads the voxelised cells."""
        if getattr(self.encoder, "consumes_batch", False):
            return self.encoder(batch)
        if batch.cells is None:
            raise ConfigError("batch has no voxelised cells: build the dataset with voxelization enabled")
        return self.encoder(batch.cells)

    def fuse(self, feats: BEVFeatures, batch: CooperativeBatch, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.fusion(feats.features, batch.agents_per_sample, batch.ego_from_agent, mask)

    def _loss(self, features: torch.Tensor, gt: list[torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
        preds = self.head(features)
        losses = self.head.loss(preds, self.head.targets(gt))
        return {f"{prefix}{k}": v for k, v in losses.items()}

    def _agent_gt(self, batch: CooperativeBatch) -> list[torch.Tensor]:
        if batch.agent_gt_boxes is None:
            raise ConfigError("batch has no per-agent ground truth; build the dataset with agent_targets=True")
        return _per_sample(batch.agent_gt_boxes, batch.agent_gt_mask)

    # -- training ------------------------------------------------------------------------------
    def forward(self, batch: CooperativeBatch) -> dict[str, torch.Tensor]:
        """Named losses for ``batch`` in this model's training mode."""
        feats = self.encode(batch)
        gt = _per_sample(batch.gt_boxes, batch.gt_mask)
        if self.mode == "early":
            return self._loss(feats.features, gt)
        if self.mode == "late":
            return self._loss(feats.features, self._agent_gt(batch))
        if self.mode == "single":
            return self._loss(feats.features[ego_rows(batch.agents_per_sample)], gt)
        losses = self._loss(self.fuse(feats, batch), gt)
        if self.single_loss_weight > 0:
            single = self._loss(feats.features, self._agent_gt(batch), prefix="single_")
            losses.update({k: self.single_loss_weight * v for k, v in single.items()})
        return losses

    # -- inference -----------------------------------------------------------------------------
    @torch.no_grad()
    def infer(self, batch: CooperativeBatch, mode: Mode | None = None, *, score_threshold: float = 0.2,
              nms_threshold: float = 0.15) -> Inference:
        """Detections in each sample's ego frame, plus what each collaborator sent for them.

        The messages are what the mode transmits: ``intermediate`` sends each collaborator's full
        BEV map (fp32, the dense baseline), ``late`` its detections; ``single`` and ``early``
        (raw points are not a wire payload) report none.
        """
        mode = mode or self.mode
        feats = self.encode(batch)
        decode = dict(score_threshold=score_threshold, nms_threshold=nms_threshold)
        counts = batch.agents_per_sample.tolist()
        if mode == "early":
            return Inference(self.head.decode(self.head(feats.features), **decode), [[] for _ in counts])
        if mode == "single":
            dets = self.head.decode(self.head(feats.features[ego_rows(batch.agents_per_sample)]), **decode)
            return Inference(dets, [[] for _ in counts])
        if mode == "intermediate":
            if self.fusion is None:
                raise ConfigError("this model has no fusion module: intermediate inference is impossible")
            dets = self.head.decode(self.head(self.fuse(feats, batch)), **decode)
            return Inference(dets, self._messages(batch, lambda i: DenseFeatures(feats.features[i].float().cpu())))
        if mode == "late":
            per_agent = self.head.decode(self.head(feats.features), **decode)
            out, start = [], 0
            for count in counts:
                tf = batch.ego_from_agent[start:start + count].double().cpu().numpy()
                out.append(fuse_detections(per_agent[start:start + count], tf, iou_threshold=nms_threshold))
                start += count
            return Inference(out, self._messages(
                batch, lambda i: BoxesPayload(per_agent[i].boxes, per_agent[i].scores, per_agent[i].labels)))
        raise ConfigError(f"unknown inference mode {mode!r}")

    def predict(self, batch: CooperativeBatch, mode: Mode | None = None, **decode) -> list[Detections]:
        """Detections in each sample's ego frame, one per sample."""
        return self.infer(batch, mode, **decode).detections

    @staticmethod
    def _messages(batch: CooperativeBatch, payload_of) -> list[list[Message]]:
        """One message per collaborator (non-ego agent) of each sample, carrying ``payload_of(row)``.

        The pose field carries the sender's pose in the sample's ego frame: the batch holds
        relative poses only, and a receiver needs nothing else (any common world frame gives the
        same relative transform and the same encoded size).
        """
        out, start = [], 0
        for b, count in enumerate(batch.agents_per_sample.tolist()):
            scenario_ts = batch.keys[b][1]
            msgs = []
            for k in range(1, count):
                row = start + k
                pose = batch.ego_from_agent[row].double().cpu().numpy()
                msgs.append(Message(str(batch.agent_ids[b][k]), int(scenario_ts), pose, payload_of(row)))
            out.append(msgs)
            start += count
        return out


@dataclass
class Inference:
    """detections: one per sample (ego frame); messages: per sample, what each collaborator sent."""

    detections: list[Detections]
    messages: list[list[Message]]
