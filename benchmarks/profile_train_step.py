"""Profile one training step of the bench_train configuration on the device (top ops by time).

    python benchmarks/profile_train_step.py [--device cuda] [--agents 3] [--points 70000] [--batch 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_train import one_batch_step, our_config, write_synthetic  # noqa: E402

from coperception.models.build import build_dataset  # noqa: E402
from coperception.train.device import move_to_device  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--agents", type=int, default=3)
    p.add_argument("--points", type=int, default=70000)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--rows", type=int, default=30)
    args = p.parse_args()
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        root = write_synthetic(Path(tmp), args.batch, args.agents, args.points)
        cfg = our_config(root, args.agents, args.batch)
        model, step = one_batch_step(cfg, args.batch, device)
        ds = build_dataset(cfg, "train", train=True)
        batch = move_to_device(ds.collate_fn()([ds[i] for i in range(args.batch)]), device)

    for _ in range(5):
        step()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    stages = {}
    with torch.no_grad():
        t = time.perf_counter(); cells = model.with_cells(batch); sync(); stages["voxelise"] = time.perf_counter() - t
        t = time.perf_counter(); feats = model.encode(cells); sync(); stages["encode (fwd)"] = time.perf_counter() - t
        t = time.perf_counter(); fused = model.fuse(feats, batch); sync(); stages["fuse (fwd)"] = time.perf_counter() - t
        t = time.perf_counter(); preds = model.head(fused); sync(); stages["head (fwd)"] = time.perf_counter() - t
        # the training path: all maps at once from the padded ground truth
        t = time.perf_counter(); tg = model.head.targets_padded(batch.gt_boxes, batch.gt_mask); sync(); stages["targets"] = time.perf_counter() - t
        t = time.perf_counter(); model.head.loss(preds, tg); sync(); stages["loss (fwd)"] = time.perf_counter() - t
    t = time.perf_counter(); step(); sync(); stages["whole step"] = time.perf_counter() - t
    for k, v in stages.items():
        print(f"{k:<20} {v * 1e3:8.2f} ms")
    acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch.profiler.profile(activities=acts) as prof:
        for _ in range(3):
            step()
        sync()
    keys = ["self_cuda_time_total", "self_cpu_time_total"] if device.type == "cuda" else ["self_cpu_time_total"]
    for key in keys:  # where the device's time goes, then where the host's goes
        print(prof.key_averages().table(sort_by=key, row_limit=args.rows, max_name_column_width=60))


if __name__ == "__main__":
    main()
