"""Write :class:`~coperception.structures.records.Frame` objects in the OPV2V on-disk layout.

Output loads unchanged through OpenCOOD / HEAL (and :class:`OPV2VReader`)::

    <root>/<split>/<scenario>/<agent id>/<ts:06d>.pcd  <ts:06d>.yaml  <ts:06d>_camera{i}.png
    <hetero_root>/<split>/<scenario>/<agent id>/<ts:06d>_32.pcd  <ts:06d>_16.pcd   (extra LiDARs)

Each agent's YAML lists only the objects it sees (``frame.visibility[agent] > 0``; all objects when
the frame has no visibility), with OpenCDA's keys: ``lidar_pose``, ``true_ego_pos``,
``predicted_ego_pos`` (both the LiDAR pose: the records carry no separate vehicle pose),
``ego_speed`` (km/h), ``camera{i}`` {cords, extrinsic, intrinsic}, ``vehicles``, ``plan_trajectory``
(empty). Everything is converted to CARLA's left-handed frame (y and yaw negated).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from coperception.data.formats.opv2v_convert import (
    KMH_PER_MS,
    boxes_to_vehicles,
    camera_entry,
    parse_agent_id,
)
from coperception.data.formats.opv2v_read import order_agents
from coperception.data.formats.pcd import write_pcd
from coperception.data.formats.yamlio import dump_yaml
from coperception.structures.records import AgentKind, AgentObservation, Frame
from coperception.errors import FormatError
from coperception.geometry.pose import world_from_lidar_to_opv2v_pose

logger = logging.getLogger(__name__)


def _check_name(name: str, what: str) -> str:
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise FormatError(f"{what} {name!r} is not a valid folder name")
    return name


class OPV2VWriter:
    """Writes frames of one split; a context manager.

    pcd_format: ``"binary"`` (default, fast) or ``"ascii"`` (as OpenCDA wrote OPV2V); both are read
        by Open3D with the intensity in ``colors[:, 0]`` (quantised to 1/255).
    exact_intensity: also store a float ``intensity`` PCD field (lossless for our reader).
    hetero_root: root of the OPV2V-H mirror for ``extra_points`` clouds (default: ``root``).
    write_images: write ``Camera.image`` as PNG (geometry always goes to the YAML).
    write_json: also write ``<ts>.json`` with the YAML's content: HEAL and :class:`OPV2VReader`
        prefer it (JSON parses ~10x faster than YAML); OpenCOOD reads the YAML.
    """

    def __init__(self, root, split: str | None = "train", *, pcd_format: str = "binary",
                 exact_intensity: bool = False, hetero_root=None, write_images: bool = True,
                 write_json: bool = False) -> None:
        if pcd_format not in ("binary", "ascii"):
            raise ValueError(f"pcd_format must be 'binary' or 'ascii', got {pcd_format!r}")
        self.root = Path(root)
        self.split_dir = self.root / _check_name(split, "split") if split else self.root
        hetero = Path(hetero_root) if hetero_root is not None else self.root
        self.hetero_dir = hetero / split if split else hetero
        self.binary = pcd_format == "binary"
        self.exact_intensity = exact_intensity
        self.write_images = write_images
        self.write_json = write_json
        self._closed = False

    def __enter__(self) -> "OPV2VWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Finish writing (files are complete after each :meth:`write`; later writes are refused)."""
        self._closed = True

    def write(self, scenario: str, frame: Frame) -> None:
        """Write every agent of ``frame`` under ``<split>/<scenario>/``."""
        if self._closed:
            raise RuntimeError("OPV2VWriter is closed")
        _check_name(scenario, "scenario")
        if frame.timestamp < 0:
            raise FormatError(f"frame timestamp must be >= 0, got {frame.timestamp}")
        _check_frame(frame)
        order = order_agents(frame.observations, rsu_last=True)
        if order and order[0] != frame.ego_id:
            logger.warning("scenario %s frame %d: ego %s will not be the first agent on disk "
                           "(readers take %s as ego)", scenario, frame.timestamp, frame.ego_id, order[0])
        stem = f"{frame.timestamp:06d}"
        for agent_id, obs in frame.observations.items():
            agent_dir = self.split_dir / scenario / agent_id
            agent_dir.mkdir(parents=True, exist_ok=True)
            params = agent_yaml(frame, obs)
            dump_yaml(params, agent_dir / f"{stem}.yaml")
            if self.write_json:
                (agent_dir / f"{stem}.json").write_text(json.dumps(params), encoding="utf-8")
            write_pcd(agent_dir / f"{stem}.pcd", _to_carla(obs.points), binary=self.binary,
                      exact_intensity=self.exact_intensity)
            self._write_extra_lidars(scenario, agent_id, stem, obs)
            if self.write_images:
                _write_images(agent_dir, stem, obs)

    def _write_extra_lidars(self, scenario: str, agent_id: str, stem: str, obs: AgentObservation) -> None:
        if not obs.extra_points:
            return
        folder = self.hetero_dir / scenario / agent_id
        folder.mkdir(parents=True, exist_ok=True)
        for channels, points in obs.extra_points.items():
            write_pcd(folder / f"{stem}_{int(channels)}.pcd", _to_carla(points), binary=self.binary,
                      exact_intensity=self.exact_intensity)


def write_frame(root, scenario: str, frame: Frame, split: str | None = "train", **options) -> None:
    """Write one frame with a throw-away :class:`OPV2VWriter` (options as its constructor)."""
    with OPV2VWriter(root, split, **options) as writer:
        writer.write(scenario, frame)


def _check_frame(frame: Frame) -> None:
    n = len(frame.objects)
    if len(np.unique(frame.objects.ids)) != n:
        raise FormatError(f"frame {frame.scenario}/{frame.timestamp}: object ids are not unique")
    for agent_id, obs in frame.observations.items():
        parse_agent_id(agent_id, f"frame {frame.scenario}/{frame.timestamp}")
        negative = int(agent_id) < 0
        if negative != (obs.kind is AgentKind.INFRASTRUCTURE):
            raise FormatError(f"frame {frame.scenario}/{frame.timestamp}: agent {agent_id} is {obs.kind.value} "
                              "but OPV2V/V2XSet marks road-side units by negative ids (and only them)")
        if obs.agent_id != agent_id:
            raise FormatError(f"frame {frame.scenario}/{frame.timestamp}: observation keyed {agent_id} "
                              f"has agent_id {obs.agent_id}")
        if agent_id in frame.visibility and np.shape(frame.visibility[agent_id]) != (n,):
            raise FormatError(f"frame {frame.scenario}/{frame.timestamp}: visibility[{agent_id}] has shape "
                              f"{np.shape(frame.visibility[agent_id])}, expected ({n},)")


def agent_yaml(frame: Frame, obs: AgentObservation) -> dict:
    """The OPV2V YAML mapping of one agent of ``frame``."""
    pose = world_from_lidar_to_opv2v_pose(obs.world_from_lidar).tolist()
    if frame.visibility:
        seen = np.asarray(frame.visibility.get(obs.agent_id, np.zeros(len(frame.objects)))) > 0
    else:
        seen = np.ones(len(frame.objects), dtype=bool)
    objects = frame.objects.subset(seen)
    params: dict = {"lidar_pose": pose, "true_ego_pos": list(pose), "predicted_ego_pos": list(pose),
                    "ego_speed": float(obs.speed) * KMH_PER_MS}
    for i, cam in enumerate(obs.cameras):
        params[f"camera{i}"] = camera_entry(cam.lidar_from_camera, obs.world_from_lidar, cam.intrinsic)
    params["vehicles"] = boxes_to_vehicles(objects.boxes, objects.ids, objects.speeds, objects.classes)
    params["plan_trajectory"] = []
    return params


def _to_carla(points: np.ndarray) -> np.ndarray:
    """(P, >=3) right-handed LiDAR points -> (P, 4) float32 CARLA frame (y negated)."""
    pts = np.asarray(points)
    if pts.ndim != 2 or pts.shape[1] < 3:
        raise FormatError(f"points must be (P, >=3), got shape {pts.shape}")
    out = np.zeros((len(pts), 4), dtype=np.float32)
    out[:, : min(4, pts.shape[1])] = pts[:, :4]
    out[:, 1] *= -1.0
    return out


def _write_images(agent_dir: Path, stem: str, obs: AgentObservation) -> None:
    from PIL import Image

    for i, cam in enumerate(obs.cameras):
        if cam.image is None:
            continue
        image = np.asarray(cam.image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise FormatError(f"agent {obs.agent_id} camera {i}: image must be (H, W, 3) uint8, "
                              f"got {image.dtype} {image.shape}")
        Image.fromarray(image).save(agent_dir / f"{stem}_camera{i}.png")
