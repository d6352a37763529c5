"""List every host <-> device synchronisation in one training step of the bench_train
configuration, with the line of coperception that caused it (a sync stalls the host until the
GPU has caught up, so the next kernels cannot be queued ahead).

    python benchmarks/find_syncs.py [--agents 3] [--points 70000] [--batch 2]
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import traceback
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_train import one_batch_step, our_config, write_synthetic  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--agents", type=int, default=3)
    p.add_argument("--points", type=int, default=70000)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--config", default=None, help="a model config instead of the bench_train one")
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA device")
    device = torch.device("cuda")
    with tempfile.TemporaryDirectory() as tmp:
        root = write_synthetic(Path(tmp), args.batch, args.agents, args.points)
        cfg = our_config(root, args.agents, args.batch)
        if args.config:
            from dataclasses import replace

            from coperception.models.config import load_experiment
            other = load_experiment(args.config)
            cfg = replace(other, data=replace(other.data, root=str(root), augment=None, voxelize_on="device"))
        _, step = one_batch_step(cfg, args.batch, device, move_each_step=True)

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    sites = collections.Counter()

    def record(message, category, filename, lineno, file=None, line=None):
        frames = [f for f in traceback.extract_stack() if "coperception" in f.filename and "find_syncs" not in f.filename]
        where = f"{Path(frames[-1].filename).name}:{frames[-1].lineno} {frames[-1].line}" if frames else filename
        sites[where] += 1

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = record
        torch.cuda.set_sync_debug_mode("warn")
        step()
        torch.cuda.set_sync_debug_mode(0)
    print(f"{sum(sites.values())} synchronisations in one step")
    for where, n in sites.most_common():
        print(f"{n:4d}  {where}")


if __name__ == "__main__":
    main()
