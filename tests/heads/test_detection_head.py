"""AnchorHead: shapes, post-processing filters, decoding perfect predictions, and a tiny overfit run."""

import math

import numpy as np
import pytest
import torch

from coperception.data.voxelize import pillarize
from coperception.encoders import PointPillarsEncoder
from coperception.errors import ConfigError
from coperception.geometry.grid import BEVGrid
from coperception.geometry.iou import bev_iou
from coperception.heads import HEADS, AnchorHead, HeadPredictions, PostProcess

GRID = BEVGrid((-19.2, -12.8, -3.0, 19.2, 12.8, 1.0), (0.4, 0.4, 4.0))  # 96 x 64 cells
BOXES = torch.tensor([[[-9.0, -5.0, -1.0, 4.5, 2.0, 1.6, 0.3], [6.0, 4.0, -0.9, 4.0, 1.8, 1.5, 2.6],
                       [10.0, -7.0, -1.1, 5.0, 2.1, 1.8, -1.2]],
                      [[-3.0, 6.0, -1.0, 4.3, 1.9, 1.6, -2.8], [12.0, 2.0, -1.0, 4.6, 2.0, 1.5, 1.6],
                       [-14.0, -8.0, -1.0, 4.0, 1.8, 1.5, 0.0]]])


def perfect_predictions(head: AnchorHead, gt: list[torch.Tensor], logit: float = 8.0) -> HeadPredictions:
    """Predictions that put every positive anchor exactly on its box, with objectness ``logit`` (others -8)."""
    t = head.targets(gt)
    a, (h, w, k) = len(gt), head.anchors.shape[:3]
    cls = torch.where(t.labels == 1, logit, -8.0).view(a, h, w, k).permute(0, 3, 1, 2)
    reg = t.box_targets.view(a, h, w, k * 7).permute(0, 3, 1, 2)
    d = torch.nn.functional.one_hot(t.dir_targets, 2).float().mul(20).view(a, h, w, k * 2).permute(0, 3, 1, 2)
    return HeadPredictions(cls.contiguous(), reg.contiguous(), d.contiguous())


def match_error(det_boxes: np.ndarray, gt: torch.Tensor):
    """For each GT: (centre error m, heading error rad) of its best-IoU detection, and that IoU."""
    iou = bev_iou(torch.as_tensor(det_boxes), gt.double())
    best = iou.argmax(0)
    d = torch.as_tensor(det_boxes)[best]
    centre = (d[:, :3] - gt[:, :3].double()).norm(dim=1)
    yaw = torch.remainder(d[:, 6] - gt[:, 6].double() + math.pi, 2 * math.pi) - math.pi
    return centre, yaw.abs(), iou.max(0).values


def test_shapes_and_grid_checks():
    head = AnchorHead(32, GRID, 2)
    preds = head(torch.randn(3, 32, 32, 48))
    assert preds.cls_logits.shape == (3, 2, 32, 48) and preds.box_deltas.shape == (3, 14, 32, 48)
    assert preds.dir_logits.shape == (3, 4, 32, 48)
    cls, box, d = preds.flat()
    assert cls.shape == (3, 3072) and box.shape == (3, 3072, 7) and d.shape == (3, 3072, 2)
    assert head.confidence_map(preds).shape == (3, 1, 32, 48)
    with pytest.raises(ConfigError, match="anchor grid"):
        head(torch.randn(1, 32, 16, 24))
    assert torch.sigmoid(preds.cls_logits).mean() < 0.05  # prior init


def test_decode_recovers_boxes_from_perfect_predictions():
    head = AnchorHead(8, GRID, 2)
    gt = [BOXES[0], BOXES[1][:2]]
    dets = head.decode(perfect_predictions(head, gt))
    assert [len(d) for d in dets] == [3, 2]
    for d, g in zip(dets, gt):
        centre, yaw, iou = match_error(d.boxes, g)
        assert centre.max() < 1e-4 and yaw.max() < 1e-4 and iou.min() > 0.999
        assert np.all(np.diff(d.scores) <= 0) and d.boxes.dtype == np.float64


def test_postprocess_filters():
    big = torch.tensor([[0.0, 0.0, -1.0, 6.5, 2.0, 1.6, 0.0]])  # 6.5 m long: removed at OpenCOOD's 6 m
    diagonal = torch.tensor([[0.0, 0.0, -1.0, 5.5, 2.0, 1.6, math.pi / 4]])  # hull 5.3 m: kept
    high = torch.tensor([[0.0, 0.0, 0.5, 4.5, 2.0, 1.6, 0.0]])  # top at 1.3 m > grid zmax 1.0
    head = AnchorHead(8, GRID, 2, post=PostProcess(max_box_extent=6.0))
    assert len(AnchorHead(8, GRID, 2).decode(perfect_predictions(head, [big]))[0]) == 1  # default 12 m keeps it
    kept = [len(head.decode(perfect_predictions(head, [b]))[0]) for b in (big, diagonal, high)]
    assert kept == [0, 1, 0]
    loose = AnchorHead(8, GRID, 2, post=PostProcess(max_box_extent=None, z_range=(-3.0, 2.0)))
    assert [len(loose.decode(perfect_predictions(loose, [b]))[0]) for b in (big, high)] == [1, 1]


def test_decode_thresholds_and_max_detections():
    head = AnchorHead(8, GRID, 2)
    preds = perfect_predictions(head, [BOXES[0]], logit=0.0)  # every positive scores exactly 0.5
    assert len(head.decode(preds, score_threshold=0.5)[0]) == 0
    assert len(head.decode(preds, score_threshold=0.4)[0]) == 3
    assert len(head.decode(preds, score_threshold=0.4, max_detections=2)[0]) == 2
    # Without NMS (threshold 1) every positive anchor comes out.
    n_pos = int((head.targets([BOXES[0]]).labels == 1).sum())
    assert len(head.decode(preds, score_threshold=0.4, nms_threshold=1.0)[0]) == n_pos > 3


def surface_points(boxes: torch.Tensor, per_box: int, ground: int, seed: int) -> torch.Tensor:
    """(P, 4) points on the sides and tops of boxes plus a ground plane at z = -1.8."""
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(len(boxes), per_box, 3, generator=g)
    face = torch.randint(0, 5, (len(boxes), per_box), generator=g)
    local = u - 0.5
    axis = torch.where(face < 4, face // 2, torch.full_like(face, 2))  # 0,1: x faces; 2,3: y faces; 4: top
    sign = torch.where((face % 2 == 0) | (face == 4), 0.5, -0.5)
    local.scatter_(2, axis.unsqueeze(-1), sign.unsqueeze(-1))
    dims, yaw = boxes[:, None, 3:6], boxes[:, None, 6]
    p = local * dims
    x = p[..., 0] * torch.cos(yaw) - p[..., 1] * torch.sin(yaw) + boxes[:, None, 0]
    y = p[..., 0] * torch.sin(yaw) + p[..., 1] * torch.cos(yaw) + boxes[:, None, 1]
    obj = torch.stack([x, y, p[..., 2] + boxes[:, None, 2], torch.full_like(x, 0.8)], -1).reshape(-1, 4)
    r = GRID.lidar_range
    gp = torch.rand(ground, 4, generator=g) * torch.tensor([r[3] - r[0], r[4] - r[1], 0.0, 0.2])
    gp += torch.tensor([r[0], r[1], -1.8, 0.0])
    return torch.cat([obj, gp]).float()



def test_overfit_two_frames(one_thread):
    torch.manual_seed(0)
    enc = PointPillarsEncoder(GRID, vfe_filters=(32,), layer_nums=(1, 1, 1), num_filters=(32, 64, 64),
                              num_upsample_filters=(32, 32, 32))
    head = HEADS["anchor"](enc.out_channels, GRID, enc.stride)
    pillars = pillarize([surface_points(b, 300, 2000, i) for i, b in enumerate(BOXES)], GRID)
    gt = list(BOXES)
    targets = head.targets(gt)
    opt = torch.optim.Adam([*enc.parameters(), *head.parameters()], lr=5e-3)
    history = []
    for _ in range(40):
        losses = head.loss(head(enc(pillars)), targets)
        total = sum(losses.values())
        opt.zero_grad()
        total.backward()
        opt.step()
        history.append(total.item())
    assert all(math.isfinite(v) for v in history)
    assert history[-1] < 0.25 * history[0], history
    with torch.no_grad():  # BatchNorm stays in training mode: 40 steps are too few for running stats
        dets = head.decode(head(enc(pillars)))
    for d, g in zip(dets, gt):  # the highest-scoring len(g) detections are the boxes
        centre, yaw, iou = match_error(d.boxes[:len(g)], g)
        assert iou.min() > 0.5 and centre.max() < 0.5 and yaw.max() < 0.3, (centre, yaw, iou)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    torch.manual_seed(0)
    enc = PointPillarsEncoder(GRID, vfe_filters=(32,), layer_nums=(1, 1, 1), num_filters=(32, 64, 64),
                              num_upsample_filters=(32, 32, 32))
    head = AnchorHead(enc.out_channels, GRID, enc.stride)
    pillars = pillarize([surface_points(b, 300, 2000, i) for i, b in enumerate(BOXES)], GRID)
    gt = list(BOXES)
    cpu_targets = head.targets(gt)
    cpu_loss = head.loss(head(enc(pillars)), cpu_targets)
    enc.cuda(), head.cuda()
    gpu_targets = head.targets([b.cuda() for b in gt])
    assert torch.equal(gpu_targets.labels.cpu(), cpu_targets.labels)
    gpu_loss = head.loss(head(enc(pillars.to("cuda"))), gpu_targets)
    sum(gpu_loss.values()).backward()
    for k, v in cpu_loss.items():
        assert gpu_loss[k].is_cuda and abs(gpu_loss[k].item() - v.item()) <= 2e-2 * abs(v.item()) + 1e-4, k
    dets = head.decode(perfect_predictions(head, [b.cuda() for b in gt]))
    for d, g in zip(dets, gt):
        centre, yaw, iou = match_error(d.boxes, g)
        assert len(d) == len(g) and iou.min() > 0.999


@pytest.mark.parametrize("name", sorted(HEADS))
def test_registry_forward_backward(name):
    head = HEADS[name](16, GRID, 2)
    x = torch.randn(2, 16, 32, 48, requires_grad=True)
    losses = head.loss(head(x), head.targets([BOXES[0], BOXES[1][:0]]))
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    assert x.grad.abs().sum() > 0 and all(p.grad is not None for p in head.parameters())
