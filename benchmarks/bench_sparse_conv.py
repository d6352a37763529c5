"""Speed of the SECOND sparse 3D backbone on the two sparse-conv backends (torch and spconv).

A synthetic 64-beam sweep per agent (ground rings plus vehicle/wall hits, as in
``bench_data.py``) is voxelised on a 0.1 x 0.1 x 0.2 m grid over +-51.2 m x +-51.2 m x [-3, 1] m
(1024 x 1024 x 20 voxels) and capped at ``--voxels`` voxels per agent (default 40 000). The
timed step is :meth:`SECONDEncoder.bev_input` (mean VFE -> OpenPCDet-style ``VoxelBackBone8x``
-> dense -> height to channels), the part that differs between backends; ``--full`` also runs
the 2D BEV backbone. Rows:

* ``torch`` on CPU and, when available, on CUDA, with each of its two methods (``scatter``:
  per-offset gather -> matmul -> index_add, the CPU default; ``gather``: one neighbour gather and
  one matmul per layer, the CUDA default): forward (no grad, eval) and forward+backward (train
  mode, gradient of the mean output);
* ``spconv`` on CPU (forward only: spconv 2.3.8's CPU backward needs a CUDA build of torch) and
  on CUDA when a CUDA build of spconv is installed.

Each cell is the median of ``--repeat`` timed runs after one warm-up run (CUDA synchronised).
The ``rel diff`` column is max |out - ref| / max |ref| against the CPU torch backend's forward
output (same weights; CUDA rows run with TF32 off).
spconv's CPU kernels race on several threads (lost updates), so its differences can exceed float
rounding when ``--threads`` > 1.

    python benchmarks/bench_sparse_conv.py [--voxels 40000] [--agents 1] [--repeat 3] [--threads 0] [--full]
                                           [--skip-cpu]
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import time

import numpy as np
import torch

from coperception.data.voxelize import voxelize
from coperception.encoders.second import SECONDEncoder, spconv_usable
from coperception.encoders.sparse_conv import set_method
from coperception.geometry.grid import BEVGrid
from coperception.structures.cells import Voxels

GRID = BEVGrid((-51.2, -51.2, -3.0, 51.2, 51.2, 1.0), (0.1, 0.1, 0.2))


def synth_points(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, 4) points of a 64-beam-like sweep: ground rings, walls and object hits (metres)."""
    az = rng.uniform(-math.pi, math.pi, n)
    el = np.radians(rng.uniform(-25.0, 2.0, n))
    r = np.where(el < -0.01, 1.9 / np.tan(-np.minimum(el, -0.01)), rng.uniform(20, 100, n))
    r = np.minimum(r, 120.0)
    hit = rng.random(n) < 0.35
    r = np.where(hit, r * rng.uniform(0.15, 1.0, n), r)
    pts = np.stack([r * np.cos(el) * np.cos(az), r * np.cos(el) * np.sin(az), r * np.sin(el) + 0.0,
                    rng.random(n)], axis=1)
    return pts.astype(np.float32)


def make_voxels(num_agents: int, max_voxels: int, seed: int = 0) -> Voxels:
    rng = np.random.default_rng(seed)
    clouds = [torch.from_numpy(synth_points(rng, 120_000)) for _ in range(num_agents)]
    return voxelize(clouds, GRID, max_points_per_voxel=5, max_voxels=max_voxels)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, device: torch.device, repeat: int) -> float:
    fn()
    _sync(device)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def bench_one(enc: SECONDEncoder, voxels: Voxels, backend: str, method: str | None, device: torch.device,
              repeat: int, full: bool, backward: bool, reference: torch.Tensor | None) -> dict:
    enc = copy.deepcopy(enc).to(device)  # every row starts from the same weights and BN statistics
    enc.backend = backend
    set_method(enc, method)
    vox = voxels.to(device)
    step = (lambda v: enc(v).features) if full else enc.bev_input
    enc.eval()
    with torch.no_grad():
        fwd_ms = _time(lambda: step(vox), device, repeat)
        out = step(vox).float().cpu()
    diff = float((out - reference).abs().max() / reference.abs().max()) if reference is not None else 0.0
    bwd_ms = float("nan")
    if backward:
        enc.train()

        def train_step() -> None:
            enc.zero_grad(set_to_none=True)
            step(vox).mean().backward()

        bwd_ms = _time(train_step, device, repeat)
    name = backend if method is None else f"{backend}/{method}"
    return dict(backend=name, device=device.type, fwd_ms=fwd_ms, train_ms=bwd_ms, diff=diff, out=out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--voxels", type=int, default=40_000, help="voxel cap per agent")
    ap.add_argument("--agents", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = leave as is)")
    ap.add_argument("--full", action="store_true", help="include the 2D BEV backbone")
    ap.add_argument("--skip-cpu", action="store_true", help="CUDA rows only (the reference is CUDA torch/scatter)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    voxels = make_voxels(args.agents, args.voxels)
    torch.manual_seed(0)
    enc = SECONDEncoder(GRID, backend="torch")
    nz, ny, nx = enc.sparse.input_shape
    print(f"grid {nx}x{ny}x{nz} (0.1x0.1x0.2 m), {args.agents} agent(s), {len(voxels)} voxels, "
          f"{torch.get_num_threads()} CPU thread(s), {'encoder' if args.full else 'sparse backbone + dense'}")

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    cpu, rows, ref = torch.device("cpu"), [], None
    if not args.skip_cpu:
        rows.append(bench_one(enc, voxels, "torch", "scatter", cpu, args.repeat, args.full, True, None))
        ref = rows[0]["out"]
        rows.append(bench_one(enc, voxels, "torch", "gather", cpu, args.repeat, args.full, True, ref))
        if spconv_usable("cpu"):
            rows.append(bench_one(enc, voxels, "spconv", None, cpu, args.repeat, args.full, False, ref))
    if torch.cuda.is_available():
        gpu = torch.device("cuda")
        for method in ("scatter", "gather"):
            rows.append(bench_one(enc, voxels, "torch", method, gpu, max(args.repeat, 10), args.full, True, ref))
            ref = rows[0]["out"]
        if spconv_usable("cuda"):
            rows.append(bench_one(enc, voxels, "spconv", None, gpu, max(args.repeat, 10), args.full, True, ref))
        print(f"CUDA device: {torch.cuda.get_device_name(gpu)}, peak memory "
              f"{torch.cuda.max_memory_allocated(gpu) / 2**30:.2f} GiB")

    print(f"{'backend':<15} {'device':<6} {'forward ms':>11} {'fwd+bwd ms':>11} {'rel diff':>9}")
    for r in rows:
        train = "n/a" if math.isnan(r["train_ms"]) else f"{r['train_ms']:.1f}"
        print(f"{r['backend']:<15} {r['device']:<6} {r['fwd_ms']:>11.1f} {train:>11} {r['diff']:>9.1e}")


if __name__ == "__main__":
    main()
