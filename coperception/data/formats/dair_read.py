"""Read a DAIR-V2X-C cooperative dataset into :class:`~coperception.structures.records.Frame` records.

DAIR-V2X (Yu et al., "DAIR-V2X: A Large-Scale Dataset for Vehicle-Infrastructure Cooperative 3D
Object Detection", CVPR 2022). Frames are listed by a split file (HEAL/CoAlign ``train.json`` /
``val.json``: vehicle frame ids) and resolved through ``cooperative/data_info.json``; each side's
``data_info.json`` entry (matched by point-cloud path) names its calibration and label files.

Agent ids follow the OPV2V/V2XSet convention of negative ids for road-side units: the vehicle is
``"0"`` (always the ego) and the infrastructure unit ``"-1"``. ``Frame.scenario`` is the DAIR
``batch_id`` (one continuous segment) and ``Frame.timestamp`` the vehicle frame id as an int.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import numpy as np

from coperception.data.formats import dair_calib as calib
from coperception.data.formats import dair_labels as labels
from coperception.data.formats.dair_pcd import read_dair_pcd
from coperception.data.formats.dair_write import COOP, INF, INTENSITY_SCALE, VEH, split_path
from coperception.structures.records import AgentKind, AgentObservation, Camera, Frame, ObjectSet
from coperception.errors import FormatError
from coperception.geometry.boxes import transform_boxes

log = logging.getLogger(__name__)

VEHICLE_ID, INFRA_ID = "0", "-1"
_COOP_KEYS = ("vehicle_image_path", "vehicle_pointcloud_path", "infrastructure_image_path",
              "infrastructure_pointcloud_path", "cooperative_label_path", "system_error_offset")
_SIDE_KEYS = {VEH: ("pointcloud_path", "batch_id", "calib_lidar_to_novatel_path", "calib_novatel_to_world_path"),
              INF: ("pointcloud_path", "calib_virtuallidar_to_world_path")}
_CAMERA_KEYS = {VEH: ("image_path", "calib_camera_intrinsic_path", "calib_lidar_to_camera_path"),
                INF: ("image_path", "calib_camera_intrinsic_path")}


def _stem(path) -> str:
    return os.path.splitext(os.path.basename(str(path)))[0]


def _load_index(path: str, required: tuple[str, ...]) -> list[dict]:
    """A ``data_info.json``: a list of objects, each holding every key of ``required``."""
    data = calib.read_json(path)
    if not isinstance(data, list):
        raise FormatError(f"{path}: expected a JSON list of frame entries, got {type(data).__name__}")
    for i, entry in enumerate(data):
        if not isinstance(entry, dict):
            raise FormatError(f"{path}: entry {i} must be a JSON object, got {type(entry).__name__}")
        for key in required:
            if key not in entry:
                raise FormatError(f"{path}: entry {i} is missing key '{key}'")
    return data


class DairV2XReader:
    """Frames of one split of a DAIR-V2X-C tree (``cooperative-vehicle-infrastructure``).

    Args:
        root: dataset root holding ``cooperative/``, ``vehicle-side/``, ``infrastructure-side/``.
        split: ``"train"`` / ``"val"`` (reads ``<root>/<split>.json``), or None for every frame
            of ``cooperative/data_info.json``.
        label: ``"cooperative"``: objects from ``cooperative/label_world`` (world boxes fitted to
            ``world_8_points``); ``"single"``: the union of the vehicle's ``label/lidar`` and the
            RSU's ``label/virtuallidar`` boxes mapped to the world (RSU boxes that share a
            ``track_id`` with, or overlap in BEV, a vehicle box are dropped as duplicates).
        load_cameras: also load each side's image, ``camera_intrinsic`` and ``*_to_camera`` (the
            same option name as :class:`~coperception.data.formats.opv2v_read.OPV2VReader`).
        load_points: False skips the PCDs (metadata-only reading; points are then (0, 4)).
        split_file: a split list elsewhere (HEAL keeps ``train.json`` outside the tree).

    ``visibility`` of a read frame marks (1) the objects each side's single label lists, when
    those can be matched to the frame's objects (``track_id`` written by our writer, or the
    ``"single"`` label mode); DAIR has no point counts.
    """

    def __init__(self, root: str, split: str | None = "train", *, label: str = "cooperative",
                 load_cameras: bool = False, load_points: bool = True, split_file: str | None = None) -> None:
        if label not in ("cooperative", "single"):
            raise ValueError(f"label must be 'cooperative' or 'single', got {label!r}")
        self.root, self.label = str(root), label
        self.load_cameras, self.load_points = load_cameras, load_points
        self._coop_path = os.path.join(self.root, COOP, "data_info.json")
        coop = _load_index(self._coop_path, _COOP_KEYS)
        self._side_paths = {s: os.path.join(self.root, s, "data_info.json") for s in (VEH, INF)}
        sides = {s: self._side_index(s) for s in (VEH, INF)}
        by_vid = {_stem(e["vehicle_image_path"]): e for e in coop}
        if split_file is None and split is not None:
            split_file = split_path(self.root, split)
        vids = list(by_vid) if split_file is None else self._load_split(split_file)
        self._frames: list[tuple[str, dict, dict, dict]] = []
        self._by_key: dict[tuple[str, int], int] = {}
        for vid in vids:
            if vid not in by_vid:
                raise FormatError(f"{split_file}: frame {vid!r} is not in {self._coop_path}")
            ce = by_vid[vid]
            ve = self._side_entry(sides, VEH, ce["vehicle_pointcloud_path"], vid)
            ie = self._side_entry(sides, INF, ce["infrastructure_pointcloud_path"], vid)
            if not vid.isdigit():
                raise FormatError(f"{self._coop_path}: vehicle frame id {vid!r} is not a number")
            key = (str(ve["batch_id"]), int(vid))
            self._by_key[key] = len(self._frames)
            self._frames.append((vid, ce, ve, ie))

    # -- index ------------------------------------------------------------------------------
    def _side_index(self, side: str) -> dict[str, dict]:
        required = _SIDE_KEYS[side] + (("label_lidar_path",) if self.label == "single" else ())
        required += _CAMERA_KEYS[side] if self.load_cameras else ()
        entries = _load_index(self._side_paths[side], required)
        return {os.path.normpath(os.path.join(side, str(e["pointcloud_path"]))): e for e in entries}

    def _side_entry(self, sides, side: str, pcd_path, vid: str) -> dict:
        entry = sides[side].get(os.path.normpath(str(pcd_path)))
        if entry is None:
            raise FormatError(f"{self._side_paths[side]}: no entry with pointcloud_path for {pcd_path!r} "
                              f"(cooperative frame {vid})")
        return entry

    @staticmethod
    def _load_split(path: str) -> list[str]:
        data = calib.read_json(path)
        if not isinstance(data, list) or not all(isinstance(v, str) for v in data):
            raise FormatError(f"{path}: a split file must be a JSON list of vehicle frame id strings")
        return data

    def keys(self) -> list[tuple[str, int]]:
        """``(batch_id, int(vehicle frame id))`` of every frame, in the split file's order."""
        return [(str(ve["batch_id"]), int(vid)) for vid, _, ve, _ in self._frames]

    def __len__(self) -> int:
        return len(self._frames)

    def __getitem__(self, index: int) -> Frame:
        vid, _, ve, _ = self._frames[index]
        return self.read((str(ve["batch_id"]), int(vid)))

    def __iter__(self) -> Iterator[Frame]:
        for key in self.keys():
            yield self.read(key)

    # -- one frame --------------------------------------------------------------------------
    def read(self, key: tuple[str, int]) -> Frame:
        """The frame of ``key`` (from :meth:`keys`); poses, points, objects and optional cameras."""
        key = (str(key[0]), int(key[1]))
        if key not in self._by_key:
            raise KeyError(f"no DAIR-V2X-C frame {key} in {self.root}")
        vid, ce, ve, ie = self._frames[self._by_key[key]]
        veh_dir, inf_dir = os.path.join(self.root, VEH), os.path.join(self.root, INF)
        veh_pose = calib.vehicle_world_from_lidar(
            calib.load_lidar_to_novatel(os.path.join(veh_dir, ve["calib_lidar_to_novatel_path"])),
            calib.load_rigid(os.path.join(veh_dir, ve["calib_novatel_to_world_path"])))
        delta = calib.parse_offset(ce["system_error_offset"], self._coop_path, f" of frame {vid}")
        inf_pose = calib.infra_world_from_lidar(
            calib.load_rigid(os.path.join(inf_dir, ie["calib_virtuallidar_to_world_path"])), delta)
        iid = _stem(ie["pointcloud_path"])
        veh = AgentObservation(VEHICLE_ID, AgentKind.VEHICLE, veh_pose, self._points(ce["vehicle_pointcloud_path"]),
                               cameras=self._camera(VEH, ve, ve.get("calib_lidar_to_camera_path")))
        inf_cam = ie.get("calib_virtuallidar_to_camera_path", f"calib/virtuallidar_to_camera/{iid}.json")
        inf = AgentObservation(INFRA_ID, AgentKind.INFRASTRUCTURE, inf_pose,
                               self._points(ce["infrastructure_pointcloud_path"]),
                               cameras=self._camera(INF, ie, inf_cam))
        if self.label == "cooperative":
            objects, visibility = self._cooperative_objects(ce, ve, ie)
        else:
            objects, visibility = self._single_objects(ve, ie, veh_pose, inf_pose)
        return Frame(scenario=key[0], timestamp=key[1], ego_id=VEHICLE_ID,
                     observations={VEHICLE_ID: veh, INFRA_ID: inf}, objects=objects, visibility=visibility)

    def _points(self, rel_path: str) -> np.ndarray:
        if not self.load_points:
            return np.zeros((0, 4), dtype=np.float32)
        pts = read_dair_pcd(os.path.join(self.root, rel_path))
        pts[:, 3] /= INTENSITY_SCALE
        return pts

    def _camera(self, side: str, entry: dict, extrinsic_rel) -> tuple[Camera, ...]:
        if not self.load_cameras:
            return ()
        base = os.path.join(self.root, side)
        k = calib.load_intrinsic(os.path.join(base, entry["calib_camera_intrinsic_path"]))
        lidar_to_camera = calib.load_rigid(os.path.join(base, extrinsic_rel))
        image = _load_image(os.path.join(base, entry["image_path"]))
        return (Camera(name="camera0", intrinsic=k, lidar_from_camera=np.linalg.inv(lidar_to_camera), image=image),)

    def _single(self, side: str, entry: dict) -> labels.Labels:
        path = os.path.join(self.root, side, entry["label_lidar_path"])
        return labels.parse_single(calib.read_json(path), path)

    def _cooperative_objects(self, ce: dict, ve: dict, ie: dict) -> tuple[ObjectSet, dict]:
        path = os.path.join(self.root, ce["cooperative_label_path"])
        coop = labels.parse_cooperative(calib.read_json(path), path)
        objects = ObjectSet(coop.boxes, coop.ids, coop.classes)
        visibility: dict[str, np.ndarray] = {}
        if coop.has_track_ids and "label_lidar_path" in ve and "label_lidar_path" in ie:
            sides = {VEHICLE_ID: self._single(VEH, ve), INFRA_ID: self._single(INF, ie)}
            if all(s.has_track_ids for s in sides.values()):
                visibility = {a: np.isin(coop.ids, s.ids).astype(np.int32) for a, s in sides.items()}
        return objects, visibility

    def _single_objects(self, ve: dict, ie: dict, veh_pose, inf_pose) -> tuple[ObjectSet, dict]:
        lv, li = self._single(VEH, ve), self._single(INF, ie)
        bv, bi = transform_boxes(veh_pose, lv.boxes), transform_boxes(inf_pose, li.boxes)
        if lv.has_track_ids and li.has_track_ids:
            new = ~np.isin(li.ids, lv.ids)
            ids = np.concatenate([lv.ids, li.ids[new]])
            vis = {VEHICLE_ID: np.isin(ids, lv.ids), INFRA_ID: np.isin(ids, li.ids)}
        else:
            overlap = labels.bev_overlap(bi, bv)  # (Ni, Nv)
            new = ~overlap.any(axis=1)
            ids = np.arange(len(bv) + int(new.sum()))
            vis = {VEHICLE_ID: np.arange(len(ids)) < len(bv),
                   INFRA_ID: np.concatenate([overlap.any(axis=0), np.ones(int(new.sum()), dtype=bool)])}
        objects = ObjectSet(np.concatenate([bv, bi[new]]), ids, np.concatenate([lv.classes, li.classes[new]]))
        return objects, {a: v.astype(np.int32) for a, v in vis.items()}


def _load_image(path: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB from a JPEG/PNG; a missing or corrupt file raises :class:`FormatError`."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except FileNotFoundError:
        raise FormatError(f"{path}: file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise FormatError(f"{path}: corrupt image ({exc})") from None
