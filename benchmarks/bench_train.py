"""Training throughput: our PointPillars intermediate fusion vs OpenCOOD's point_pillar_intermediate.

Both train on the SAME OPV2V files (written by our writer), same batch size, same grid
(OpenCOOD's hypes ``point_pillar_intermediate_fusion.yaml``: range [-140.8, -40, -3, 140.8, 40, 1],
0.4 m pillars, 32 points per pillar, backbone [3, 5, 8] / [64, 128, 256], 2 anchors per cell),
in the same process, one after the other. OpenCOOD's intermediate fusion projects every
collaborator's cloud into the ego frame before voxelising (``proj_first``, its default), so its
fusion needs no warp; ours does the same by default (``--agent-frame ego``); ``ego_heading``
(our training default: each agent keeps its own origin and range) adds a translation warp.
A step is the whole thing a training loop does: load and collate a batch (DataLoader, same
worker count), move it to the device, forward, loss, backward, optimiser step. OpenCOOD fuses
with attention at every backbone scale; ours fuses with per-location attention after the
backbone (``fusion: attention``), without the direction head and the per-agent loss, so that
both do comparable work. On the CPU ours runs with what our trainer sets there
(``train.keep_host_memory``: freed activation memory is reused, not unmapped); OpenCOOD runs
first, with the C library's defaults, as its ``train.py`` does; ``--opencood-kept`` times it
once more under our setting.

    python benchmarks/bench_train.py [--steps 10] [--frames 6] [--agents 3] [--batch 2] [--device cuda]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_data import synth_frame, write_split  # noqa: E402

from coperception.data.agent_frames import AGENT_FRAMES  # noqa: E402
from coperception.models.build import build_dataset, build_detector  # noqa: E402
from coperception.models.config import Component, ExperimentConfig, HeadConfig, ModelConfig, load_experiment  # noqa: E402
from coperception.train.device import move_to_device  # noqa: E402
from coperception.train.host_memory import keep_freed_memory  # noqa: E402

HYPES = "hypes_yaml/point_pillar_intermediate_fusion.yaml"
RANGE = (-140.8, -40.0, -3.0, 140.8, 40.0, 1.0)


def write_synthetic(root: Path, frames: int, agents: int, points: int, seed: int = 0) -> Path:
    """``frames`` synthetic OPV2V frames (binary PCD) of ``agents`` x ``points`` under ``root``."""
    rng = np.random.default_rng(seed)
    return write_split(root, [synth_frame(rng, 2 * i + 68, agents, points) for i in range(frames)], "binary")


def our_config(root: Path, agents: int, batch: int, voxelize_on: str = "auto",
               agent_frame: str = "ego") -> ExperimentConfig:
    base = load_experiment(Path(__file__).resolve().parents[1] / "models" / "_base.yaml")
    data = replace(base.data, root=str(root), lidar_range=RANGE, max_agents=agents, augment=None,
                   voxelize_on=voxelize_on, agent_frame=agent_frame)
    model = ModelConfig(encoder=base.model.encoder, fusion=Component("attention"),
                        head=HeadConfig(anchor_sizes=((3.9, 1.6, 1.56),), use_direction=False, max_box_extent=6.0),
                        single_loss_weight=0.0)
    return replace(base, data=data, model=model, train=replace(base.train, batch_size=batch))


def one_batch_step(cfg: ExperimentConfig, batch_size: int, device, move_each_step: bool = False):
    """(model, step) for profiling: one collated batch of ``cfg``'s train split, trained on with
    Adam; ``move_each_step`` copies the host batch to ``device`` inside every step (as training does)."""
    model = build_detector(cfg).to(device).train()
    ds = build_dataset(cfg, "train", train=True)
    host = ds.collate_fn()([ds[i] for i in range(batch_size)])
    ready = None if move_each_step else move_to_device(host, device)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)

    def step():
        losses = model(move_to_device(host, device) if move_each_step else ready)
        opt.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        opt.step()
    return model, step


def time_steps(step, batches, steps: int, warmup: int, device) -> float:
    """Seconds per step over ``steps`` steps after ``warmup`` (the loader is re-iterated as needed;
    with workers they persist across epochs, as in a real training run)."""
    loader = batches()
    batches = lambda: loader  # noqa: E731
    it = iter(batches())
    for i in range(warmup + steps):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            it = iter(batches())
            batch = next(it)
        step(batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def amp_step(model_loss, opt, scaler, amp: bool) -> None:
    """One optimiser step, with fp16 autocast + GradScaler when ``amp`` (what both OpenCOOD's
    ``train.py --half`` and our ``train.amp`` do on CUDA)."""
    with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
        loss = model_loss()
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()


def ours(root: Path, args, device, voxelize_on: str = "auto") -> float:
    cfg = our_config(root, args.agents, args.batch, voxelize_on, args.agent_frame)
    torch.manual_seed(0)
    model = build_detector(cfg).to(device).train()
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    ds = build_dataset(cfg, "train", train=True)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cuda", enabled=args.amp)

    def loader():
        # pinned batches, as coperception's trainer loads them on CUDA (OpenCOOD's train.py does not pin)
        return torch.utils.data.DataLoader(ds, batch_size=args.batch, shuffle=True, num_workers=args.workers,
                                           collate_fn=ds.collate_fn(), persistent_workers=args.workers > 0,
                                           pin_memory=device.type == "cuda")

    def step(batch):
        batch = move_to_device(batch, device)
        amp_step(lambda: sum(model(batch).values()), opt, scaler, args.amp)

    return time_steps(step, loader, args.steps, args.warmup, device), compute_only(step, loader, device, max(3, args.steps)), loader_only(loader, max(3, args.steps))


def loader_only(loader, steps: int = 20) -> float:
    """Seconds per batch of the DataLoader alone (persistent workers warmed up by the timed run)."""
    dl = loader()
    it, start = iter(dl), None
    for i in range(steps + 2):
        if i == 2:
            start = time.perf_counter()
        try:
            next(it)
        except StopIteration:
            it = iter(dl)
            next(it)
    return (time.perf_counter() - start) / steps


def compute_only(step, loader, device, steps: int = 10) -> float:
    """Seconds per step on one batch already in memory (no loading): the device-side cost."""
    batch = next(iter(loader()))
    for _ in range(3):
        step(batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step(batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def _opencood_without_open3d() -> bool:
    """Let OpenCOOD import where open3d is missing (the GPU host: its wheel is too big to travel).

    open3d is used by OpenCOOD's training path only in ``pcd_utils.pcd_to_np`` (reading a PCD);
    that function is replaced by our reader of the same file ((N, 4) x, y, z, intensity), and an
    empty ``open3d`` module satisfies the module-level import. Our reader is faster than
    open3d's, so this makes OpenCOOD's step *faster*: the reported ratio is conservative.
    Returns True when the substitution was made (the table says so).
    """
    try:
        import open3d  # noqa: F401
        return False
    except ImportError:
        import types
        sys.modules["open3d"] = types.ModuleType("open3d")
    import opencood.utils.pcd_utils as pcd_utils

    from coperception.data.formats.pcd import read_pcd
    pcd_utils.pcd_to_np = lambda path: read_pcd(path).astype(np.float32)
    return True


def opencood(root: Path, args, device) -> float | None:
    try:
        if _opencood_without_open3d():
            print("open3d missing here: OpenCOOD reads the PCD files with our reader (conservative ratio)")
        import opencood
        from opencood.data_utils.datasets import IntermediateFusionDataset
        from opencood.hypes_yaml.yaml_utils import load_yaml
        from opencood.tools import train_utils
    except ImportError as exc:  # the GPU machine has no OpenCOOD
        print(f"OpenCOOD not importable here ({exc}); timing ours only")
        return None
    params = load_yaml(str(Path(opencood.__file__).parent / HYPES))
    params["root_dir"] = params["validate_dir"] = str(root / "train")
    params["train_params"]["max_cav"] = args.agents
    params["train_params"]["batch_size"] = args.batch
    ds = IntermediateFusionDataset(params, visualize=False, train=True)
    torch.manual_seed(0)
    model = train_utils.create_model(params).to(device).train()
    criterion = train_utils.create_loss(params)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cuda", enabled=args.amp)

    def loader():
        return torch.utils.data.DataLoader(ds, batch_size=args.batch, shuffle=True, num_workers=args.workers,
                                           collate_fn=ds.collate_batch_train, persistent_workers=args.workers > 0)

    def step(batch):
        batch = train_utils.to_device(batch, device)
        amp_step(lambda: criterion(model(batch["ego"]), batch["ego"]["label_dict"]), opt, scaler, args.amp)

    return time_steps(step, loader, args.steps, args.warmup, device), compute_only(step, loader, device, max(3, args.steps)), loader_only(loader, max(3, args.steps))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--frames", type=int, default=12)
    p.add_argument("--agents", type=int, default=3)
    p.add_argument("--points", type=int, default=70000)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--amp", action="store_true", help="fp16 autocast + GradScaler for both (CUDA)")
    p.add_argument("--channels-last", action="store_true", help="ours: convolution weights in channels-last layout")
    p.add_argument("--skip-opencood", action="store_true", help="time ours only")
    p.add_argument("--voxelize-on", default="auto", choices=("auto", "loader", "device"),
                   help="ours: where clouds become pillars (auto: the GPU on CUDA, the loader on CPU)")
    p.add_argument("--agent-frame", default="ego", choices=AGENT_FRAMES,
                   help="ours: the frame each agent encodes in (ego = OpenCOOD's proj_first, no warp)")
    p.add_argument("--no-keep-host-memory", action="store_true",
                   help="CPU: run ours without train.keep_host_memory (glibc keeps freed memory for reuse)")
    p.add_argument("--opencood-kept", action="store_true",
                   help="CPU: time OpenCOOD a second time under the same host-memory setting as ours")
    args = p.parse_args()
    device = torch.device(args.device)
    args.amp = args.amp and device.type == "cuda"
    with tempfile.TemporaryDirectory() as tmp:
        root = write_synthetic(Path(tmp), args.frames, args.agents, args.points)
        theirs = None if args.skip_opencood else opencood(root, args, device)
        # What coperception's trainer does on the CPU (train.keep_host_memory, on by default);
        # one-way and process-wide, so OpenCOOD above ran with the C library's defaults.
        kept = device.type == "cpu" and not args.no_keep_host_memory and keep_freed_memory()
        mine = ours(root, args, device, args.voxelize_on)
        theirs_kept = opencood(root, args, device) if kept and args.opencood_kept and theirs is not None else None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"\nTraining step, batch {args.batch} x {args.agents} agents, {args.points} points each, "
          f"{args.workers} loader workers, {'AMP fp16' if args.amp else 'fp32'}, ours voxelising on "
          f"{args.voxelize_on}, agent frame {args.agent_frame}, {name}"
          + (", ours keeping freed host memory (train.keep_host_memory)" if kept else ""))
    print(f"{'implementation':<42}{'s/step':>10}{'it/s':>10}{'ratio':>8}{'compute-only s':>16}{'ratio':>8}"
          f"{'loader-only s':>15}")
    if theirs is not None:
        print(f"{'OpenCOOD point_pillar_intermediate':<42}{theirs[0]:>10.3f}{1 / theirs[0]:>10.2f}{1.0:>8.2f}"
              f"{theirs[1]:>16.4f}{1.0:>8.2f}{theirs[2]:>15.4f}")
    if theirs_kept is not None:
        print(f"{'OpenCOOD, with our host-memory setting':<42}{theirs_kept[0]:>10.3f}{1 / theirs_kept[0]:>10.2f}"
              f"{theirs[0] / theirs_kept[0]:>8.2f}{theirs_kept[1]:>16.4f}{theirs[1] / theirs_kept[1]:>8.2f}"
              f"{theirs_kept[2]:>15.4f}")
    r1 = f"{theirs[0] / mine[0]:>8.2f}" if theirs is not None else f"{'-':>8}"
    r2 = f"{theirs[1] / mine[1]:>8.2f}" if theirs is not None else f"{'-':>8}"
    print(f"{'coperception pointpillars + attention':<42}{mine[0]:>10.3f}{1 / mine[0]:>10.2f}{r1}{mine[1]:>16.4f}{r2}"
          f"{mine[2]:>15.4f}")

if __name__ == "__main__":
    main()
