"""Dataset generation: simulate N seeded scenarios of M frames and write them with a format writer.

Scenarios are assigned to train / validate / test by ratio (a seeded shuffle, so the assignment
does not depend on the number of workers). With ``workers > 1`` scenarios are simulated in
separate processes that stream their frames through bounded queues; the parent writes them in
a fixed order, one split after another, because some formats (DAIR-V2X) keep split-wide index
files that one writer at a time must own. The summary counts agents, frames, objects and how
many objects near the ego only a collaborator sees: the share collaboration can win back.
"""

from __future__ import annotations

import collections
import logging
import multiprocessing as mp
import os
import queue as queue_module
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from coperception.errors import ConfigError
from coperception.sim.config import SimConfig
from coperception.structures.records import Frame

log = logging.getLogger(__name__)
SPLITS = ("train", "validate", "test")
_QUEUE_FRAMES = 8


@dataclass
class Summary:
    """What a generation run wrote. ``agents``: summed over scenarios; ``scans``: agent-scans
    (one LiDAR sweep of one agent). ``collaborator_only`` counts (object, frame) pairs within
    ``summary_range`` m of the ego LiDAR (the ego's own vehicle excluded) that the ego has no
    point on but some collaborator has; ``in_range`` is the denominator."""

    scenarios: int = 0
    frames: int = 0
    scans: int = 0
    agents: int = 0
    objects: int = 0
    in_range: int = 0
    ego_visible: int = 0
    collaborator_only: int = 0
    summary_range: float = 50.0
    seconds: float = 0.0
    splits: dict[str, int] = field(default_factory=dict)

    @property
    def collaborator_only_fraction(self) -> float:
        return self.collaborator_only / max(self.in_range, 1)

    @property
    def ego_visible_fraction(self) -> float:
        return self.ego_visible / max(self.in_range, 1)

    def rows(self) -> list[tuple[str, str]]:
        """(label, value) pairs for a printed table."""
        per_frame = self.in_range / max(self.frames, 1)
        return [("scenarios", f"{self.scenarios} ({', '.join(f'{k} {v}' for k, v in self.splits.items())})"),
                ("frames", str(self.frames)),
                ("agents", f"{self.agents} ({self.agents / max(self.scenarios, 1):.1f} per scenario)"),
                ("objects", f"{self.objects} distinct"),
                (f"objects within {self.summary_range:g} m of ego", f"{per_frame:.1f} per frame"),
                ("  seen by the ego", f"{100 * self.ego_visible_fraction:.1f}%"),
                ("  seen only by a collaborator", f"{100 * self.collaborator_only_fraction:.1f}%"),
                ("agent-scans per second", f"{self.scans / max(self.seconds, 1e-9):.1f}")]


def frame_visibility(frame: Frame, radius: float) -> tuple[int, int, int]:
    """(objects within ``radius`` m of the ego excluding itself, seen by the ego, seen only by
    collaborators) for one frame."""
    ego = frame.ego.world_from_lidar[:2, 3]
    near = np.linalg.norm(frame.objects.boxes[:, :2] - ego, axis=1) <= radius
    if frame.ego_id.lstrip("-").isdigit():
        near &= frame.objects.ids != int(frame.ego_id)
    ego_sees = frame.visibility[frame.ego_id][near] > 0
    others = np.zeros(int(near.sum()), bool)
    for agent_id, counts in frame.visibility.items():
        if agent_id != frame.ego_id:
            others |= counts[near] > 0
    return int(near.sum()), int(ego_sees.sum()), int((~ego_sees & others).sum())


def assign_splits(n: int, ratios: tuple[float, float, float], seed: int) -> list[str]:
    """Split name of each of ``n`` scenarios: counts by largest remainder, order seeded."""
    r = np.asarray(ratios, np.float64)
    if r.shape != (3,) or np.any(r < 0) or not np.isfinite(r).all() or r.sum() <= 0:
        raise ConfigError(f"split ratios: need three non-negative numbers with a positive sum, got {list(ratios)}")
    r = r / r.sum()
    counts = np.floor(r * n).astype(int)
    for i in np.argsort(-(r * n - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    names = np.repeat(SPLITS, counts)
    return list(np.random.default_rng([seed, 7]).permutation(names))


def scenario_seed(seed: int, index: int) -> int:
    """Seed of scenario ``index`` of a run seeded ``seed`` (independent of worker count)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def _check(config: SimConfig, fmt: str, scenarios: int, frames: int, workers: int) -> type:
    from coperception.data.formats import WRITERS  # imported here: formats pull in heavy deps
    if fmt not in WRITERS:
        raise ConfigError(f"format: unknown {fmt!r}; known: {sorted(WRITERS)}")
    if scenarios < 1 or frames < 1 or workers < 1:
        raise ConfigError(f"scenarios, frames and workers must be >= 1, got {scenarios}, {frames}, {workers}")
    config.validate()
    if fmt == "dair-v2x" and config.agents.rsus < 1:
        raise ConfigError("agents.rsus: the dair-v2x format needs an infrastructure agent; set rsus >= 1 "
                          f"(preset {config.preset!r} has {config.agents.rsus})")
    return WRITERS[fmt]


@dataclass(frozen=True)
class FrameInfo:
    """What the summary and a progress bar need of one written frame (small: crosses processes)."""

    scenario_index: int
    scenario: str
    timestamp: int
    agents: int
    object_ids: np.ndarray
    in_range: int
    ego_visible: int
    collaborator_only: int

    @staticmethod
    def of(index: int, frame: Frame, radius: float) -> "FrameInfo":
        n, ego, only = frame_visibility(frame, radius)
        return FrameInfo(index, frame.scenario, frame.timestamp, len(frame.observations),
                         frame.objects.ids.copy(), n, ego, only)


#: Formats whose writers may write different scenarios from several processes at once (OPV2V
#: keeps everything per scenario folder; DAIR-V2X rewrites split-wide indices on close).
WRITE_IN_WORKERS = frozenset({"opv2v"})


def generate(out: str | Path, config: SimConfig, scenarios: int, frames: int, fmt: str = "opv2v", seed: int = 0,
             split_ratios: tuple[float, float, float] = (0.8, 0.1, 0.1), workers: int = 1,
             summary_range: float = 50.0, on_frame: Callable[[FrameInfo], None] | None = None,
             writer_options: dict | None = None) -> Summary:
    """Simulate and write a dataset under ``out``; every check runs before any work starts."""
    from coperception.data.formats import open_writer
    _check(config, fmt, scenarios, frames, workers)
    split_of = assign_splits(scenarios, split_ratios, seed)
    tasks = [(i, f"{config.preset}_{i:04d}", scenario_seed(seed, i), split_of[i]) for i in range(scenarios)]
    tasks.sort(key=lambda task: (SPLITS.index(task[3]), task[0]))
    summary = Summary(scenarios=scenarios, summary_range=summary_range,
                      splits={s: split_of.count(s) for s in SPLITS if s in split_of})
    job = _Job(config, frames, fmt, str(out), writer_options or {}, summary_range,
               direct=workers > 1 and fmt in WRITE_IN_WORKERS)
    start = time.perf_counter()
    writer, writer_split, started, seen = None, None, set(), set()
    background = BackgroundCalls()
    try:
        for index, item in _run(job, tasks, workers):
            if isinstance(item, Frame):  # written here, one split after another
                if split_of[index] != writer_split:
                    background.drain()
                    if writer is not None:
                        writer.close()
                    writer_split = split_of[index]
                    writer = open_writer(fmt, out, writer_split, **job.writer_options)
                background.submit(writer.write, item.scenario, item)
                item = FrameInfo.of(index, item, summary_range)
            if index not in started:
                started.add(index)
                summary.agents += item.agents
            seen.update((index, int(i)) for i in item.object_ids)
            summary.frames += 1
            summary.scans += item.agents
            summary.in_range += item.in_range
            summary.ego_visible += item.ego_visible
            summary.collaborator_only += item.collaborator_only
            if on_frame is not None:
                on_frame(item)
    finally:
        background.close()
        if writer is not None:
            writer.close()
    summary.objects = len(seen)
    summary.seconds = time.perf_counter() - start
    log.info("wrote %d frames of %d scenarios to %s in %.1f s", summary.frames, scenarios, out, summary.seconds)
    return summary


@dataclass(frozen=True)
class _Job:
    config: SimConfig
    frames: int
    fmt: str
    out: str
    writer_options: dict
    radius: float
    direct: bool  # workers write their own scenarios and send back FrameInfo only


def _run(job: _Job, tasks: list, workers: int):
    """Yield (scenario index, Frame or FrameInfo) in task order, simulating in ``workers`` processes."""
    if workers == 1 or len(tasks) == 1:
        from coperception.sim.simulation import Simulation
        for index, name, seed, _ in tasks:
            yield from ((index, f) for f in Simulation(job.config, seed, name).frames(job.frames))
        return
    ctx = mp.get_context("spawn")  # not fork: Embree/TBB thread pools do not survive a fork
    workers = min(workers, len(tasks))
    queues = [ctx.Queue(maxsize=0 if job.direct else _QUEUE_FRAMES) for _ in range(workers)]
    procs = [ctx.Process(target=_worker, args=(job, tasks[w::workers], queues[w]), daemon=True)
             for w in range(workers)]
    with _single_threaded_blas():
        for p in procs:
            p.start()
    try:
        for k in range(len(tasks)):
            q, proc = queues[k % workers], procs[k % workers]
            while True:
                got_index, payload = _get(q, proc)
                if isinstance(payload, str):
                    raise RuntimeError(f"scenario {got_index} failed in a worker:\n{payload}")
                if payload is None:
                    break
                yield got_index, payload
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
            p.join(timeout=5)


class _single_threaded_blas:
    """While starting worker processes: one BLAS/OpenMP thread each (they inherit the variables).
    Several processes share the cores, and an idle OpenBLAS pool busy-waits after each call,
    taking a core from the other process's ray casting (2 workers ran at half speed)."""

    _NAMES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")

    def __enter__(self):
        self._saved = {k: os.environ.get(k) for k in self._NAMES}
        for k in self._NAMES:
            os.environ.setdefault(k, "1")

    def __exit__(self, *exc):
        for k, v in self._saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class BackgroundCalls:
    """Runs calls in submission order on one thread, at most ``depth`` waiting, so that writing
    frame t (file IO and numpy copies, which release the GIL) overlaps simulating frame t + 1.
    An exception of a call is raised by a later :meth:`submit`, :meth:`drain` or :meth:`close`."""

    def __init__(self, depth: int = 2):
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sim-writer")
        self._pending: collections.deque = collections.deque()
        self._depth = depth

    def submit(self, fn, *args) -> None:
        while len(self._pending) >= self._depth:
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(fn, *args))

    def drain(self) -> None:
        """Wait for every submitted call."""
        while self._pending:
            self._pending.popleft().result()

    def close(self) -> None:
        try:
            self.drain()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)


def _get(q, proc):
    """Next item of a worker's queue; raises if the worker died without reporting."""
    while True:
        try:
            return q.get(timeout=1.0)
        except queue_module.Empty:
            if not proc.is_alive():
                raise RuntimeError(f"generator worker exited with code {proc.exitcode} before finishing") from None


def _worker(job: _Job, tasks: list, queue) -> None:
    from coperception.data.formats import open_writer
    from coperception.sim.simulation import Simulation
    for index, name, seed, split in tasks:
        try:
            sim = Simulation(job.config, seed, name, threads=1)  # one Embree thread per process
            if job.direct:
                with open_writer(job.fmt, job.out, split, **job.writer_options) as writer:
                    background = BackgroundCalls()
                    try:
                        for frame in sim.frames(job.frames):
                            background.submit(writer.write, frame.scenario, frame)
                            queue.put((index, FrameInfo.of(index, frame, job.radius)))
                    finally:
                        background.close()
            else:
                for frame in sim.frames(job.frames):
                    queue.put((index, frame))
            queue.put((index, None))
        except Exception:  # reported to the parent, which raises
            queue.put((index, traceback.format_exc()))
            return
