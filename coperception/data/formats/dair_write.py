"""Write :class:`~coperception.structures.records.Frame` records as a DAIR-V2X-C cooperative dataset.

Layout and fields follow DAIR-V2X (Yu et al., CVPR 2022, ``data/README.md``) as read by the
DAIR-V2X tools and by HEAL/CoAlign (``dairv2x_basedataset.py``); see :mod:`.dair_calib` for the pose
chain and :mod:`.dair_labels` for the label files. Extensions that DAIR readers ignore:
``track_id`` in labels (the library object id), ``frame_id`` / ``scenario`` in the side
``data_info.json`` entries and ``calib_virtuallidar_to_camera_path`` on the infrastructure side.
"""

from __future__ import annotations

import logging
import os
import re

import numpy as np

from coperception.data.formats import dair_calib as calib
from coperception.data.formats import dair_labels as labels
from coperception.data.formats.dair_pcd import write_dair_pcd
from coperception.structures.records import AgentKind, AgentObservation, Camera, Frame
from coperception.errors import FormatError
from coperception.geometry import wrap_angle, yaw_of
from coperception.geometry.boxes import transform_boxes

log = logging.getLogger(__name__)

VEH, INF, COOP = "vehicle-side", "infrastructure-side", "cooperative"
#: DAIR stores intensity 0..255 and HEAL divides by 256; the library keeps 0..1.
INTENSITY_SCALE = 256.0
_FRONT_NAMES = ("front", "camera0", "cam_front")


def split_path(root: str, split: str) -> str:
    """``<root>/<split>.json`` (HEAL/CoAlign split list of vehicle frame ids)."""
    if not re.fullmatch(r"[A-Za-z0-9_-]+", split):
        raise ValueError(f"split must be a plain name such as 'train' or 'val', got {split!r}")
    return os.path.join(root, f"{split}.json")


def _load_list(path: str) -> list:
    if not os.path.exists(path):
        return []
    data = calib.read_json(path)
    if not isinstance(data, list):
        raise FormatError(f"{path}: expected a JSON list, got {type(data).__name__}")
    return data


def _frame_ids(entries: list, key: str) -> list[int]:
    """Integer frame ids of existing index entries (basename of ``entries[i][key]``)."""
    out = []
    for e in entries:
        stem = os.path.splitext(os.path.basename(str(e.get(key, "")) if isinstance(e, dict) else ""))[0]
        if stem.isdigit():
            out.append(int(stem))
    return out


def _pick_agents(frame: Frame) -> tuple[AgentObservation, AgentObservation]:
    """The vehicle and infrastructure agents to write (ego first; the nearest of the other kind)."""
    ego = frame.ego
    want = AgentKind.INFRASTRUCTURE if ego.kind is AgentKind.VEHICLE else AgentKind.VEHICLE
    others = [o for o in frame.observations.values() if o.kind is want and o is not ego]
    if not others:
        raise FormatError(f"frame {frame.scenario}/{frame.timestamp}: DAIR-V2X-C needs a vehicle and an "
                          f"infrastructure agent, the ego {ego.agent_id!r} ({ego.kind.value}) "
                          f"has no {want.value} partner")
    pos = np.array([o.world_from_lidar[:2, 3] for o in others])
    partner = others[int(np.argmin(np.linalg.norm(pos - ego.world_from_lidar[:2, 3], axis=1)))]
    dropped = [a for a in frame.observations if a not in (ego.agent_id, partner.agent_id)]
    if dropped:
        log.info("frame %s/%s: DAIR-V2X-C keeps agents %s and %s, drops %s",
                 frame.scenario, frame.timestamp, ego.agent_id, partner.agent_id, dropped)
    return (ego, partner) if ego.kind is AgentKind.VEHICLE else (partner, ego)


def _world_to_lidar_boxes(world_from_lidar: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """World boxes -> LiDAR-frame boxes, the exact inverse of ``transform_boxes(world_from_lidar, .)``.

    Centres go through the inverse pose; yaw drops ``yaw_of(world_from_lidar)`` (for a tilted LiDAR
    ``yaw_of(inv(T)) != -yaw_of(T)``, so transforming by the inverse would not round-trip).
    """
    out = transform_boxes(np.linalg.inv(world_from_lidar), boxes)
    out[:, 6] = wrap_angle(np.asarray(boxes, dtype=np.float64)[:, 6] - yaw_of(world_from_lidar))
    return out


def _front_camera(obs: AgentObservation) -> Camera | None:
    if not obs.cameras:
        return None
    for cam in obs.cameras:
        if cam.name.lower() in _FRONT_NAMES:
            return cam
    return obs.cameras[0]


def _visible(frame: Frame, agent_id: str) -> np.ndarray:
    """(N,) bool: objects the agent sees (all of them when the frame has no visibility data)."""
    n = len(frame.objects)
    vis = frame.visibility.get(agent_id) if frame.visibility else None
    if vis is None:
        return np.ones(n, dtype=bool)
    vis = np.asarray(vis).reshape(-1)
    if vis.shape != (n,):
        raise FormatError(f"frame {frame.scenario}/{frame.timestamp}: visibility[{agent_id!r}] has "
                          f"{vis.size} entries for {n} objects")
    return vis > 0


class DairV2XWriter:
    """Append frames to a DAIR-V2X-C tree under ``root`` and list them in ``<split>.json``.

    Options:
        lidar_to_novatel: (4, 4) vehicle LiDAR -> NovAtel (GNSS/INS) mounting, default identity;
            ``novatel_to_world`` is written so that the chain composes to the vehicle pose.
        system_error_offset: ``(delta_x, delta_y)`` metres subtracted from the stored RSU
            ``virtuallidar_to_world`` translation and recorded in the cooperative index, so that a
            reader adding it back (DAIR, HEAL, ours) recovers the true pose; ``None`` writes ``""``.
        intersection_loc: value of that index field. period_us / time_origin_us: frame
            ``timestamp`` -> ``pointcloud_timestamp`` (microseconds, as a string).
        pcd_data: ``"binary"`` or ``"ascii"``. jpeg_quality: 1..100.
        heal_backups: also write ``cooperative/label_world_backup`` and
            ``vehicle-side/label/lidar_backup`` (same content), which HEAL/CoAlign open.

    Frame ids are six-digit strings from one counter shared by both sides, continuing after the
    ids already in ``root``; each scenario gets one ``batch_id`` (reused if a scenario of that name
    was written before). Indices are (re)written by :meth:`close`, so writers on one root (any
    split) must run one after another, not at the same time.
    """

    def __init__(self, root: str, split: str = "train", *, lidar_to_novatel=None,
                 system_error_offset: tuple[float, float] | None = (0.0, 0.0),
                 intersection_loc: str = "coperception",
                 period_us: int = 100_000, time_origin_us: int = 0, pcd_data: str = "binary",
                 jpeg_quality: int = 95, heal_backups: bool = True) -> None:
        self.root = str(root)
        self.split_file = split_path(self.root, split)
        self.lidar_to_novatel = np.eye(4) if lidar_to_novatel is None else np.asarray(lidar_to_novatel, np.float64)
        if self.lidar_to_novatel.shape != (4, 4):
            raise ValueError(f"lidar_to_novatel must be 4x4, got shape {self.lidar_to_novatel.shape}")
        self.offset = None if system_error_offset is None else tuple(float(v) for v in system_error_offset)
        self.intersection_loc = intersection_loc
        self.period_us, self.time_origin_us = int(period_us), int(time_origin_us)
        if pcd_data not in ("binary", "ascii") or not 1 <= int(jpeg_quality) <= 100:
            raise ValueError(f"pcd_data must be 'binary' or 'ascii' and jpeg_quality 1..100, "
                             f"got {pcd_data!r}, {jpeg_quality!r}")
        self.pcd_data, self.jpeg_quality, self.heal_backups = pcd_data, int(jpeg_quality), heal_backups
        self._paths = {name: os.path.join(self.root, name, "data_info.json") for name in (VEH, INF, COOP)}
        self._index = {name: _load_list(path) for name, path in self._paths.items()}
        self._split = _load_list(self.split_file)
        used = (_frame_ids(self._index[VEH], "pointcloud_path") + _frame_ids(self._index[INF], "pointcloud_path")
                + _frame_ids(self._index[COOP], "vehicle_image_path"))
        self._next_id = max(used, default=-1) + 1
        self._batches = {e["scenario"]: str(e["batch_id"]) for e in self._index[VEH]
                         if isinstance(e, dict) and "scenario" in e and "batch_id" in e}
        batch_nums = [int(e["batch_id"]) for e in self._index[VEH]
                      if isinstance(e, dict) and str(e.get("batch_id", "")).isdigit()]
        self._next_batch = max(batch_nums, default=-1) + 1
        self._closed = False

    # -- public API -------------------------------------------------------------------------
    def write(self, scenario: str, frame: Frame) -> None:
        """Write one frame's files; its index entries are added in memory (saved by :meth:`close`)."""
        if self._closed:
            raise RuntimeError("DairV2XWriter is closed")
        veh, inf = _pick_agents(frame)
        vid, iid = f"{self._next_id:06d}", f"{self._next_id + 1:06d}"
        batch = self._batch_of(scenario)
        stamp = str(self.time_origin_us + int(frame.timestamp) * self.period_us)
        veh_entry = self._write_vehicle(vid, veh, frame, batch, stamp, scenario)
        inf_entry = self._write_infra(iid, inf, frame, batch, stamp, scenario)
        coop_entry = self._write_cooperative(vid, iid, frame)
        self._index[VEH].append(veh_entry)
        self._index[INF].append(inf_entry)
        self._index[COOP].append(coop_entry)
        self._split.append(vid)
        self._next_id += 2

    def close(self) -> None:
        """Write the three ``data_info.json`` files and the split list (idempotent)."""
        if self._closed:
            return
        for side in (VEH, INF):
            _fill_batch_ranges(self._index[side])
        for name, path in self._paths.items():
            calib.write_json(path, self._index[name])
        calib.write_json(self.split_file, list(dict.fromkeys(self._split)))
        self._closed = True

    def __enter__(self) -> "DairV2XWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- one side each ----------------------------------------------------------------------
    def _batch_of(self, scenario: str) -> str:
        if scenario not in self._batches:
            self._batches[scenario] = str(self._next_batch)
            self._next_batch += 1
        return self._batches[scenario]

    def _side_common(self, side: str, fid: str, obs: AgentObservation, batch: str, stamp: str,
                     scenario: str) -> dict:
        pts = np.asarray(obs.points, dtype=np.float32)
        if pts.ndim != 2 or pts.shape[1] < 4:
            raise FormatError(f"agent {obs.agent_id!r}: points must be (P, 4) x, y, z, intensity, got {pts.shape}")
        pts = pts[:, :4].copy()
        pts[:, 3] *= INTENSITY_SCALE
        write_dair_pcd(os.path.join(self.root, side, "velodyne", f"{fid}.pcd"), pts, data=self.pcd_data)
        return {"frame_id": fid, "image_path": f"image/{fid}.jpg", "image_timestamp": stamp,
                "pointcloud_path": f"velodyne/{fid}.pcd", "pointcloud_timestamp": stamp,
                "label_camera_path": f"label/camera/{fid}.json",
                "calib_camera_intrinsic_path": f"calib/camera_intrinsic/{fid}.json",
                "batch_id": batch, "intersection_loc": self.intersection_loc, "scenario": scenario}

    def _write_camera(self, side: str, fid: str, cam: Camera | None, extrinsic_dir: str) -> None:
        if cam is None:
            return
        base = os.path.join(self.root, side)
        calib.write_json(os.path.join(base, "calib", "camera_intrinsic", f"{fid}.json"),
                         calib.intrinsic_json(cam.intrinsic))
        lidar_to_camera = np.linalg.inv(np.asarray(cam.lidar_from_camera, dtype=np.float64))
        calib.write_json(os.path.join(base, "calib", extrinsic_dir, f"{fid}.json"), calib.rigid_json(lidar_to_camera))
        if cam.image is not None:
            from PIL import Image

            img_path = os.path.join(base, "image", f"{fid}.jpg")
            os.makedirs(os.path.dirname(img_path), exist_ok=True)
            Image.fromarray(np.asarray(cam.image, dtype=np.uint8)).save(
                img_path, format="JPEG", quality=self.jpeg_quality, subsampling=0)

    def _write_single_labels(self, side: str, fid: str, obs: AgentObservation, frame: Frame,
                             dirs: tuple[str, ...]) -> None:
        seen = _visible(frame, obs.agent_id)
        objs = frame.objects.subset(seen)
        boxes = _world_to_lidar_boxes(obs.world_from_lidar, objs.boxes)
        content = labels.single_json(boxes, objs.classes, objs.ids)
        for d in dirs:
            calib.write_json(os.path.join(self.root, side, "label", d, f"{fid}.json"), content)

    def _write_vehicle(self, fid, obs, frame, batch, stamp, scenario) -> dict:
        entry = self._side_common(VEH, fid, obs, batch, stamp, scenario)
        base = os.path.join(self.root, VEH, "calib")
        n2w = calib.split_vehicle_pose(obs.world_from_lidar, self.lidar_to_novatel)
        calib.write_json(os.path.join(base, "lidar_to_novatel", f"{fid}.json"),
                         {"transform": calib.rigid_json(self.lidar_to_novatel)})
        calib.write_json(os.path.join(base, "novatel_to_world", f"{fid}.json"), calib.rigid_json(n2w))
        self._write_camera(VEH, fid, _front_camera(obs), "lidar_to_camera")
        dirs = ("lidar", "camera") + (("lidar_backup",) if self.heal_backups else ())
        self._write_single_labels(VEH, fid, obs, frame, dirs)
        entry.update({"label_lidar_path": f"label/lidar/{fid}.json",
                      "calib_lidar_to_camera_path": f"calib/lidar_to_camera/{fid}.json",
                      "calib_lidar_to_novatel_path": f"calib/lidar_to_novatel/{fid}.json",
                      "calib_novatel_to_world_path": f"calib/novatel_to_world/{fid}.json"})
        return entry

    def _write_infra(self, fid, obs, frame, batch, stamp, scenario) -> dict:
        entry = self._side_common(INF, fid, obs, batch, stamp, scenario)
        delta = self.offset or (0.0, 0.0)
        v2w = calib.rigid_json(calib.split_infra_pose(obs.world_from_lidar, delta))
        v2w["relative_error"] = calib.offset_json(delta) if self.offset is not None else {"delta_x": "", "delta_y": ""}
        calib.write_json(os.path.join(self.root, INF, "calib", "virtuallidar_to_world", f"{fid}.json"), v2w)
        self._write_camera(INF, fid, _front_camera(obs), "virtuallidar_to_camera")
        self._write_single_labels(INF, fid, obs, frame, ("virtuallidar", "camera"))
        entry.update({"label_lidar_path": f"label/virtuallidar/{fid}.json",
                      "calib_virtuallidar_to_world_path": f"calib/virtuallidar_to_world/{fid}.json",
                      "calib_virtuallidar_to_camera_path": f"calib/virtuallidar_to_camera/{fid}.json"})
        return entry

    def _write_cooperative(self, vid: str, iid: str, frame: Frame) -> dict:
        offset = calib.offset_json(self.offset) if self.offset is not None else ""
        objs = frame.objects
        content = labels.cooperative_json(objs.boxes, objs.classes, objs.ids, offset)
        dirs = ("label_world",) + (("label_world_backup",) if self.heal_backups else ())
        for d in dirs:
            calib.write_json(os.path.join(self.root, COOP, d, f"{vid}.json"), content)
        return {"infrastructure_image_path": f"{INF}/image/{iid}.jpg",
                "infrastructure_pointcloud_path": f"{INF}/velodyne/{iid}.pcd",
                "vehicle_image_path": f"{VEH}/image/{vid}.jpg",
                "vehicle_pointcloud_path": f"{VEH}/velodyne/{vid}.pcd",
                "cooperative_label_path": f"{COOP}/label_world/{vid}.json",
                "system_error_offset": offset}


def _fill_batch_ranges(entries: list) -> None:
    """Set ``batch_start_id`` / ``batch_end_id`` of every entry from the ids in its batch."""
    ranges: dict[str, tuple[str, str]] = {}
    usable = [e for e in entries if isinstance(e, dict) and "pointcloud_path" in e and "batch_id" in e]
    for e in usable:
        fid = os.path.splitext(os.path.basename(str(e["pointcloud_path"])))[0]
        lo, hi = ranges.get(e["batch_id"], (fid, fid))
        ranges[e["batch_id"]] = (min(lo, fid), max(hi, fid))
    for e in usable:
        e["batch_start_id"], e["batch_end_id"] = ranges[e["batch_id"]]


def write_frame(root: str, scenario: str, frame: Frame, split: str = "train", **options) -> None:
    """Append one frame to the dataset at ``root`` (opens, writes and closes a :class:`DairV2XWriter`)."""
    with DairV2XWriter(root, split, **options) as writer:
        writer.write(scenario, frame)
