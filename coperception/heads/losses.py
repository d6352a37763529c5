"""Losses of the anchor head: focal classification, smooth-L1 box regression, direction bins.

* Classification: sigmoid focal loss (Lin et al., "Focal Loss for Dense Object Detection"),
  alpha 0.25, gamma 2, on positives (weight ``pos_cls_weight``) and negatives; ignored anchors
  have weight 0.
* Regression: smooth-L1 with sigma 3 (quadratic below 1/sigma^2) on the encoded residuals of
  positive anchors, with SECOND's sine-difference trick for yaw: ``sin(a - b)`` is compared via
  ``sin(a)cos(b)`` vs ``cos(a)sin(b)`` (Yan et al., "SECOND: Sparsely Embedded Convolutional
  Detection").
* Direction: softmax cross-entropy over the direction bins of positive anchors.

As in OpenCOOD/HEAL's ``PointPillarLoss``, each map's terms are divided by its number of
positives (at least 1), summed over maps and divided by the number of maps; each term is then
scaled by its weight (HEAL defaults: cls 1.0 with positives x2, reg 2.0, dir 0.2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from coperception.errors import ConfigError
from coperception.heads.targets import AnchorTargets


def sigmoid_focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25,
                       gamma: float = 2.0) -> torch.Tensor:
    """Element-wise focal loss; logits and targets (0/1 floats) of the same shape."""
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p = torch.sigmoid(logits)
    p_t = targets * p + (1 - targets) * (1 - p)
    alpha_t = targets * alpha + (1 - targets) * (1 - alpha)
    return alpha_t * (1 - p_t).pow(gamma) * bce


def smooth_l1(diff: torch.Tensor, sigma: float = 3.0) -> torch.Tensor:
    """Element-wise smooth-L1 of ``diff``: 0.5 (sigma x)^2 if |x| < 1/sigma^2, else |x| - 0.5/sigma^2."""
    beta = 1.0 / (sigma * sigma)
    a = diff.abs()
    return torch.where(a < beta, 0.5 * a * a / beta, a - 0.5 * beta)


def sin_difference(pred: torch.Tensor, target: torch.Tensor, dim: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace the yaw code (index ``dim``) by sin(p)cos(t) and cos(p)sin(t): their difference is sin(p - t)."""
    p, t = pred[..., dim:dim + 1], target[..., dim:dim + 1]
    pred = torch.cat([pred[..., :dim], torch.sin(p) * torch.cos(t), pred[..., dim + 1:]], dim=-1)
    target = torch.cat([target[..., :dim], torch.cos(p) * torch.sin(t), target[..., dim + 1:]], dim=-1)
    return pred, target


class AnchorLoss:
    """Weighted detection losses; ``__call__`` returns named, already weighted terms.

    The total loss is the sum of the returned values.
    """

    def __init__(self, cls_weight: float = 1.0, reg_weight: float = 2.0, dir_weight: float = 0.2,
                 pos_cls_weight: float = 2.0, alpha: float = 0.25, gamma: float = 2.0, sigma: float = 3.0) -> None:
        values = dict(cls_weight=cls_weight, reg_weight=reg_weight, dir_weight=dir_weight,
                      pos_cls_weight=pos_cls_weight, gamma=gamma)
        bad = {k: v for k, v in values.items() if v < 0}
        if bad or not 0 <= alpha <= 1 or sigma <= 0:
            raise ConfigError(f"invalid loss settings: negatives {bad}, alpha {alpha}, sigma {sigma}")
        self.cls_weight, self.reg_weight, self.dir_weight = cls_weight, reg_weight, dir_weight
        self.pos_cls_weight, self.alpha, self.gamma, self.sigma = pos_cls_weight, alpha, gamma, sigma

    def __call__(self, cls_logits: torch.Tensor, box_deltas: torch.Tensor, dir_logits: torch.Tensor | None,
                 targets: AnchorTargets) -> dict[str, torch.Tensor]:
        """cls_logits (A, N); box_deltas (A, N, 7); dir_logits (A, N, B) or None; targets for (A, N).

        Returns ``{"loss_cls", "loss_reg"[, "loss_dir"]}`` scalars.
        """
        if cls_logits.shape != targets.labels.shape:
            raise ConfigError(f"predictions for {tuple(cls_logits.shape)} anchors but targets for "
                              f"{tuple(targets.labels.shape)}: head and targets built on different anchors?")
        num_maps = cls_logits.shape[0]
        pos = (targets.labels == 1).to(cls_logits.dtype)
        neg = (targets.labels == 0).to(cls_logits.dtype)
        norm = pos.sum(dim=1, keepdim=True).clamp(min=1.0)
        cls_w = (pos * self.pos_cls_weight + neg) / norm
        reg_w = pos / norm

        cls = (sigmoid_focal_loss(cls_logits, pos, self.alpha, self.gamma) * cls_w).sum() / num_maps
        pred, tgt = sin_difference(box_deltas, targets.box_targets.to(box_deltas.dtype))
        reg = (smooth_l1(pred - tgt, self.sigma).sum(dim=-1) * reg_w).sum() / num_maps
        out = {"loss_cls": cls * self.cls_weight, "loss_reg": reg * self.reg_weight}
        if dir_logits is not None:
            ce = F.cross_entropy(dir_logits.flatten(0, 1), targets.dir_targets.flatten(), reduction="none")
            out["loss_dir"] = (ce.view_as(reg_w) * reg_w).sum() / num_maps * self.dir_weight
        return out
