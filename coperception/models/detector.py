"""One cooperative detector: encoder -> (message selection) -> fusion -> head, each passed in.

Early, late and intermediate collaboration are not forked model classes but modes of this one
module (compose, don't copy variants):

* ``single``: the ego's own map only (no collaboration), the lower bound;
* ``early``: the dataset already fused the raw points (one cloud per sample);
* ``late``: every agent detects on its own map; boxes move to the ego frame and are NMS'd;
* ``intermediate``: every agent's map is warped into the ego frame and fused before the head.

Training in intermediate mode adds a per-agent ("single") loss on the unfused maps, as
Where2comm does, so that one trained model also serves ego-only and late inference and yields
the per-agent confidence maps that message selection needs.

Communication (:mod:`coperception.comm`): in intermediate and late inference every collaborator's
message is chosen by a :class:`~coperception.comm.select.Strategy` within a byte budget, encoded
to bytes, optionally carried by a :class:`~coperception.comm.channel.Channel` (loss, corruption,
pose noise) and *decoded* by the ego, which fuses only what it rebuilt from those bytes. In
training the strategy's differentiable ``simulate`` stands in for the byte path.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import torch
from torch import nn

from coperception.comm.message import Message
from coperception.comm.runtime import check_channel, exchange, occupancy_maps
from coperception.comm.select import SampleView, Sent, Strategy
from coperception.comm.strategies import DenseStrategy, LateStrategy
from coperception.encoders.base import Encoder
from coperception.errors import ConfigError
from coperception.fusion.late import fuse_received_boxes
from coperception.heads.base import Head
from coperception.structures.batch import CooperativeBatch
from coperception.structures.bev import BEVFeatures
from coperception.structures.records import Detections

Mode = Literal["single", "early", "late", "intermediate"]


def ego_rows(agents_per_sample: torch.Tensor) -> torch.Tensor:
    """Row index of each sample's ego (its first agent) in agent-stacked tensors."""
    counts = agents_per_sample.to("cpu", torch.long)
    return torch.cumsum(counts, 0) - counts


class CooperativeDetector(nn.Module):
    """encoder: cells -> BEVFeatures; fusion: a BEVFusion (None for early/late/single models);
    head: AnchorHead on the encoder's grid and stride; mode: the training mode;
    single_loss_weight: weight of the per-agent loss in intermediate training (0 disables it);
    comm: the communication strategy of intermediate inference (default: dense fp32 maps).
    late_comm: the strategy of late inference, one that sends boxes (default: ``late``, scores first).
    voxelizer: ``clouds -> cells`` for batches that carry raw clouds instead of cells (the dataset
        built with ``voxelization="none"``): the clouds are grouped on the batch's device, e.g.
        the GPU, instead of in the DataLoader workers.
    post_fusion: a module applied to every fused map before the head (:class:`PostFusion`).
    """

    def __init__(self, encoder: Encoder, head: Head, fusion: nn.Module | None = None, *,
                 mode: Mode = "intermediate", single_loss_weight: float = 1.0, comm: Strategy | None = None,
                 late_comm: Strategy | None = None, voxelizer=None, post_fusion: nn.Module | None = None) -> None:
        super().__init__()
        if mode == "intermediate" and fusion is None:
            raise ConfigError("intermediate mode needs a fusion module")
        self.encoder, self.head, self.fusion = encoder, head, fusion
        self.mode, self.single_loss_weight = mode, float(single_loss_weight)
        channels, grid, stride = encoder.out_channels, head.grid, head.stride
        self.comm = comm if comm is not None else DenseStrategy(channels, grid, stride, "fp32")
        self.late_comm = late_comm if late_comm is not None else LateStrategy(channels, grid, stride)
        if self.late_comm.sends_features:
            raise ConfigError(f"late_comm must send boxes, got a feature strategy {type(self.late_comm).__name__}")
        self.voxelizer = voxelizer
        self.post_fusion = post_fusion

    def with_cells(self, batch: CooperativeBatch) -> CooperativeBatch:
        """``batch`` with voxelised cells: as given, or made here from its clouds (on their device)."""
        if batch.cells is not None or batch.points is None or self.voxelizer is None:
            return batch
        return replace(batch, cells=self.voxelizer(batch.points))

    # -- shared steps --------------------------------------------------------------------------
    def encode(self, batch: CooperativeBatch) -> BEVFeatures:
        """Every agent's BEV map. A batch that carries raw clouds is voxelised first, whatever the
        encoder (one path for every encoder: the multimodal encoder's LiDAR branch too)."""
        return self.encoder.encode_batch(self.with_cells(batch))

    def fuse(self, feats: BEVFeatures, batch: CooperativeBatch, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self._fusion(feats.features, batch.agents_per_sample, batch.ego_from_agent, mask)

    def _fusion(self, maps: torch.Tensor, agents_per_sample, ego_from_agent, mask, cls_logits=None) -> torch.Tensor:
        """Run the fusion module; one that ``needs_scores`` gets every map's detection confidence
        logits (max over anchors, detached) from the shared head -- ``cls_logits`` when the head
        already ran on exactly these maps."""
        if not self.fusion.needs_scores:
            fused = self.fusion(maps, agents_per_sample, ego_from_agent, mask)
        else:
            if cls_logits is None:
                cls_logits = self.head(maps).cls_logits
            scores = cls_logits.detach().amax(dim=1, keepdim=True)
            fused = self.fusion(maps, agents_per_sample, ego_from_agent, mask, scores=scores)
        return fused if self.post_fusion is None else self.post_fusion(fused)

    def _loss(self, preds, gt: tuple[torch.Tensor, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
        """Losses of ``preds`` (or of the head on a map) against padded ground truth ``(boxes (A, M, 7),
        valid (A, M))``, one row per map; targets for all maps at once, without host syncs."""
        if isinstance(preds, torch.Tensor):
            preds = self.head(preds)
        losses = self.head.loss(preds, self.head.targets_padded(*gt))
        return {f"{prefix}{k}": v for k, v in losses.items()}

    def _agent_gt(self, batch: CooperativeBatch) -> tuple[torch.Tensor, torch.Tensor]:
        if batch.agent_gt_boxes is None:
            raise ConfigError("batch has no per-agent ground truth; build the dataset with agent_targets=True")
        return batch.agent_gt_boxes, batch.agent_gt_mask

    # -- training ------------------------------------------------------------------------------
    def forward(self, batch: CooperativeBatch) -> dict[str, torch.Tensor]:
        """Named losses for ``batch`` in this model's training mode, plus the encoder's auxiliary
        losses (``aux_losses`` of its output, e.g. a camera branch's ``loss_depth``)."""
        batch = self.with_cells(batch)
        feats = self.encode(batch)
        losses = self._mode_losses(feats, batch)
        losses.update(feats.aux_losses)
        return losses

    def _mode_losses(self, feats: BEVFeatures, batch: CooperativeBatch) -> dict[str, torch.Tensor]:
        gt = (batch.gt_boxes, batch.gt_mask)
        if self.mode == "early":
            return self._loss(feats.features, gt)
        if self.mode == "late":
            return self._loss(feats.features, self._agent_gt(batch))
        if self.mode == "single":
            return self._loss(feats.features[ego_rows(batch.agents_per_sample)], gt)
        # The head on every unfused map only when something uses it (a 1x1 conv over all agents'
        # full-resolution maps is not free): the per-agent loss, the strategy's training mask,
        # or a fusion that weighs agents by their own confidence.
        needs_scores = self.fusion.needs_scores
        agent_preds = (self.head(feats.features) if self.single_loss_weight > 0 or self.comm.trains_on_confidence
                       or needs_scores else None)
        conf = self.head.confidence_map(agent_preds).detach() if self.comm.trains_on_confidence else None
        x, mask, aux = self.comm.simulate(feats.features, conf, batch.agents_per_sample)
        logits = agent_preds.cls_logits if agent_preds is not None and x is feats.features else None
        losses = self._loss(self._fusion(x, batch.agents_per_sample, batch.ego_from_agent, mask, logits), gt)
        if self.single_loss_weight > 0:
            single = self._loss(agent_preds, self._agent_gt(batch), prefix="single_")
            losses.update({k: self.single_loss_weight * v for k, v in single.items()})
        losses.update(aux)
        return losses

    # -- inference -----------------------------------------------------------------------------
    @torch.no_grad()
    def infer(self, batch: CooperativeBatch, mode: Mode | None = None, *, score_threshold: float = 0.2,
              nms_threshold: float = 0.15, budget: int | None = None, strategy: Strategy | None = None,
              channel=None, frame_index: int = 0) -> Inference:
        """Detections in each sample's ego frame, plus every transmission made for them.

        ``late`` sends boxes, ``intermediate`` whatever ``strategy`` (default ``self.comm``)
        selects; ``budget`` is bytes per agent per frame; ``channel`` (a Channel with zero latency)
        carries the bytes, sample ``b`` at frame ``frame_index + b``. ``single`` and ``early``
        (raw points are not a wire payload) send nothing.
        """
        mode = mode or self.mode
        batch = self.with_cells(batch)
        feats = self.encode(batch)
        decode_args = dict(score_threshold=score_threshold, nms_threshold=nms_threshold)
        counts = batch.agents_per_sample.tolist()
        if mode == "early":
            return Inference(self.head.decode(self.head(feats.features), **decode_args), [[] for _ in counts])
        if mode == "single":
            dets = self.head.decode(self.head(feats.features[ego_rows(batch.agents_per_sample)]), **decode_args)
            return Inference(dets, [[] for _ in counts])
        if mode not in ("late", "intermediate"):
            raise ConfigError(f"unknown inference mode {mode!r}")
        if mode == "intermediate" and self.fusion is None:
            raise ConfigError("this model has no fusion module: intermediate inference is impossible")
        check_channel(channel, len(batch), batch.world_from_agent is not None)
        strat = self.late_comm if mode == "late" else (strategy or self.comm)
        return self.communicate(batch, feats, strat, budget, channel, frame_index, decode_args)

    @torch.no_grad()
    def communicate(self, batch: CooperativeBatch, feats: BEVFeatures, strat: Strategy, budget: int | None,
                    channel, frame_index: int, decode_args: dict) -> Inference:
        """Intermediate / late inference from already encoded maps (a bandwidth sweep encodes once):
        select -> encode -> (channel) -> decode -> fuse -> detect, per sample."""
        preds = self.head(feats.features)
        conf = self.head.confidence_map(preds)
        dets = self.head.decode(preds, **decode_args) if strat.needs_detections or not strat.sends_features else None
        occ = None
        if strat.needs_occupancy:
            occ = occupancy_maps(batch.cells, int(batch.agents_per_sample.sum()), self.head.grid, self.head.stride)
        counts = batch.agents_per_sample.tolist()
        transmissions, received, start = [], [], 0
        for b, count in enumerate(counts):
            rows = slice(start, start + count)
            world = None if batch.world_from_agent is None else batch.world_from_agent[rows]
            view = SampleView(batch.agent_ids[b], frame_index + b, feats.features[rows], conf[rows],
                              batch.ego_from_agent[rows], None if occ is None else occ[rows],
                              None if dets is None else dets[rows], world)
            result = exchange(strat, view, budget, channel, feats.features.device)
            transmissions.append(result.sent)
            received.append(result.received)
            start += count
        egos = ego_rows(batch.agents_per_sample)
        if strat.sends_features:
            base = self._fuse_received(feats.features, egos, received, decode_args)
        else:
            base = [dets[int(r)] for r in egos]
        out = [fuse_received_boxes(base[b], [(Detections(p.boxes, p.scores, p.labels), pose) for p, pose in rx.boxes],
                                   strat.box_beta, decode_args["nms_threshold"]) for b, rx in enumerate(received)]
        return Inference(out, transmissions)

    def _fuse_received(self, features: torch.Tensor, egos: torch.Tensor, received, decode_args) -> list[Detections]:
        """Fuse each ego's own map with the maps it rebuilt from the bytes, then detect."""
        maps, masks, poses, counts = [], [], [], []
        device, dtype = features.device, features.dtype
        for b, rx in enumerate(received):
            ego = features[int(egos[b])]
            maps += [ego] + [f.to(dtype) for f in rx.features]
            masks += [torch.ones_like(ego[:1])] + [m.to(dtype) for m in rx.masks]
            poses += [torch.eye(4, device=device)] + [torch.as_tensor(p, dtype=torch.float32, device=device)
                                                      for p in rx.poses]
            counts.append(1 + len(rx.features))
        fused = self._fusion(torch.stack(maps), torch.tensor(counts), torch.stack(poses), torch.stack(masks))
        return self.head.decode(self.head(fused), **decode_args)

    def predict(self, batch: CooperativeBatch, mode: Mode | None = None, **decode) -> list[Detections]:
        """Detections in each sample's ego frame, one per sample."""
        return self.infer(batch, mode, **decode).detections


class PostFusion(nn.Module):
    """``x + block(x)`` on a fused map, ``block`` = ``layers`` 3x3 convs with BN, ReLU between them
    (the last BN starts at zero, so training starts from the plain fusion). Only fused maps go
    through it: the shared head's per-agent path keeps its single-agent features, the fused path
    gets its own capacity to combine views (what V2X-ViT's and CoBEVT's post-fusion networks
    provide)."""

    def __init__(self, channels: int, layers: int = 2) -> None:
        super().__init__()
        mods: list[nn.Module] = []
        for i in range(int(layers)):
            mods += [nn.Conv2d(channels, channels, 3, padding=1, bias=False),
                     nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)]
            if i < int(layers) - 1:
                mods.append(nn.ReLU(inplace=True))
        nn.init.zeros_(mods[-1].weight)
        self.block = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


@dataclass
class Inference:
    """detections: one per sample (ego frame); sent: per sample, every transmission (bytes included)."""

    detections: list[Detections]
    sent: list[list[Sent]]

    @property
    def messages(self) -> list[list[Message]]:
        """Per sample, the messages collaborators sent the ego (features / boxes)."""
        return [[s.message for s in sends if s.role in ("features", "boxes")] for sends in self.sent]
