"""Anchor target assignment against a brute-force reference and against OpenCOOD's labels."""

import math

import numpy as np
import pytest
import torch

from coperception.geometry.boxes import boxes_to_bev_corners, boxes_to_standup
from coperception.geometry.grid import BEVGrid
from coperception.heads.anchors import AnchorSize, make_anchors
from coperception.heads.coder import decode_boxes, direction_target
from coperception.heads.targets import TargetAssigner, opencood_standup_iou

GRID = BEVGrid((-8.0, -6.4, -3.0, 8.0, 6.4, 1.0), (0.8, 0.8, 4.0))  # 20 x 16 cells


def _shapely():
    """Shapely, for the polygon reference of the tests that use it (skipped where it is missing)."""
    return pytest.importorskip("shapely.geometry")



def random_gt(n, seed):
    g = np.random.default_rng(seed)
    return torch.tensor(np.column_stack([
        g.uniform(-7, 7, n), g.uniform(-5.5, 5.5, n), g.uniform(-1.5, -0.5, n),
        g.uniform(3.0, 6.0, n), g.uniform(1.5, 2.5, n), g.uniform(1.3, 2.0, n), g.uniform(-math.pi, math.pi, n)]),
        dtype=torch.float32)


def brute_iou(anchors, gt, mode):
    out = np.zeros((len(anchors), len(gt)))
    if mode == "rotated":
        pa = [_shapely().Polygon(q) for q in boxes_to_bev_corners(anchors.double()).numpy()]
        pg = [_shapely().Polygon(q) for q in boxes_to_bev_corners(gt.double()).numpy()]
    ha, hg = boxes_to_standup(anchors.double()).numpy(), boxes_to_standup(gt.double()).numpy()
    for i in range(len(anchors)):
        for j in range(len(gt)):
            if mode == "rotated":
                inter = pa[i].intersection(pg[j]).area
                out[i, j] = inter / (pa[i].area + pg[j].area - inter)
                continue
            a, b = ha[i], hg[j]
            iw = min(a[2], b[2]) - max(a[0], b[0]) + 1
            ih = min(a[3], b[3]) - max(a[1], b[1]) + 1
            if iw > 0 and ih > 0:
                out[i, j] = iw * ih / ((a[2] - a[0] + 1) * (a[3] - a[1] + 1) + (b[2] - b[0] + 1) * (b[3] - b[1] + 1) - iw * ih)
    return out


def brute_assign(iou, pos_thr, neg_thr):
    n, m = iou.shape
    labels, matched = [-1] * n, [-1] * n
    for k in range(n):
        if m == 0:
            labels[k] = 0
            continue
        best = max(iou[k])
        if best < neg_thr:
            labels[k] = 0
        if best > pos_thr:
            labels[k], matched[k] = 1, list(iou[k]).index(best)
    forced = {}
    for j in range(m):
        col = list(iou[:, j])
        k = col.index(max(col))
        if iou[k, j] > 0:
            forced.setdefault(k, []).append(j)
    for k, boxes in forced.items():
        best = max(iou[k, j] for j in boxes)
        labels[k], matched[k] = 1, next(j for j in boxes if iou[k, j] == best)
    return labels, matched


@pytest.mark.parametrize("mode", ["standup", "rotated"])
@pytest.mark.parametrize("seed", range(4))
def test_assignment_matches_brute_force(mode, seed):
    anchors = make_anchors(GRID, 1, (AnchorSize(4.5, 2.0, 1.56, -1.0),), (0.0, math.pi / 2))
    flat = anchors.reshape(-1, 7)
    gt = random_gt(1 + seed, seed)
    assigner = TargetAssigner(iou_mode=mode)
    t = assigner(anchors, [gt, gt[:0]])
    ours = assigner.iou(flat, gt).numpy()
    np.testing.assert_allclose(ours, brute_iou(flat, gt, mode), atol=2e-5)
    # Matching rules checked on the same IoU values (float32 vs float64 may swap near-ties).
    labels, matched = brute_assign(ours, 0.6, 0.45)
    assert t.labels[0].tolist() == labels and t.matched[0].tolist() == matched
    assert (t.labels[1] == 0).all() and (t.matched[1] == -1).all()  # map without boxes: all negative
    pos = t.labels[0] == 1
    assert set(t.matched[0][pos].tolist()) == set(range(len(gt)))  # every box has an anchor
    torch.testing.assert_close(decode_boxes(t.box_targets[0][pos], flat[pos]), gt[t.matched[0][pos]],
                               atol=1e-5, rtol=1e-5)
    assert torch.equal(t.dir_targets[0][pos], direction_target(gt[t.matched[0][pos], 6]))
    assert (t.box_targets[0][~pos] == 0).all()


def test_plus_one_iou_matches_opencood_bbox_overlaps():
    overlaps = pytest.importorskip("opencood.utils.box_overlaps")
    a = boxes_to_standup(random_gt(30, 1)).float()
    b = boxes_to_standup(random_gt(7, 2)).float()
    theirs = overlaps.bbox_overlaps(a.numpy().astype(np.float32), b.numpy().astype(np.float32))
    np.testing.assert_allclose(opencood_standup_iou(a, b).numpy(), theirs, atol=1e-6)


def test_anchors_and_labels_match_opencood():
    vp = pytest.importorskip("opencood.data_utils.post_processor.voxel_postprocessor")
    grid = BEVGrid((-12.8, -8.0, -3.0, 12.8, 8.0, 1.0), (0.4, 0.4, 4.0))
    params = dict(order="hwl", target_args=dict(pos_threshold=0.6, neg_threshold=0.45, score_threshold=0.2),
                  anchor_args=dict(cav_lidar_range=list(grid.lidar_range), l=4.5, w=2.0, h=1.56, r=[0, 90],
                                   num=2, feature_stride=2, W=grid.nx, H=grid.ny, vw=0.4, vh=0.4))
    post = vp.VoxelPostprocessor(params, train=True)
    theirs_hwl = post.generate_anchor_box()
    ours = make_anchors(grid, 2, (AnchorSize(4.5, 2.0, 1.56, -1.0),), (0.0, math.pi / 2), dtype=torch.float64)
    np.testing.assert_allclose(ours.numpy(), theirs_hwl[..., [0, 1, 2, 5, 4, 3, 6]], atol=1e-9)
    # Well-separated boxes: no anchor above the positive threshold for two boxes (where the rules differ).
    gt = torch.tensor([[-6.1, -3.3, -0.9, 4.2, 1.9, 1.5, 0.2], [5.3, 2.9, -1.1, 4.8, 2.1, 1.7, 1.4],
                       [1.0, -4.0, -1.0, 3.6, 1.7, 1.5, -2.9]], dtype=torch.float64)
    mask = np.zeros(5)
    mask[:3] = 1
    padded = np.zeros((5, 7))
    padded[:3] = gt.numpy()[:, [0, 1, 2, 5, 4, 3, 6]]
    label = post.generate_label(gt_box_center=padded, anchors=theirs_hwl, mask=mask)
    t = TargetAssigner()(ours, [gt])
    assert np.array_equal(t.labels[0].numpy() == 1, label["pos_equal_one"].reshape(-1) == 1)
    assert np.array_equal(t.labels[0].numpy() == 0, label["neg_equal_one"].reshape(-1) == 1)
    their_targets = label["targets"].reshape(-1, 7)[:, [0, 1, 2, 5, 4, 3, 6]]
    np.testing.assert_allclose(t.box_targets[0].numpy(), their_targets, atol=1e-9)


@pytest.mark.parametrize("plus_one", [True, False])
@pytest.mark.parametrize("seed", range(3))
def test_padded_batch_assignment_equals_the_per_map_one(plus_one, seed):
    """All maps at once from padded ground truth (the detector's path) == one map at a time."""
    anchors = make_anchors(GRID, 1, (AnchorSize(4.5, 2.0, 1.56, -1.0),), (0.0, math.pi / 2))
    gts = [random_gt(n, seed * 10 + i) for i, n in enumerate((3, 0, 5, 1))]
    width = 7  # padded beyond the largest map, as max_objects does
    padded = torch.zeros(len(gts), width, 7)
    valid = torch.zeros(len(gts), width, dtype=torch.bool)
    for i, g in enumerate(gts):
        padded[i, :len(g)], valid[i, :len(g)] = g, True
    padded[~valid] = torch.tensor([1e3, -1e3, 5.0, 0.0, 0.0, 0.0, 9.0])  # garbage in padding never matters
    assigner = TargetAssigner(standup_plus_one=plus_one)
    one_by_one = assigner(anchors, gts)
    batched = assigner.assign_padded(anchors, padded, valid)
    for field in ("labels", "matched", "dir_targets"):
        assert torch.equal(getattr(batched, field), getattr(one_by_one, field)), field
    torch.testing.assert_close(batched.box_targets, one_by_one.box_targets)
    rotated = TargetAssigner(iou_mode="rotated")
    assert torch.equal(rotated.assign_padded(anchors, padded, valid).labels, rotated(anchors, gts).labels)
