"""OPV2V layout: write -> read round trips, OpenCOOD ordering/ego/comm-range/dedupe rules, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coperception.data.formats.opv2v import OPV2VReader, OPV2VWriter, order_agents, parse_agent_params, write_frame
from coperception.data.formats.pcd import write_pcd
from coperception.data.formats.yamlio import dump_yaml, dump_yaml_text, load_yaml, load_yaml_text
from coperception.structures.records import AgentKind, AgentObservation, Camera, Frame, ObjectSet
from coperception.errors import FormatError
from coperception.geometry.pose import se3_from_xyz_rpy, wrap_angle

K = np.array([[20.0, 0.0, 8.0], [0.0, 20.0, 6.0], [0.0, 0.0, 1.0]])
# OpenCV camera (z forward, x right, y down) looking along the LiDAR's +x, 0.5 m ahead and 0.3 m up.
LIDAR_FROM_FRONT_CAM = np.array([[0.0, 0.0, 1.0, 0.5], [-1.0, 0.0, 0.0, 0.0], [0.0, -1.0, 0.0, 0.3], [0, 0, 0, 1.0]])


def _pose(rng, x, y, yaw, tilt=True):
    roll, pitch = (rng.uniform(-0.05, 0.05, 2) if tilt else (0.0, 0.0))
    return se3_from_xyz_rpy(x, y, 1.9 + rng.uniform(-0.1, 0.1), roll, pitch, yaw)


def _points(rng, n=64):
    pts = np.empty((n, 4), np.float32)
    pts[:, :3] = rng.uniform(-30, 30, (n, 3))
    pts[:, 3] = rng.uniform(0, 1, n)
    return pts


def _camera(rng, yaw_offset):
    turn = se3_from_xyz_rpy(0, 0, 0, yaw=yaw_offset)
    image = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    return Camera(f"cam{yaw_offset:.2f}", K, turn @ LIDAR_FROM_FRONT_CAM, image=image)


def make_frame(seed=0, agents=(("12", 0.0, 0.0), ("345", 20.0, 5.0), ("7", -15.0, 10.0), ("-1", 5.0, -20.0)),
               n_objects=12, timestamp=68, scenario="2021_08_22_21_41_24") -> Frame:
    """A frame with CAVs (string order differs from int order), an RSU (-1), cameras and extra LiDARs."""
    rng = np.random.default_rng(seed)
    obs = {}
    for j, (aid, x, y) in enumerate(agents):
        kind = AgentKind.INFRASTRUCTURE if int(aid) < 0 else AgentKind.VEHICLE
        cams = tuple(_camera(rng, off) for off in (0.0, np.pi / 2)) if j < 2 else ()
        extra = {32: _points(rng, 32), 16: _points(rng, 16)}
        obs[aid] = AgentObservation(aid, kind, _pose(rng, x, y, rng.uniform(-np.pi, np.pi)), _points(rng),
                                    cameras=cams, speed=float(rng.uniform(0, 15)), extra_points=extra)
    boxes = np.c_[rng.uniform(-40, 40, (n_objects, 2)), rng.uniform(0.5, 1.0, n_objects),
                  rng.uniform(3.5, 5.0, n_objects), rng.uniform(1.6, 2.2, n_objects),
                  rng.uniform(1.4, 1.9, n_objects), rng.uniform(-np.pi, np.pi, n_objects)]
    boxes[:3, 6] = [np.pi - 1e-9, -np.pi + 1e-9, np.pi / 2]
    ids = rng.choice(np.arange(100, 10000), n_objects, replace=False)
    objects = ObjectSet(boxes, ids, rng.integers(0, 4, n_objects), rng.uniform(0, 20, n_objects))
    vis = {aid: (rng.uniform(size=n_objects) < 0.6).astype(np.int32) * rng.integers(1, 50, n_objects)
           for aid in obs}
    vis[agents[0][0]][0] = 5  # seen by the ego
    return Frame(scenario, timestamp, agents[0][0], obs, objects, vis)


def _assert_same_frame(back: Frame, frame: Frame, exact_intensity=False):
    assert back.scenario == frame.scenario and back.timestamp == frame.timestamp
    assert set(back.observations) == set(frame.observations)
    for aid, want in frame.observations.items():
        got = back.observations[aid]
        assert got.kind is want.kind and got.agent_id == aid
        np.testing.assert_allclose(got.world_from_lidar, want.world_from_lidar, atol=1e-9)
        np.testing.assert_allclose(got.speed, want.speed, rtol=1e-12)
        np.testing.assert_array_equal(got.points[:, :3], want.points[:, :3])
        tol = 0 if exact_intensity else 0.5 / 255 + 1e-7
        np.testing.assert_allclose(got.points[:, 3], want.points[:, 3], atol=tol)
        assert len(got.cameras) == len(want.cameras)
        for cg, cw in zip(got.cameras, want.cameras):
            np.testing.assert_allclose(cg.intrinsic, cw.intrinsic)
            np.testing.assert_allclose(cg.lidar_from_camera, cw.lidar_from_camera, atol=1e-9)
    seen_any = np.any([v > 0 for v in frame.visibility.values()], axis=0)
    want_objects = frame.objects.subset(seen_any)
    assert sorted(back.objects.ids.tolist()) == sorted(want_objects.ids.tolist())
    order = np.argsort(back.objects.ids)
    got_b, want_b = back.objects.boxes[order], want_objects.boxes[np.argsort(want_objects.ids)]
    np.testing.assert_allclose(got_b[:, :6], want_b[:, :6], atol=1e-9)
    np.testing.assert_allclose(wrap_angle(got_b[:, 6] - want_b[:, 6]), 0, atol=1e-9)
    np.testing.assert_array_equal(back.objects.classes[order], want_objects.classes[np.argsort(want_objects.ids)])
    np.testing.assert_allclose(back.objects.speeds[order], want_objects.speeds[np.argsort(want_objects.ids)])
    for aid in frame.observations:
        listed = set(back.objects.ids[back.visibility[aid] > 0].tolist())
        assert listed == set(frame.objects.ids[frame.visibility[aid] > 0].tolist())


@pytest.mark.parametrize("pcd_format", ["binary", "ascii"])
def test_round_trip(tmp_path, pcd_format):
    frame = make_frame()
    with OPV2VWriter(tmp_path, "train", pcd_format=pcd_format) as writer:
        writer.write(frame.scenario, frame)
    reader = OPV2VReader(tmp_path, "train", load_cameras=True, extra_lidars=(32, 16))
    assert reader.keys() == [(frame.scenario, 68)] and len(reader) == 1
    back = reader.read((frame.scenario, 68))
    assert back.ego_id == "12" and back.agent_ids == ["12", "345", "7", "-1"]
    _assert_same_frame(back, frame)
    for aid, want in frame.observations.items():
        for cg, cw in zip(back.observations[aid].cameras, want.cameras):
            np.testing.assert_array_equal(cg.image, cw.image)
        assert set(back.observations[aid].extra_points) == {32, 16}  # requested for every agent
    hetero = back.observations["345"].extra_points
    for ch in (32, 16):
        np.testing.assert_array_equal(hetero[ch][:, :3], frame.observations["345"].extra_points[ch][:, :3])


def test_exact_intensity_and_hetero_root(tmp_path):
    frame = make_frame(seed=1, agents=(("5", 0.0, 0.0), ("9", 10.0, 0.0)))
    frame.observations["5"].extra_points = {32: _points(np.random.default_rng(2), 10)}
    write_frame(tmp_path / "OPV2V", "s", frame, split="test", exact_intensity=True,
                hetero_root=tmp_path / "OPV2V_Hetero")
    assert (tmp_path / "OPV2V_Hetero" / "test" / "s" / "5" / "000068_32.pcd").exists()
    assert not (tmp_path / "OPV2V" / "test" / "s" / "5" / "000068_32.pcd").exists()
    reader = OPV2VReader(tmp_path / "OPV2V", "test", hetero_root=tmp_path / "OPV2V_Hetero",
                         lidar_channels={"5": 32})
    back = reader[0]
    np.testing.assert_array_equal(back.observations["5"].points, frame.observations["5"].extra_points[32])
    assert back.observations["5"].lidar_channels == 32 and back.observations["9"].lidar_channels is None
    np.testing.assert_array_equal(back.observations["9"].points, frame.observations["9"].points)


def test_without_visibility_every_agent_lists_every_object(tmp_path):
    frame = make_frame(agents=(("3", 0.0, 0.0), ("-2", 9.0, 9.0)))
    frame.visibility = {}
    write_frame(tmp_path, "s", frame, hetero_root=tmp_path / "h")
    back = OPV2VReader(tmp_path, lidar_channels=16, hetero_root=tmp_path / "h")[0]
    assert back.objects.ids.tolist() == frame.objects.ids.tolist()
    assert all(v.tolist() == [1] * len(frame.objects) for v in back.visibility.values())
    assert back.observations["-2"].kind is AgentKind.INFRASTRUCTURE
    np.testing.assert_array_equal(back.observations["-2"].points[:, :3],
                                  frame.observations["-2"].extra_points[16][:, :3])


def test_cameras_not_decoded_unless_asked(tmp_path):
    frame = make_frame()
    write_frame(tmp_path, "s", frame)
    back = OPV2VReader(tmp_path).read(("s", 68))
    cam = back.observations["12"].cameras[0]
    assert cam.image is None and cam.name == "camera0"
    np.testing.assert_allclose(cam.lidar_from_camera, LIDAR_FROM_FRONT_CAM, atol=1e-9)
    # A point 10 m ahead on the optical axis lands 10.5 m ahead of the LiDAR.
    np.testing.assert_allclose(cam.lidar_from_camera @ [0, 0, 10, 1], [10.5, 0, 0.3, 1], atol=1e-9)


def test_yaml_fields_are_opencood_fields(tmp_path):
    frame = make_frame()
    write_frame(tmp_path, "s", frame)
    params = load_yaml(tmp_path / "train" / "s" / "12" / "000068.yaml")
    assert list(params) == ["lidar_pose", "true_ego_pos", "predicted_ego_pos", "ego_speed", "camera0", "camera1",
                            "vehicles", "plan_trajectory"]
    assert set(params["camera0"]) == {"cords", "extrinsic", "intrinsic"}
    assert all(isinstance(k, int) for k in params["vehicles"])
    entry = next(iter(params["vehicles"].values()))
    assert set(entry) == {"location", "center", "angle", "extent", "speed", "obj_type"}
    np.testing.assert_allclose(params["ego_speed"], frame.observations["12"].speed * 3.6)
    # The CARLA frame mirrors y: object 0's location y is minus ours.
    oid = int(frame.objects.ids[0])
    np.testing.assert_allclose(params["vehicles"][oid]["location"][1], -frame.objects.boxes[0, 1])
    assert params["vehicles"][oid]["angle"][1] == pytest.approx(-np.degrees(frame.objects.boxes[0, 6]))


def test_keys_order_and_additional_files(tmp_path):
    for scen, ts_list in (("b_scen", (70, 68)), ("a_scen", (4, 2, 100))):
        for ts in ts_list:
            write_frame(tmp_path, scen, make_frame(timestamp=ts, agents=(("3", 0, 0), ("11", 5, 5))))
    dump_yaml({"lidar_pose": [0] * 6}, tmp_path / "train" / "a_scen" / "11" / "000002_additional.yaml")
    reader = OPV2VReader(tmp_path)
    # Scenarios sorted; timestamps from the ego's (first string-sorted agent: "11") yaml names.
    assert reader.keys() == [("a_scen", 2), ("a_scen", 4), ("a_scen", 100), ("b_scen", 68), ("b_scen", 70)]
    assert reader.agents("a_scen") == ["11", "3"] and reader[0].ego_id == "11"


def test_agent_order_rsu_and_truncation(tmp_path):
    assert order_agents(["7", "-1", "12", "345"]) == ["12", "345", "7", "-1"]
    assert order_agents(["7", "-1", "12", "345"], rsu_last=False) == ["-1", "12", "345", "7"]
    assert order_agents(["7", "-1", "12", "345"], max_agents=2) == ["12", "345"]
    frame = make_frame()
    write_frame(tmp_path, "s", frame)
    assert OPV2VReader(tmp_path, rsu_last=False)[0].ego_id == "-1"
    back = OPV2VReader(tmp_path, max_agents=2)[0]
    assert back.agent_ids == ["12", "345"]
    only = set(frame.objects.ids[(frame.visibility["12"] > 0) | (frame.visibility["345"] > 0)].tolist())
    assert set(back.objects.ids.tolist()) == only


def test_comm_range_drops_far_agents_and_their_objects(tmp_path):
    frame = make_frame(agents=(("1", 0.0, 0.0), ("2", 30.0, 40.0), ("3", 60.0, 40.0)))  # 50 m and 72 m away
    write_frame(tmp_path, "s", frame)
    back = OPV2VReader(tmp_path, comm_range=70)[0]
    assert back.agent_ids == ["1", "2"] and set(back.visibility) == {"1", "2"}
    near = (frame.visibility["1"] > 0) | (frame.visibility["2"] > 0)
    assert set(back.objects.ids.tolist()) == set(frame.objects.ids[near].tolist())
    assert OPV2VReader(tmp_path, comm_range=None)[0].agent_ids == ["1", "2", "3"]


def test_dedupe_keeps_first_agents_copy(tmp_path):
    frame = make_frame(agents=(("1", 0.0, 0.0), ("2", 10.0, 0.0)))
    frame.visibility = {"1": np.ones(len(frame.objects), np.int32), "2": np.ones(len(frame.objects), np.int32)}
    write_frame(tmp_path, "s", frame)
    path = tmp_path / "train" / "s" / "2" / "000068.yaml"
    params = load_yaml(path)
    oid = int(frame.objects.ids[3])
    params["vehicles"][oid]["location"][0] += 7.0  # the second agent disagrees about object 3
    dump_yaml(params, path)
    back = OPV2VReader(tmp_path)[0]
    assert len(back.objects) == len(frame.objects) and back.objects.ids.tolist() == frame.objects.ids.tolist()
    np.testing.assert_allclose(back.objects.boxes[3, 0], frame.objects.boxes[3, 0], atol=1e-9)


def test_json_sidecar_round_trips(tmp_path):
    frame = make_frame()
    write_frame(tmp_path, frame.scenario, frame, write_json=True)
    assert (tmp_path / "train" / frame.scenario / "-1" / "000068.json").exists()
    _assert_same_frame(OPV2VReader(tmp_path)[0], frame)


def test_json_fast_path_is_preferred(tmp_path):
    frame = make_frame(agents=(("1", 0.0, 0.0),))
    write_frame(tmp_path, "s", frame)
    yaml_path = tmp_path / "train" / "s" / "1" / "000068.yaml"
    params = load_yaml(yaml_path)
    params["ego_speed"] = 36.0
    yaml_path.with_suffix(".json").write_text(json.dumps({k: v for k, v in params.items()}))
    assert OPV2VReader(tmp_path)[0].ego.speed == pytest.approx(10.0)
    assert OPV2VReader(tmp_path, prefer_json=False)[0].ego.speed == pytest.approx(frame.ego.speed)


def test_pcd_cache_gives_same_points(tmp_path):
    frame = make_frame()
    write_frame(tmp_path / "data", "s", frame, pcd_format="ascii")
    plain = OPV2VReader(tmp_path / "data", extra_lidars=(32,))[0]
    for _ in range(2):  # second pass reads the cached binary copies
        cached = OPV2VReader(tmp_path / "data", extra_lidars=(32,), pcd_cache=tmp_path / "cache")[0]
        for aid in plain.observations:
            np.testing.assert_array_equal(cached.observations[aid].points, plain.observations[aid].points)
    assert (tmp_path / "cache" / "main" / "s" / "12" / "000068.pcd").read_bytes().find(b"DATA binary") > 0


def test_metadata_only_reading(tmp_path):
    write_frame(tmp_path, "s", make_frame())
    back = OPV2VReader(tmp_path, load_points=False)[0]
    assert all(o.points.shape == (0, 4) for o in back.observations.values()) and len(back.objects) > 0


# ------------------------------------------------------------------------- bad input
def _write_one(tmp_path, agents=(("1", 0.0, 0.0), ("2", 5.0, 0.0))):
    write_frame(tmp_path, "s", make_frame(agents=agents))
    return tmp_path / "train" / "s"


def test_writer_rejects_bad_agents(tmp_path):
    frame = make_frame(agents=(("1", 0.0, 0.0),))
    frame.observations = {"car_a": frame.observations["1"]}
    frame.observations["car_a"].agent_id = "car_a"
    with pytest.raises(FormatError, match="not an integer string"):
        write_frame(tmp_path, "s", frame)
    rsu = make_frame(agents=(("4", 0.0, 0.0),))
    rsu.observations["4"].kind = AgentKind.INFRASTRUCTURE
    with pytest.raises(FormatError, match="negative ids"):
        write_frame(tmp_path, "s", rsu)
    with pytest.raises(FormatError, match="valid folder name"):
        write_frame(tmp_path, "../up", make_frame(agents=(("1", 0.0, 0.0),)))


@pytest.mark.parametrize("mutate, match", [
    (lambda p: p.pop("lidar_pose"), "missing field lidar_pose"),
    (lambda p: p.__setitem__("lidar_pose", [1, 2, 3]), r"lidar_pose must have shape \(6,\)"),
    (lambda p: p.__setitem__("lidar_pose", ["a"] * 6), "lidar_pose must be numbers"),
    (lambda p: p.__setitem__("ego_speed", "fast"), "ego_speed must be a finite number"),
    (lambda p: p.__setitem__("vehicles", [1, 2]), "vehicles must be a mapping"),
    (lambda p: p["vehicles"].__setitem__("car", {}), "vehicles key 'car'"),
    (lambda p: next(iter(p["vehicles"].values())).pop("extent"), r"missing field vehicles\.\d+\.extent"),
    (lambda p: next(iter(p["vehicles"].values())).__setitem__("angle", [0, 1]), r"vehicles\.\d+\.angle must have"),
    (lambda p: next(iter(p["vehicles"].values())).__setitem__("obj_type", "Zeppelin"), "unknown class"),
    (lambda p: p.__setitem__("camera0", {"cords": [0] * 6}), "camera0 must be a mapping with cords and intrinsic"),
])
def test_bad_yaml_raises_format_error_naming_file_and_field(tmp_path, mutate, match):
    scen = _write_one(tmp_path)
    path = scen / "2" / "000068.yaml"
    params = load_yaml(path)
    params["camera0"] = {"cords": [0] * 6, "intrinsic": K.tolist()}
    mutate(params)
    dump_yaml(params, path)
    with pytest.raises(FormatError, match=match) as info:
        OPV2VReader(tmp_path)[0]
    assert str(path) in str(info.value)


def test_bad_layouts_raise_format_error(tmp_path):
    with pytest.raises(FormatError, match="split folder does not exist"):
        OPV2VReader(tmp_path / "nothing")
    (tmp_path / "a" / "train").mkdir(parents=True)
    with pytest.raises(FormatError, match="no scenario folders"):
        OPV2VReader(tmp_path / "a")
    (tmp_path / "a" / "train" / "s").mkdir()
    with pytest.raises(FormatError, match="no agent folders"):
        OPV2VReader(tmp_path / "a")
    scen = _write_one(tmp_path / "b")
    (scen / "9").mkdir()
    with pytest.raises(FormatError, match="has no frames"):
        OPV2VReader(tmp_path / "b")
    (scen / "9").rename(scen / "rsu")
    with pytest.raises(FormatError, match="'rsu' is not an integer string"):
        OPV2VReader(tmp_path / "b")


def test_corrupt_point_cloud_and_missing_files(tmp_path):
    scen = _write_one(tmp_path)
    pcd = scen / "2" / "000068.pcd"
    pcd.write_bytes(pcd.read_bytes()[:-10])
    with pytest.raises(FormatError, match="truncated") as info:
        OPV2VReader(tmp_path)[0]
    assert str(pcd) in str(info.value)
    write_pcd(pcd, np.zeros((3, 4), np.float32))
    reader = OPV2VReader(tmp_path)
    (scen / "2" / "000068.yaml").unlink()  # a non-ego agent lacks a frame the ego has
    with pytest.raises(FormatError, match="cannot read YAML") as info:
        reader[0]
    assert "000068.yaml" in str(info.value)
    with pytest.raises(KeyError):
        reader.read(("s", 69))


# ------------------------------------------------------------------------- yamlio
def test_yaml_loaders():
    text = "a: 1e-05\nb: [1, 2.5, -3.0e+2]\nc: &x {5: [1, 2]}\nd: *x\n"
    assert load_yaml_text(text) == {"a": 1e-05, "b": [1, 2.5, -300.0], "c": {5: [1, 2]}, "d": {5: [1, 2]}}
    raw = load_yaml_text(text, typed=False)
    assert raw == {"a": "1e-05", "b": ["1", "2.5", "-3.0e+2"], "c": {"5": ["1", "2"]}, "d": {"5": ["1", "2"]}}
    assert raw["c"] is raw["d"]  # aliases are shared, never expanded
    for typed in (True, False):
        with pytest.raises(FormatError, match="f.yaml: invalid YAML"):
            load_yaml_text("a: [1, 2", "f.yaml", typed=typed)
    with pytest.raises(FormatError, match="f.yaml: invalid YAML"):
        load_yaml_text("a: !!python/object/apply:os.system [ls]", "f.yaml")
    with pytest.raises(FormatError, match="not a scalar"):
        load_yaml_text("{[1]: 2}", "f.yaml", typed=False)


def test_yaml_dump_converts_numpy_and_round_trips_floats():
    data = {"pose": np.array([1 / 3, -2.0, 1e-20]), "ids": {np.int64(5): np.float32(0.5)}, "t": (1, 2)}
    back = load_yaml_text(dump_yaml_text(data))
    assert back == {"pose": [1 / 3, -2.0, 1e-20], "ids": {5: 0.5}, "t": [1, 2]}


_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=True), st.text(max_size=4))
_VALUES = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.one_of(st.text(max_size=3), st.integers(-3, 3)), inner, max_size=3), max_leaves=12)
_VEHICLE = st.fixed_dictionaries({}, optional={k: _VALUES | st.lists(st.floats(-5, 5), min_size=3, max_size=3)
                                               for k in ("location", "center", "angle", "extent", "speed", "obj_type")})


@settings(max_examples=200, deadline=None)
@given(pose=_VALUES | st.lists(st.floats(-10, 10), min_size=6, max_size=6), speed=_VALUES,
       vehicles=_VALUES | st.dictionaries(st.integers(0, 9) | st.text(max_size=2), _VEHICLE, max_size=3),
       camera=_VALUES)
def test_parse_agent_params_accepts_or_raises_format_error(pose, speed, vehicles, camera):
    params = {"lidar_pose": pose, "ego_speed": speed, "vehicles": vehicles, "camera0": camera}
    try:
        parsed = parse_agent_params(params, "fuzz.yaml")
    except FormatError as exc:
        assert "fuzz.yaml" in str(exc)
        return
    assert parsed.lidar_pose.shape == (6,) and parsed.boxes.shape == (len(parsed.object_ids), 7)
