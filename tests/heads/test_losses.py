"""Focal / smooth-L1 / direction losses: closed forms, weighting, gradients."""

import math

import pytest
import torch

from coperception.errors import ConfigError
from coperception.heads.losses import AnchorLoss, sigmoid_focal_loss, sin_difference, smooth_l1
from coperception.heads.targets import AnchorTargets


def targets(labels, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.tensor(labels)
    pos = (labels == 1).unsqueeze(-1)
    boxes = torch.randn(*labels.shape, 7, generator=g) * pos
    dirs = torch.randint(0, 2, labels.shape, generator=g) * pos[..., 0]
    return AnchorTargets(labels, boxes, dirs, torch.where(labels == 1, 0, -1))


def test_focal_loss_closed_form():
    x = torch.tensor([2.0, -1.0, 0.5])
    t = torch.tensor([1.0, 0.0, 0.0])
    p = torch.sigmoid(x)
    expected = torch.stack([0.25 * (1 - p[0]) ** 2 * -torch.log(p[0]),
                            0.75 * p[1] ** 2 * -torch.log(1 - p[1]),
                            0.75 * p[2] ** 2 * -torch.log(1 - p[2])])
    torch.testing.assert_close(sigmoid_focal_loss(x, t), expected)


def test_smooth_l1_sigma3():
    d = torch.tensor([0.0, 0.1, -0.1, 1 / 9, 0.5, -2.0])
    expected = torch.tensor([0.0, 0.5 * 9 * 0.01, 0.5 * 9 * 0.01, 0.5 / 9, 0.5 - 0.5 / 9, 2.0 - 0.5 / 9])
    torch.testing.assert_close(smooth_l1(d, 3.0), expected)


def test_sin_difference_gives_sin_of_yaw_error():
    p, t = torch.randn(5, 7), torch.randn(5, 7)
    p2, t2 = sin_difference(p, t)
    torch.testing.assert_close(p2[:, 6] - t2[:, 6], torch.sin(p[:, 6] - t[:, 6]))
    torch.testing.assert_close(p2[:, :6], p[:, :6])
    # A box and its 180-degree twin cost the same.
    p3, t3 = sin_difference(p + torch.tensor([0, 0, 0, 0, 0, 0, math.pi]), t)
    torch.testing.assert_close(p3[:, 6] - t3[:, 6], -(p2[:, 6] - t2[:, 6]), atol=1e-6, rtol=0)


def test_normalisation_weights_and_ignored_anchors():
    t = targets([[1, 0, -1, 0, 1, 0], [0, 0, 0, -1, 0, 0]])
    cls = torch.randn(2, 6, requires_grad=True)
    box = torch.randn(2, 6, 7, requires_grad=True)
    d = torch.randn(2, 6, 2, requires_grad=True)
    loss = AnchorLoss(cls_weight=1.0, reg_weight=2.0, dir_weight=0.2, pos_cls_weight=2.0)(cls, box, d, t)
    assert set(loss) == {"loss_cls", "loss_reg", "loss_dir"}
    pos = t.labels == 1
    focal = sigmoid_focal_loss(cls.detach(), pos.float())
    w = torch.tensor([[2, 1, 0, 1, 2, 1], [1, 1, 1, 0, 1, 1]]) / torch.tensor([[2.0], [1.0]])
    torch.testing.assert_close(loss["loss_cls"], (focal * w).sum() / 2)
    p2, t2 = sin_difference(box.detach(), t.box_targets)
    reg = (smooth_l1(p2 - t2).sum(-1) * pos).sum() / 2 / 2  # 2 positives in map 0, 2 maps
    torch.testing.assert_close(loss["loss_reg"], 2.0 * reg)
    sum(loss.values()).backward()
    assert cls.grad[0, 2] == 0 and cls.grad[1, 3] == 0  # ignored anchors get no gradient
    assert (box.grad[~pos] == 0).all() and (d.grad[~pos] == 0).all()
    assert box.grad[pos].abs().sum() > 0 and torch.isfinite(cls.grad).all()


def test_no_positives_is_finite_and_dir_optional():
    t = targets([[0, 0, -1]])
    loss = AnchorLoss()(torch.zeros(1, 3, requires_grad=True), torch.zeros(1, 3, 7), None, t)
    assert set(loss) == {"loss_cls", "loss_reg"} and loss["loss_reg"] == 0
    assert all(torch.isfinite(v) for v in loss.values())


def test_rejects_bad_settings_and_shapes():
    with pytest.raises(ConfigError):
        AnchorLoss(alpha=1.5)
    with pytest.raises(ConfigError, match="targets"):
        AnchorLoss()(torch.zeros(1, 4), torch.zeros(1, 4, 7), None, targets([[0, 0, 1]]))
