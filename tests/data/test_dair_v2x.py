"""DAIR-V2X-C format: write -> read round trips, appending, splits, DAIR conventions, bad input."""

from __future__ import annotations

import json
import logging
import math
import os

import numpy as np
import pytest

from coperception.data.formats import dair_labels
from coperception.data.formats.dair_pcd import read_dair_pcd, write_dair_pcd
from coperception.data.formats.dair_v2x import INFRA_ID, VEHICLE_ID, DairV2XReader, DairV2XWriter, write_frame
from coperception.structures.records import AgentKind, AgentObservation, Camera, Frame, ObjectSet
from coperception.errors import FormatError
from coperception.geometry import se3_from_xyz_rpy, wrap_angle

L2N = se3_from_xyz_rpy(0.4, -0.1, -1.3, roll=0.01, pitch=-0.02, yaw=0.03)  # LiDAR -> NovAtel mount
OFFSET = (1.25, -0.75)
K = np.array([[400.0, 0.0, 6.0], [0.0, 410.0, 4.0], [0.0, 0.0, 1.0]])
# OpenCV camera looking along the LiDAR x axis: camera z = lidar x, camera x = -lidar y.
LIDAR_FROM_CAM = np.array([[0, 0, 1, 0.5], [-1, 0, 0, 0.1], [0, -1, 0, -0.3], [0, 0, 0, 1]], dtype=np.float64)


def _image(seed: int) -> np.ndarray:
    yy, xx = np.mgrid[0:8, 0:12]
    base = np.stack([xx * 20, yy * 30, (xx + yy) * 10], axis=-1) + seed
    return np.clip(base, 0, 255).astype(np.uint8)


def _obs(rng, agent_id, kind, pose, camera: bool) -> AgentObservation:
    pts = rng.normal(0, 10, size=(40, 4)).astype(np.float32)
    pts[:, 3] = rng.uniform(0, 1, 40).astype(np.float32)
    cams = (Camera("front", K, LIDAR_FROM_CAM, _image(int(rng.integers(0, 50)))),) if camera else ()
    return AgentObservation(agent_id, kind, pose, pts, cameras=cams)


def make_frame(seed: int, timestamp: int = 0, cameras: bool = False, extra_agents: bool = False) -> Frame:
    """Vehicle ego "7" + RSU "-1" (tilted poses), six objects of every class, yaw near +-pi."""
    rng = np.random.default_rng(seed)
    veh_pose = se3_from_xyz_rpy(300 + seed, -120, 20, roll=0.02, pitch=-0.03, yaw=2.5 + 0.1 * seed)
    rsu_pose = se3_from_xyz_rpy(320, -100 + seed, 25, roll=-0.01, pitch=0.04, yaw=-1.0)
    obs = {"7": _obs(rng, "7", AgentKind.VEHICLE, veh_pose, cameras),
           "-1": _obs(rng, "-1", AgentKind.INFRASTRUCTURE, rsu_pose, cameras)}
    if extra_agents:
        obs["9"] = _obs(rng, "9", AgentKind.VEHICLE, se3_from_xyz_rpy(310, -110, 20), False)
        obs["-2"] = _obs(rng, "-2", AgentKind.INFRASTRUCTURE, se3_from_xyz_rpy(500, 200, 25), False)
    n = 6
    boxes = np.column_stack([280 + 15.0 * np.arange(n), rng.uniform(-140, -80, n), rng.uniform(18, 22, n),
                             rng.uniform(1, 12, n), rng.uniform(0.5, 3, n), rng.uniform(1.2, 3.5, n),
                             [math.pi - 1e-5, -math.pi + 1e-5, 0.3, -2.0, 1.2, 3.0]])
    ids = rng.permutation(1000)[:n] + 10
    visibility = {"7": np.array([5, 0, 3, 0, 1, 2]), "-1": np.array([0, 4, 2, 0, 0, 9])}
    if extra_agents:
        visibility.update({"9": np.ones(n, int), "-2": np.ones(n, int)})
    return Frame(f"scene{seed}", timestamp, "7", obs, ObjectSet(boxes, ids, np.arange(n)), visibility)


def _yaw_err(a, b) -> float:
    return float(np.abs(wrap_angle(np.asarray(a) - np.asarray(b))).max()) if len(a) else 0.0


def _by_id(objects: ObjectSet) -> ObjectSet:
    return objects.subset(np.argsort(objects.ids))


def _assert_same_objects(got: ObjectSet, want: ObjectSet) -> None:
    got, want = _by_id(got), _by_id(want)
    np.testing.assert_array_equal(got.ids, want.ids)
    np.testing.assert_array_equal(got.classes, want.classes)
    np.testing.assert_allclose(got.boxes[:, :6], want.boxes[:, :6], atol=1e-9)
    assert _yaw_err(got.boxes[:, 6], want.boxes[:, 6]) < 1e-9


@pytest.fixture()
def dataset(tmp_path):
    """Two scenarios x two frames (train) + one val frame, non-trivial NovAtel chain and RSU offset."""
    frames = {"a0": make_frame(1, 0), "a1": make_frame(2, 1), "b0": make_frame(3, 0)}
    with DairV2XWriter(tmp_path, "train", lidar_to_novatel=L2N, system_error_offset=OFFSET) as w:
        w.write("A", frames["a0"])
        w.write("A", frames["a1"])
        w.write("B", frames["b0"])
    frames["v0"] = make_frame(4, 5)
    write_frame(tmp_path, "C", frames["v0"], split="val", lidar_to_novatel=L2N, system_error_offset=OFFSET)
    return tmp_path, frames


def test_round_trip_cooperative(dataset):
    root, frames = dataset
    reader = DairV2XReader(root, "train")
    assert len(reader) == 3
    keys = reader.keys()
    assert keys == [("0", 0), ("0", 2), ("1", 4)]  # batch per scenario, shared id counter (veh, rsu)
    for key, src in zip(keys, (frames["a0"], frames["a1"], frames["b0"])):
        got = reader.read(key)
        assert (got.scenario, got.timestamp, got.ego_id) == (key[0], key[1], VEHICLE_ID)
        assert got.agent_ids == [VEHICLE_ID, INFRA_ID]
        assert got.observations[INFRA_ID].kind is AgentKind.INFRASTRUCTURE
        for new_id, old_id in ((VEHICLE_ID, "7"), (INFRA_ID, "-1")):
            np.testing.assert_allclose(got.observations[new_id].world_from_lidar,
                                       src.observations[old_id].world_from_lidar, atol=1e-9)
            np.testing.assert_array_equal(got.observations[new_id].points, src.observations[old_id].points)
        _assert_same_objects(got.objects, src.objects)
        order = np.argsort(src.objects.ids)
        ids_sorted = np.argsort(got.objects.ids)
        for new_id, old_id in ((VEHICLE_ID, "7"), (INFRA_ID, "-1")):
            np.testing.assert_array_equal(got.visibility[new_id][ids_sorted] > 0, src.visibility[old_id][order] > 0)


def test_calib_files_follow_dair_chain(dataset):
    """The stored files compose like DAIR/HEAL: N2W @ L2N for the vehicle, V2W + delta for the RSU."""
    root, frames = dataset
    load = lambda rel: json.load(open(os.path.join(root, rel)))  # noqa: E731
    l2n = load("vehicle-side/calib/lidar_to_novatel/000000.json")["transform"]
    n2w = load("vehicle-side/calib/novatel_to_world/000000.json")
    v2w = load("infrastructure-side/calib/virtuallidar_to_world/000001.json")
    assert np.shape(l2n["translation"]) == (3, 1) and np.shape(n2w["rotation"]) == (3, 3)
    rot = np.array(n2w["rotation"]) @ np.array(l2n["rotation"])
    trans = np.array(n2w["rotation"]) @ np.array(l2n["translation"]) + np.array(n2w["translation"])
    np.testing.assert_allclose(rot, frames["a0"].ego.world_from_lidar[:3, :3], atol=1e-12)
    np.testing.assert_allclose(trans[:, 0], frames["a0"].ego.world_from_lidar[:3, 3], atol=1e-9)
    np.testing.assert_allclose(np.array(l2n["rotation"]), L2N[:3, :3])
    rsu = frames["a0"].observations["-1"].world_from_lidar
    np.testing.assert_allclose(np.array(v2w["translation"])[:, 0] + [*OFFSET, 0.0], rsu[:3, 3], atol=1e-12)
    coop = load("cooperative/data_info.json")[0]
    assert coop["system_error_offset"] == {"delta_x": OFFSET[0], "delta_y": OFFSET[1]}
    assert coop["cooperative_label_path"] == "cooperative/label_world/000000.json"
    veh = load("vehicle-side/data_info.json")
    assert [e["batch_id"] for e in veh] == ["0", "0", "1", "2"]
    assert (veh[0]["batch_start_id"], veh[0]["batch_end_id"]) == ("000000", "000002")
    assert veh[0]["pointcloud_timestamp"] == "0" and veh[1]["pointcloud_timestamp"] == "100000"
    header = open(os.path.join(root, "vehicle-side/velodyne/000000.pcd"), "rb").read(200)
    assert b"FIELDS x y z intensity" in header
    raw = read_dair_pcd(os.path.join(root, "vehicle-side/velodyne/000000.pcd"))
    np.testing.assert_allclose(raw[:, 3], frames["a0"].ego.points[:, 3] * 256.0)  # DAIR scale, HEAL /256
    for rel in ("cooperative/label_world_backup/000000.json", "vehicle-side/label/lidar_backup/000000.json"):
        assert os.path.exists(os.path.join(root, rel))  # HEAL opens these unconditionally


def test_splits_and_all_frames(dataset):
    root, frames = dataset
    val = DairV2XReader(root, "val")
    assert val.keys() == [("2", 6)]
    _assert_same_objects(val.read(val.keys()[0]).objects, frames["v0"].objects)
    assert json.load(open(os.path.join(root, "val.json"))) == ["000006"]
    assert json.load(open(os.path.join(root, "train.json"))) == ["000000", "000002", "000004"]
    everything = DairV2XReader(root, split=None)
    assert [k[1] for k in everything.keys()] == [0, 2, 4, 6]
    with pytest.raises(KeyError):
        everything.read(("5", 0))  # wrong batch for frame 0


def test_append_second_writer_continues_ids_and_batches(dataset):
    root, frames = dataset
    with DairV2XWriter(root, "train", lidar_to_novatel=L2N, system_error_offset=OFFSET) as w:
        w.write("A", make_frame(5, 2))  # same scenario name -> same batch as before
        w.write("D", make_frame(6, 0))
    reader = DairV2XReader(root, "train")
    assert reader.keys() == [("0", 0), ("0", 2), ("1", 4), ("0", 8), ("3", 10)]
    veh = json.load(open(os.path.join(root, "vehicle-side/data_info.json")))
    batch0 = [e for e in veh if e["batch_id"] == "0"]
    assert {(e["batch_start_id"], e["batch_end_id"]) for e in batch0} == {("000000", "000008")}
    inf_ids = [e["frame_id"] for e in json.load(open(os.path.join(root, "infrastructure-side/data_info.json")))]
    all_ids = [e["frame_id"] for e in veh] + inf_ids
    assert len(set(all_ids)) == len(all_ids)
    _assert_same_objects(reader.read(("3", 10)).objects, make_frame(6, 0).objects)
    assert DairV2XReader(root, "val").keys() == [("2", 6)]  # other split untouched


def test_single_side_labels_and_visibility(dataset):
    root, frames = dataset
    src = frames["a0"]
    label = json.load(open(os.path.join(root, "vehicle-side/label/lidar/000000.json")))
    seen = src.visibility["7"] > 0
    assert len(label) == int(seen.sum())
    first = src.objects.subset(seen)
    pose = src.ego.world_from_lidar
    centre = np.linalg.inv(pose) @ np.append(first.boxes[0, :3], 1.0)
    loc = label[0]["3d_location"]
    np.testing.assert_allclose([loc["x"], loc["y"], loc["z"]], centre[:3], atol=1e-9)  # z = box centre
    assert label[0]["type"] == "Car" and label[0]["3d_dimensions"]["l"] == pytest.approx(first.boxes[0, 3])
    reader = DairV2XReader(root, "train", label="single")
    got = reader.read(reader.keys()[0])
    either = (src.visibility["7"] > 0) | (src.visibility["-1"] > 0)
    _assert_same_objects(got.objects, src.objects.subset(either))
    order = np.argsort(got.objects.ids)
    want = src.objects.subset(either)
    want_infra = src.visibility["-1"][either][np.argsort(want.ids)] > 0
    np.testing.assert_array_equal(got.visibility[INFRA_ID][order] > 0, want_infra)


def test_single_labels_without_track_ids_deduplicate_by_overlap(dataset):
    root, frames = dataset
    for rel in ("vehicle-side/label/lidar/000000.json", "infrastructure-side/label/virtuallidar/000001.json"):
        path = os.path.join(root, rel)
        content = json.load(open(path))
        for obj in content:
            del obj["track_id"]
        json.dump(content, open(path, "w"))
    got = DairV2XReader(root, "train", label="single").read(("0", 0))
    src = frames["a0"]
    either = (src.visibility["7"] > 0) | (src.visibility["-1"] > 0)
    assert len(got.objects) == int(either.sum())  # object seen by both sides kept once
    assert got.objects.ids.tolist() == list(range(len(got.objects)))
    n_veh = int((src.visibility["7"] > 0).sum())
    np.testing.assert_array_equal(got.visibility[VEHICLE_ID], [1] * n_veh + [0] * (len(got.objects) - n_veh))
    np.testing.assert_array_equal(got.visibility[INFRA_ID] > 0, [False, True, False, True, True])


def test_cameras_round_trip(tmp_path):
    src = make_frame(8, cameras=True)
    write_frame(tmp_path, "S", src, jpeg_quality=100)
    got = DairV2XReader(tmp_path, "train", load_cameras=True).read(("0", 0))
    for new_id, old_id in ((VEHICLE_ID, "7"), (INFRA_ID, "-1")):
        (cam,) = got.observations[new_id].cameras
        ref = src.observations[old_id].cameras[0]
        np.testing.assert_allclose(cam.intrinsic, K)
        np.testing.assert_allclose(cam.lidar_from_camera, LIDAR_FROM_CAM, atol=1e-12)
        assert cam.image.shape == ref.image.shape and cam.image.dtype == np.uint8
        assert np.abs(cam.image.astype(int) - ref.image.astype(int)).mean() < 3.0  # JPEG is lossy
    assert DairV2XReader(tmp_path, "train").read(("0", 0)).ego.cameras == ()
    meta = DairV2XReader(tmp_path, "train", load_points=False)
    assert [f.ego.points.shape for f in meta] == [(0, 4)] and len(meta[0].objects) == len(src.objects)
    intrinsic = json.load(open(os.path.join(tmp_path, "vehicle-side/calib/camera_intrinsic/000000.json")))
    assert len(intrinsic["cam_K"]) == 9 and len(intrinsic["cam_D"]) == 5


def test_empty_offset_string_and_ascii_pcd(tmp_path):
    src = make_frame(9)
    write_frame(tmp_path, "S", src, system_error_offset=None, pcd_data="ascii")
    coop = json.load(open(os.path.join(tmp_path, "cooperative/data_info.json")))
    assert coop[0]["system_error_offset"] == ""
    got = DairV2XReader(tmp_path).read(("0", 0))
    np.testing.assert_allclose(got.observations[INFRA_ID].world_from_lidar, src.observations["-1"].world_from_lidar)
    np.testing.assert_array_equal(got.ego.points, src.ego.points)


def test_extra_agents_are_dropped_and_logged(tmp_path, caplog):
    src = make_frame(10, extra_agents=True)
    with caplog.at_level(logging.INFO, logger="coperception.data.formats.dair_write"):
        write_frame(tmp_path, "S", src)
    assert "'9'" in caplog.text and "'-2'" in caplog.text
    got = DairV2XReader(tmp_path).read(("0", 0))
    np.testing.assert_allclose(got.observations[INFRA_ID].world_from_lidar, src.observations["-1"].world_from_lidar)


def test_rsu_ego_pairs_with_nearest_vehicle(tmp_path):
    src = make_frame(11, extra_agents=True)
    src.ego_id = "-1"
    write_frame(tmp_path, "S", src)
    got = DairV2XReader(tmp_path).read(("0", 0))
    np.testing.assert_allclose(got.ego.world_from_lidar, src.observations["9"].world_from_lidar, atol=1e-9)


def test_frame_without_infrastructure_is_rejected(tmp_path):
    src = make_frame(12)
    del src.observations["-1"]
    with pytest.raises(FormatError, match="infrastructure"):
        write_frame(tmp_path, "S", src)


def test_dair_corner_order_matches_dair_and_heal_code():
    """Corner 0-3 = bottom ring FL, FR, RR, RL; DAIR's get_rotation and HEAL's corner_to_center agree."""
    box = np.array([[1.0, 2.0, 3.0, 4.0, 2.0, 1.5, 0.4]])
    c = dair_labels.boxes_to_dair_corners(box)[0]
    rot = np.array([[math.cos(0.4), -math.sin(0.4), 0], [math.sin(0.4), math.cos(0.4), 0], [0, 0, 1]])
    local = (c - box[0, :3]) @ rot
    np.testing.assert_allclose(np.sign(local), [[1, 1, -1], [1, -1, -1], [-1, -1, -1], [-1, 1, -1],
                                                [1, 1, 1], [1, -1, 1], [-1, -1, 1], [-1, 1, 1]])
    # DAIR tools/dataset_converter/label_world2v.py get_rotation: tan(yaw) from corners 0, 1, 2.
    a, b, cc, x, length, w = c[0, 0], c[1, 0], c[2, 0], box[0, 0], box[0, 3], box[0, 4]
    assert math.atan(((b + cc - 2 * x) * length) / ((a + b - 2 * x) * w)) == pytest.approx(0.4)
    box_utils = pytest.importorskip("opencood.utils.box_utils")
    np.testing.assert_allclose(box_utils.corner_to_center(c[None], order="lwh"), box, atol=1e-12)
    # yaw near +-pi survives the fit (HEAL averages four atan2 values there and lands near 0)
    near_pi = np.array([[0, 0, 0, 4, 2, 1.5, math.pi - 1e-6], [0, 0, 0, 4, 2, 1.5, -math.pi + 1e-6]])
    fitted = dair_labels.dair_corners_to_boxes(dair_labels.boxes_to_dair_corners(near_pi))
    assert _yaw_err(fitted[:, 6], near_pi[:, 6]) < 1e-9


def test_class_mapping_round_trip():
    for ours, dair in dair_labels.CLASS_TO_DAIR.items():
        assert dair_labels.DAIR_TO_CLASS[dair.lower()] == dair_labels.OBJECT_CLASSES.index(ours)
    obj = [{"type": t, "3d_dimensions": {"l": 1, "w": 1, "h": 1}, "3d_location": {"x": 0, "y": 0, "z": 0},
            "rotation": "0.5"} for t in ("Tricyclist", "TrafficCone", "Barrowlist")]
    parsed = dair_labels.parse_single(obj, "x.json")
    assert parsed.classes.tolist() == [5, 4] and parsed.ids.tolist() == [0, 2] and not parsed.has_track_ids


def test_compressed_pcd_written_by_open3d_is_read(tmp_path):
    o3d = pytest.importorskip("open3d")
    pts = np.random.default_rng(0).normal(size=(30, 4)).astype(np.float32)
    pts[3, 1] = np.nan
    cloud = o3d.t.geometry.PointCloud()
    cloud.point.positions = o3d.core.Tensor(pts[:, :3])
    cloud.point.intensity = o3d.core.Tensor(pts[:, 3:])
    path = str(tmp_path / "c.pcd")
    o3d.t.io.write_point_cloud(path, cloud, compressed=True)
    assert b"binary_compressed" in open(path, "rb").read(300)
    np.testing.assert_array_equal(read_dair_pcd(path), np.delete(pts, 3, axis=0))  # NaN row dropped like HEAL
    write_dair_pcd(str(tmp_path / "d.pcd"), pts[:5])
    back = o3d.t.io.read_point_cloud(str(tmp_path / "d.pcd"))
    np.testing.assert_array_equal(back.point.intensity.numpy().ravel(), pts[:5, 3])


# -- bad input -------------------------------------------------------------------------------
def _edit_json(root, rel, fn):
    path = os.path.join(root, rel)
    data = json.load(open(path))
    out = fn(data)
    json.dump(data if out is None else out, open(path, "w"))


def _set(d, keys, value):
    for k in keys[:-1]:
        d = d[k]
    d[keys[-1]] = value


BAD_READ = {  # name -> (file to corrupt, corruption); each must fail in read() naming the file
    "missing calib": ("vehicle-side/calib/novatel_to_world/000000.json", lambda p: os.remove(p)),
    "rotation not 3x3": ("vehicle-side/calib/novatel_to_world/000000.json",
                         lambda p: _edit_json("", p, lambda d: _set(d, ["rotation"], [[1, 0], [0, 1]]))),
    "translation not 3x1": ("vehicle-side/calib/lidar_to_novatel/000000.json",
                            lambda p: _edit_json("", p, lambda d: _set(d, ["transform", "translation"], [[1], [2]]))),
    "no transform key": ("vehicle-side/calib/lidar_to_novatel/000000.json",
                         lambda p: _edit_json("", p, lambda d: d["transform"])),
    "rotation not numeric": ("infrastructure-side/calib/virtuallidar_to_world/000001.json",
                             lambda p: _edit_json("", p, lambda d: _set(d, ["rotation"], "identity"))),
    "malformed label json": ("cooperative/label_world/000000.json", lambda p: open(p, "w").write("[{not json")),
    "world_8_points shape": ("cooperative/label_world/000000.json",
                             lambda p: _edit_json("", p, lambda d: _set(d[0], ["world_8_points"], [[0, 0, 0]] * 4))),
    "unknown type": ("cooperative/label_world/000000.json",
                     lambda p: _edit_json("", p, lambda d: _set(d[0], ["type"], "Tank"))),
    "corrupt pcd": ("vehicle-side/velodyne/000000.pcd", lambda p: open(p, "r+b").truncate(300)),
    "garbage pcd": ("infrastructure-side/velodyne/000001.pcd", lambda p: open(p, "wb").write(b"\x00\xff" * 50)),
    "bad offset": ("cooperative/data_info.json",
                   lambda p: _edit_json("", p, lambda d: _set(d[0], ["system_error_offset"], {"delta_x": "east"}))),
    "single label value": ("vehicle-side/label/lidar/000000.json",
                           lambda p: _edit_json("", p, lambda d: _set(d[0], ["3d_location", "x"], "far"))),
}
BAD_INDEX = {  # corruptions that the reader's constructor must reject, naming the file
    "data_info entry missing key": ("vehicle-side/data_info.json",
                                    lambda p: _edit_json("", p, lambda d: d[1].pop("calib_novatel_to_world_path"))),
    "coop entry missing offset": ("cooperative/data_info.json",
                                  lambda p: _edit_json("", p, lambda d: d[0].pop("system_error_offset"))),
    "split references missing frame": ("train.json", lambda p: _edit_json("", p, lambda d: d + ["999998"])),
    "split not a list of ids": ("train.json", lambda p: _edit_json("", p, lambda d: {"frames": d})),
    "malformed data_info": ("infrastructure-side/data_info.json", lambda p: open(p, "w").write("{")),
    "side entry missing for frame": ("infrastructure-side/data_info.json",
                                     lambda p: _edit_json("", p, lambda d: d[1:])),
}


@pytest.mark.parametrize("name", sorted(BAD_READ))
def test_bad_frame_files_raise_format_error(dataset, name):
    root, _ = dataset
    rel, corrupt = BAD_READ[name]
    corrupt(os.path.join(root, rel))
    reader = DairV2XReader(root, "train", label="single" if "single" in name else "cooperative")
    with pytest.raises(FormatError, match=os.path.basename(os.path.dirname(rel))) as err:
        reader.read(("0", 0))
    assert os.path.basename(rel) in str(err.value)


@pytest.mark.parametrize("name", sorted(BAD_INDEX))
def test_bad_index_files_raise_format_error(dataset, name):
    root, _ = dataset
    rel, corrupt = BAD_INDEX[name]
    corrupt(os.path.join(root, rel))
    with pytest.raises(FormatError) as err:
        DairV2XReader(root, "train")
    assert rel in str(err.value)


def test_missing_camera_files_raise_format_error(dataset):
    root, _ = dataset  # written without cameras: asking for them must name the missing file
    with pytest.raises(FormatError, match="camera_intrinsic/000000.json"):
        DairV2XReader(root, "train", load_cameras=True).read(("0", 0))
