"""The composed detector on simulated data: losses, every inference mode, measured bytes, overfit."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from coperception.comm.wire import encode
from coperception.engine.experiment import evaluate_experiment, load_detector, train_experiment
from coperception.eval.ap import APEvaluator
from coperception.models.build import build_dataset, build_detector
from coperception.train import DistInfo
from coperception.train.precise_bn import update_bn_stats

CPU = DistInfo(0, 1, 0, torch.device("cpu"))


def _batch(cfg, split="train", n=2):
    ds = build_dataset(cfg, split, train=False)
    return ds.collate_fn()([ds[i] for i in range(min(n, len(ds)))])


def test_training_losses_are_named_finite_and_backpropagate(tiny_experiment):
    torch.manual_seed(0)
    model = build_detector(tiny_experiment)
    batch = _batch(tiny_experiment)
    assert batch.agents_per_sample.tolist() == [2, 2]  # ego car + road-side unit
    losses = model(batch)
    assert set(losses) == {"loss_cls", "loss_reg", "loss_dir", "single_loss_cls", "single_loss_reg",
                           "single_loss_dir"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_every_mode_returns_ego_frame_detections_and_real_message_sizes(tiny_experiment):
    torch.manual_seed(0)
    model = build_detector(tiny_experiment).eval()
    batch = _batch(tiny_experiment)
    sizes = {}
    for mode in ("single", "late", "intermediate"):
        out = model.infer(batch, mode, score_threshold=0.05)
        assert len(out.detections) == 2
        assert [len(m) for m in out.messages] == ([0, 0] if mode == "single" else [1, 1])
        sizes[mode] = [len(encode(m)) for msgs in out.messages for m in msgs]
    c, h, w = model.encoder.out_channels, *tiny_experiment.data.grid.feature_shape(model.encoder.stride)
    assert all(s > 4 * c * h * w for s in sizes["intermediate"])   # fp32 map + header, pose, CRC
    assert all(s < 4 * c * h * w / 100 for s in sizes["late"])      # boxes are tiny by comparison


def test_overfits_one_frame_to_high_ap(tiny_experiment):
    """A tiny detector trained on one frame recovers its vehicles (AP@0.5 > 0.9 on that frame)."""
    torch.manual_seed(0)
    cfg = replace(tiny_experiment, train=replace(tiny_experiment.train, lr=0.01, grad_clip=None))
    model = build_detector(cfg)
    batch = _batch(cfg, n=1)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    first = None
    for _ in range(200):
        loss = sum(model(batch).values())
        first = first if first is not None else float(loss.detach())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.2 * first
    update_bn_stats(model, [batch])  # 200 steps at lr 0.01: the running averages lag the weights
    dets = model.predict(batch, "intermediate", score_threshold=0.3)[0]
    ev = APEvaluator((0.5, 0.7))
    gt = batch.gt_boxes[0][batch.gt_mask[0]].numpy()
    assert len(gt) >= 3
    ev.add_frame(dets.boxes, dets.scores, gt)
    assert ev.result().ap(0.5) > 0.9


def test_train_checkpoint_load_and_evaluate(tiny_experiment, tmp_path):
    trainer = train_experiment(tiny_experiment, tmp_path, dist=CPU, max_steps=1)
    ckpt = tmp_path / "checkpoints" / "last.pt"
    assert ckpt.exists() and (tmp_path / "config.yaml").exists()
    cfg, model = load_detector(ckpt)
    assert cfg == tiny_experiment
    for a, b in zip(model.state_dict().values(), trainer.module.state_dict().values()):
        assert torch.equal(a, b)
    reports = evaluate_experiment(cfg, model, split="test", modes=("single", "late", "intermediate"))
    assert set(reports) == {"single", "late", "intermediate"}
    assert reports["single"].bytes_per_agent_frame() == 0
    assert reports["intermediate"].bytes_per_agent_frame() > reports["late"].bytes_per_agent_frame() > 0
    assert all(r.ap.num_frames == 3 for r in reports.values())
    assert np.isfinite(reports["intermediate"].ap.ap(0.3))
    # A checkpoint written before data.agent_frame existed was trained on own-frame clouds.
    from coperception.errors import ConfigError
    from coperception.train import load_checkpoint, save_checkpoint
    state = load_checkpoint(ckpt)
    del state["config"]["data"]["agent_frame"]
    old = save_checkpoint(tmp_path / "old.pt", state)
    assert load_detector(old)[0].data.agent_frame == "own"
    assert load_detector(old, agent_frame="ego")[0].data.agent_frame == "ego"
    assert load_detector(ckpt)[0].data.agent_frame == tiny_experiment.data.agent_frame == "ego_heading"
    with pytest.raises(ConfigError, match="agent_frame"):
        load_detector(ckpt, agent_frame="sideways")


def test_second_encoder_trains_through_the_same_detector(tiny_experiment):
    """The voxel path (SECOND, pure-torch sparse convs on CPU) runs through dataset, fusion and head."""
    from coperception.models.config import Component

    cfg = replace(tiny_experiment,
                  # voxels made in the loader (``auto`` leaves them to the GPU where one exists)
                  data=replace(tiny_experiment.data, voxel_size=(0.2, 0.2, 0.5), max_points_per_pillar=5,
                               voxelize_on="loader"),
                  model=replace(tiny_experiment.model, encoder=Component("second", {
                      "sparse_channels": [8, 16], "sparse_blocks": [1, 1], "sparse_out_channels": 16,
                      "backend": "torch", "layer_nums": [1], "layer_strides": [1], "num_filters": [32],
                      "upsample_strides": [1], "num_upsample_filters": [32]})))
    torch.manual_seed(0)
    model = build_detector(cfg)
    batch = _batch(cfg)
    assert batch.cells.coords.shape[1] == 4  # [agent, z, row, col] voxels
    losses = model(batch)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    dets = model.eval().predict(batch, "intermediate", score_threshold=0.01)
    assert len(dets) == 2


def test_confidence_fusion_trains_and_its_byte_path_equals_direct_fusion(tiny_experiment):
    """The confidence-weighted fusion gets the shared head's per-agent logits in training and in
    inference: losses backpropagate to every trainable weight that the fused loss reaches, and
    detections from decoded fp32 messages equal those of fusing the maps directly."""
    from coperception.models.config import Component
    cfg = replace(tiny_experiment, model=replace(tiny_experiment.model, fusion=Component("confidence")))
    torch.manual_seed(0)
    model = build_detector(cfg)
    batch = _batch(cfg)
    losses = model(batch)
    assert all(torch.isfinite(v) for v in losses.values())
    losses["loss_cls"].backward()  # the fused loss alone reaches encoder and head
    assert model.encoder.parameters().__next__().grad is not None
    model.eval()
    with torch.no_grad():
        feats = model.encode(batch)
        direct = model.head.decode(model.head(model.fuse(feats, batch)), score_threshold=0.05, nms_threshold=0.15)
    sent = model.infer(batch, "intermediate", score_threshold=0.05).detections
    for a, b in zip(direct, sent):
        torch.testing.assert_close(a.boxes, b.boxes, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(a.scores, b.scores, atol=1e-6, rtol=1e-6)


def test_voxelizing_on_the_device_gives_the_same_losses_and_detections(tiny_experiment):
    """``data.voxelize_on: device``: batches carry the raw clouds and the detector groups them;
    same pillars, so the same losses and detections as cells made in the loader."""
    loader_cfg = replace(tiny_experiment, data=replace(tiny_experiment.data, voxelize_on="loader"))
    device_cfg = replace(tiny_experiment, data=replace(tiny_experiment.data, voxelize_on="device"))
    torch.manual_seed(0)
    model = build_detector(loader_cfg).eval()  # eval: batch-norm statistics stay put between the calls
    with_cells, with_points = _batch(loader_cfg), _batch(device_cfg)
    assert with_cells.cells is not None and with_points.cells is None and len(with_points.points) == 4
    a, b = model(with_cells), model(with_points)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    da = model.infer(with_cells, "intermediate", score_threshold=0.05).detections
    db = model.infer(with_points, "intermediate", score_threshold=0.05).detections
    for x, y in zip(da, db):
        torch.testing.assert_close(x.boxes, y.boxes)
    # The step-by-step API voxelises a cloud-carrying batch too (encode is public).
    with torch.no_grad():
        torch.testing.assert_close(model.encode(with_points).features, model.encode(with_cells).features)


def test_post_fusion_block_starts_as_identity_and_trains_only_the_fused_path(tiny_experiment):
    from coperception.models.detector import PostFusion
    cfg = replace(tiny_experiment, model=replace(tiny_experiment.model, post_fusion_layers=2))
    torch.manual_seed(0)
    model = build_detector(cfg)
    assert isinstance(model.post_fusion, PostFusion)
    batch = _batch(cfg)
    model.eval()
    with torch.no_grad():
        feats = model.encode(batch)
        plain = model.fusion(feats.features, batch.agents_per_sample, batch.ego_from_agent, None,
                             scores=model.head(feats.features).cls_logits.amax(1, keepdim=True))
        torch.testing.assert_close(model.fuse(feats, batch), plain)  # zero-initialised residual
    model.train()
    losses = model(batch)
    losses["single_loss_cls"].backward()
    assert all(p.grad is None for p in model.post_fusion.parameters())  # the per-agent loss never reaches it
    model.zero_grad()
    model(batch)["loss_cls"].backward()
    assert model.post_fusion.block[-1].weight.grad.abs().sum() > 0
    with pytest.raises(Exception, match="post_fusion_layers"):
        build_detector(replace(cfg, model=replace(cfg.model, post_fusion_layers=-1)))


def test_training_does_not_depend_on_random_numbers_drawn_before_it(tiny_experiment, tmp_path):
    # The demo generates data in the same process before training; the initial weights (and so
    # the run) must come from train.seed alone.
    from coperception.engine.experiment import train_experiment
    torch.manual_seed(123)
    a = train_experiment(tiny_experiment, tmp_path / "a", dist=CPU, max_steps=1).module.state_dict()
    torch.rand(1000)  # some earlier work consumed the global generator
    b = train_experiment(tiny_experiment, tmp_path / "b", dist=CPU, max_steps=1).module.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=k)
