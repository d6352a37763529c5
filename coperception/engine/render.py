"""BEV picture of a dataset frame with a detector's predictions (used by ``viz`` and ``demo``)."""

from __future__ import annotations

from pathlib import Path


def render_example_at(cfg, model, path: Path, *, split: str, index: int, mode: str = "intermediate",
                      resolution: float = 0.1) -> Path:
    """BEV picture of one frame: all agents' points in the ego frame, GT (green), detections (red)."""
    from coperception.errors import ConfigError
    from coperception.geometry.pose import transform_points
    from coperception.models.build import build_dataset
    from coperception.viz.bev import View, render_bev, save_png

    ds = build_dataset(cfg, split, train=False, fusion_mode="intermediate", return_points=True)
    if not 0 <= index < len(ds):
        raise ConfigError(f"frame index {index}: split {split!r} of {cfg.data.root} has {len(ds)} frames")
    batch = ds.collate_fn()([ds[index]])
    dets = model.predict(batch, mode, score_threshold=cfg.eval.score_threshold,
                         nms_threshold=cfg.eval.nms_threshold)[0]
    tf = batch.ego_from_agent.double().numpy()
    points = [transform_points(m, p.numpy()) for m, p in zip(tf, batch.points)]
    r = cfg.data.lidar_range
    view = View((r[0], r[3]), (r[1], r[4]), resolution)
    gt = batch.gt_boxes[0][batch.gt_mask[0]].numpy()
    image = render_bev(points, gt_boxes=gt, pred_boxes=dets.boxes, agent_xy=tf[:, :2, 3], view=view)
    return save_png(image, path)
