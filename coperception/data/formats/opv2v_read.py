"""Read the OPV2V on-disk layout (OPV2V / V2XSet / OPV2V-H) into :class:`~coperception.structures.records.Frame`.

Layout (OpenCOOD ``BaseDataset``, HEAL ``OPV2VBaseDataset``)::

    <root>/<split>/<scenario>/<agent id>/<ts>.pcd  <ts>.yaml  <ts>_camera{0..3}.png
    <hetero_root>/<split>/<scenario>/<agent id>/<ts>_32.pcd  <ts>_16.pcd        (OPV2V-H)

Indexing follows OpenCOOD exactly: scenario folders sorted; agent folders sorted *as strings*;
with ``rsu_last`` a negative (road-side) id that sorts first is moved to the end, as HEAL and
OpenCOOD's V2XSet loader do (the PyPI ``opencoodx`` 0.1.19 ``BaseDataset`` does not: there the
RSU ``-1`` becomes the ego — pass ``rsu_last=False`` to reproduce it); the first ``max_agents``
are kept; the first is the ego and its ``<ts>.yaml`` files (sorted, names containing
``additional`` skipped) give the scenario's frames. At read time agents whose LiDAR is more than
``comm_range`` metres (2D) from the ego's are dropped (OpenCOOD uses 70 m). Objects are the union
over the kept agents, de-duplicated by id keeping the first occurrence.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from coperception.data.formats.opv2v_convert import (
    AgentParams,
    agent_kind,
    lidar_from_camera_from_cords,
    parse_agent_id,
    parse_agent_params,
)
from coperception.data.formats.pcd import convert_pcd_to_binary, read_pcd
from coperception.data.formats.yamlio import load_json, load_yaml
from coperception.structures.records import AgentObservation, Camera, Frame, ObjectSet
from coperception.errors import FormatError
from coperception.geometry.pose import opv2v_pose_to_world_from_lidar

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Scenario:
    name: str
    path: Path
    agents: tuple[str, ...]
    stems: tuple[str, ...]


def _subdirs(path: Path) -> list[str]:
    try:
        return sorted(e.name for e in os.scandir(path) if e.is_dir())
    except OSError as exc:
        raise FormatError(f"{path}: cannot list folder ({exc.strerror})") from None


def _frame_stems(agent_dir: Path) -> list[str]:
    """Frame names of one agent folder in OpenCOOD order (sorted yaml names, no 'additional')."""
    names = sorted(n for n in os.listdir(agent_dir) if n.endswith(".yaml") and "additional" not in n)
    return [n[: -len(".yaml")] for n in names]


def order_agents(names: Iterable[str], *, rsu_last: bool = True, max_agents: int | None = None,
                 source="<agents>") -> list[str]:
    """OpenCOOD/HEAL agent order: sorted as strings, a leading negative id moved last, truncated."""
    ordered = sorted(names)
    for name in ordered:
        parse_agent_id(name, source)
    if rsu_last and ordered and int(ordered[0]) < 0:
        ordered = ordered[1:] + ordered[:1]
    return ordered if max_agents is None else ordered[:max_agents]


class OPV2VReader:
    """Random access to the frames of one OPV2V split.

    root: dataset root holding ``<split>/``; ``split=None`` means ``root`` is the split folder.
    max_agents: keep the first N agents per scenario (OpenCOOD ``max_cav``; None = all).
    comm_range: drop agents farther than this (metres, 2D between LiDAR poses) from the ego.
    rsu_last: move a leading negative-id road-side unit to the end (see module docstring).
    hetero_root: root of the OPV2V-H mirror holding ``<ts>_32.pcd`` / ``<ts>_16.pcd`` (default: root).
    load_cameras: decode ``<ts>_camera{i}.png`` into ``Camera.image`` (geometry is always read).
    lidar_channels: an int, or agent id -> int: read that agent's ``<ts>_<channels>.pcd`` from the
        hetero mirror instead of the original sweep (HEAL's ``lidar_channels_dict``).
    extra_lidars: beam counts whose hetero clouds go into ``AgentObservation.extra_points``.
    load_points: False skips every PCD (metadata-only reading; points are then (0, 4)).
    prefer_json: read ``<ts>.json`` instead of ``<ts>.yaml`` when it exists (HEAL's fast path).
    pcd_cache: folder for binary copies of the PCDs, made on first read (ASCII PCDs, as in the
        OPV2V release, parse ~100x slower than binary ones); refreshed when the source is newer.
    """

    def __init__(self, root, split: str | None = "train", *, max_agents: int | None = None,
                 comm_range: float | None = None, rsu_last: bool = True, hetero_root=None,
                 load_cameras: bool = False, lidar_channels: int | Mapping[str, int] | None = None,
                 extra_lidars: Iterable[int] = (), load_points: bool = True, prefer_json: bool = True,
                 pcd_cache=None) -> None:
        self.root = Path(root)
        self.split = split
        self.split_dir = self.root / split if split else self.root
        self.hetero_dir = (Path(hetero_root) / split if split else Path(hetero_root)) if hetero_root else self.split_dir
        if max_agents is not None and max_agents < 1:
            raise ValueError(f"max_agents must be >= 1, got {max_agents}")
        self.max_agents, self.comm_range, self.rsu_last = max_agents, comm_range, rsu_last
        self.load_cameras, self.load_points, self.prefer_json = load_cameras, load_points, prefer_json
        self.lidar_channels = lidar_channels
        self.extra_lidars = tuple(int(c) for c in extra_lidars)
        self.pcd_cache = Path(pcd_cache) if pcd_cache is not None else None
        if not self.split_dir.is_dir():
            raise FormatError(f"{self.split_dir}: OPV2V split folder does not exist")
        self._scenarios = [self._index_scenario(self.split_dir / name) for name in _subdirs(self.split_dir)]
        if not self._scenarios:
            raise FormatError(f"{self.split_dir}: no scenario folders in this OPV2V split")
        self._keys: list[tuple[str, int]] = []
        self._lookup: dict[tuple[str, int], tuple[int, str]] = {}
        for si, scen in enumerate(self._scenarios):
            for stem in scen.stems:
                key = (scen.name, int(stem))
                if key in self._lookup:
                    raise FormatError(f"{scen.path / scen.agents[0]}: two frame files name timestamp {key[1]}")
                self._keys.append(key)
                self._lookup[key] = (si, stem)

    # ---------------------------------------------------------------- indexing
    def _index_scenario(self, path: Path) -> _Scenario:
        names = _subdirs(path)
        if not names:
            raise FormatError(f"{path}: scenario folder has no agent folders")
        agents = order_agents(names, rsu_last=self.rsu_last, max_agents=self.max_agents, source=path)
        stems: list[str] = []
        for j, agent in enumerate(agents):
            agent_stems = _frame_stems(path / agent)
            if not agent_stems:
                raise FormatError(f"{path / agent}: agent folder has no frames (<timestamp>.yaml files)")
            if j == 0:
                stems = agent_stems
        for stem in stems:
            if not stem.isdigit():
                raise FormatError(f"{path / agents[0] / (stem + '.yaml')}: frame name is not a zero-padded integer")
        return _Scenario(path.name, path, tuple(agents), tuple(stems))

    def keys(self) -> list[tuple[str, int]]:
        """(scenario, timestamp) of every frame in OpenCOOD's global index order."""
        return list(self._keys)

    def agents(self, scenario: str) -> list[str]:
        """Agent ids of a scenario in reading order (ego first), after ``max_agents``."""
        for scen in self._scenarios:
            if scen.name == scenario:
                return list(scen.agents)
        raise KeyError(f"no scenario {scenario!r} in {self.split_dir}")

    def __len__(self) -> int:
        return len(self._keys)

    def __getitem__(self, index: int) -> Frame:
        return self.read(self._keys[index])

    def __iter__(self) -> Iterator[Frame]:
        for key in self._keys:
            yield self.read(key)

    # ---------------------------------------------------------------- reading
    def read(self, key: tuple[str, int]) -> Frame:
        """Load one frame: observations (ego first), world-frame objects, visibility."""
        try:
            si, stem = self._lookup[(key[0], int(key[1]))]
        except (KeyError, TypeError, ValueError, IndexError):
            raise KeyError(f"no frame {key!r} in {self.split_dir}") from None
        scen = self._scenarios[si]
        observations: dict[str, AgentObservation] = {}
        parsed: dict[str, AgentParams] = {}
        ego_xy = None
        for agent in scen.agents:
            params = parse_agent_params(self._load_params(scen.path / agent / f"{stem}.yaml"),
                                        scen.path / agent / f"{stem}.yaml")
            if ego_xy is None:
                ego_xy = params.lidar_pose[:2]
            elif self.comm_range is not None and np.hypot(*(params.lidar_pose[:2] - ego_xy)) > self.comm_range:
                logger.debug("%s/%s: agent %s is beyond comm_range %.1f m", scen.name, stem, agent, self.comm_range)
                continue
            parsed[agent] = params
            observations[agent] = self._observation(scen, agent, stem, params)
        objects, visibility = _merge_objects(parsed)
        return Frame(scen.name, int(stem), scen.agents[0], observations, objects, visibility)

    def _load_params(self, yaml_path: Path):
        if self.prefer_json:
            json_path = yaml_path.with_suffix(".json")
            if json_path.exists():
                return load_json(json_path)
        return load_yaml(yaml_path, typed=False)  # parse_agent_params converts the fields it uses

    def _observation(self, scen: _Scenario, agent: str, stem: str, params: AgentParams) -> AgentObservation:
        world_from_lidar = opv2v_pose_to_world_from_lidar(params.lidar_pose)
        channels = self._channels_for(agent)
        points, extra = np.zeros((0, 4), np.float32), {}
        if self.load_points:
            if channels is None:
                points = self._read_points(scen.path / agent / f"{stem}.pcd")
            else:
                points = self._read_points(self._hetero_path(scen, agent, f"{stem}_{channels}.pcd"))
            extra = {c: self._read_points(self._hetero_path(scen, agent, f"{stem}_{c}.pcd"))
                     for c in self.extra_lidars}
        cameras = tuple(self._camera(scen.path / agent, stem, cam.index, cam, params.lidar_pose)
                        for cam in params.cameras)
        return AgentObservation(agent_id=agent, kind=agent_kind(agent), world_from_lidar=world_from_lidar,
                                points=points, cameras=cameras, speed=params.ego_speed,
                                lidar_channels=channels, extra_points=extra)

    def _channels_for(self, agent: str) -> int | None:
        if self.lidar_channels is None:
            return None
        if isinstance(self.lidar_channels, Mapping):
            value = self.lidar_channels.get(agent)
            return None if value is None else int(value)
        return int(self.lidar_channels)

    def _hetero_path(self, scen: _Scenario, agent: str, name: str) -> Path:
        return self.hetero_dir / scen.name / agent / name

    def _read_points(self, path: Path) -> np.ndarray:
        """(P, 4) float32 in the right-handed LiDAR frame (CARLA y negated)."""
        points = read_pcd(self._cached(path) if self.pcd_cache is not None else path)
        points[:, 1] *= -1.0
        return points

    def _cached(self, path: Path) -> Path:
        try:
            rel = path.relative_to(self.split_dir)
            cached = self.pcd_cache / "main" / rel
        except ValueError:
            cached = self.pcd_cache / "hetero" / path.relative_to(self.hetero_dir)
        try:
            if cached.stat().st_mtime_ns >= path.stat().st_mtime_ns:
                return cached
        except FileNotFoundError:
            if not path.exists():
                raise FormatError(f"{path}: PCD file does not exist") from None
        cached.parent.mkdir(parents=True, exist_ok=True)
        convert_pcd_to_binary(path, cached)
        return cached

    def _camera(self, agent_dir: Path, stem: str, index: int, geometry, lidar_pose) -> Camera:
        image = None
        if self.load_cameras:
            image = _read_png(agent_dir / f"{stem}_camera{index}.png")
        return Camera(name=f"camera{index}", intrinsic=geometry.intrinsic,
                      lidar_from_camera=lidar_from_camera_from_cords(geometry.cords, lidar_pose), image=image)


def _read_png(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise FormatError(f"{path}: camera image does not exist") from None
    except (OSError, UnidentifiedImageError) as exc:
        raise FormatError(f"{path}: cannot decode camera image ({exc})") from None


def _merge_objects(parsed: Mapping[str, AgentParams]) -> tuple[ObjectSet, dict[str, np.ndarray]]:
    """Union of the agents' objects, first occurrence (agent order) kept; visibility 1 where listed."""
    if not parsed:
        return ObjectSet.empty(), {}
    ids = np.concatenate([p.object_ids for p in parsed.values()])
    _, first = np.unique(ids, return_index=True)
    keep = np.sort(first)
    boxes = np.concatenate([p.boxes for p in parsed.values()])[keep]
    speeds = np.concatenate([p.speeds for p in parsed.values()])[keep]
    classes = np.concatenate([p.classes for p in parsed.values()])[keep]
    objects = ObjectSet(boxes, ids[keep], classes, speeds)
    visibility = {agent: np.isin(objects.ids, p.object_ids).astype(np.int32) for agent, p in parsed.items()}
    return objects, visibility
