"""The CARLA backend: connection failure and configuration errors, the world-reading pieces
(routes, RSUs, ground truth, sensor sync, infraction monitors) on stand-in objects built from the
carla client's own geometry types, and — with a server — the whole loop (``-m carla``)."""

from __future__ import annotations

import os
import socket
import time

import numpy as np
import pytest

from coperception.drive.carla_backend import (
    CarlaBackend,
    CarlaUnavailable,
    check_family,
    parse_address,
)
from coperception.drive.carla_scene import (
    CollisionMonitor,
    RedLightMonitor,
    SensorQueue,
    chain_route,
    check_town,
    crossed_line,
    is_outside_route_lanes,
    junction_corners,
    objects_from_actors,
    route_junction_boxes,
    route_xy,
    wheelbase_from_wheels,
)
from coperception.drive.records import Backend, Control, EventKind
from coperception.errors import ConfigError
from coperception.structures.records import OBJECT_CLASSES

carla = pytest.importorskip("carla", reason="the CARLA 0.9.16 client (pip install carla==0.9.16)")


def _closed_local_port() -> int:
    """A loopback port nothing listens on (checked by a refused connection)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0
    return port


def test_no_server_fails_within_timeout_naming_address_and_fix():
    port = _closed_local_port()
    start = time.perf_counter()
    with pytest.raises(CarlaUnavailable) as err:
        CarlaBackend("127.0.0.1", port, timeout=1.0)
    elapsed = time.perf_counter() - start
    assert 0.9 <= elapsed < 3.0, elapsed
    msg = str(err.value)
    assert f"127.0.0.1:{port}" in msg and "within 1 s" in msg
    assert "CarlaUE4.sh -RenderOffScreen" in msg and "carlasim/carla:0.9.16" in msg
    assert isinstance(err.value, ConfigError)


@pytest.mark.parametrize("kwargs, field", [
    ({"timeout": 0.0}, "timeout"), ({"rate_hz": -5.0}, "rate_hz"), ({"n_rsus": -1}, "n_rsus"),
    ({"port": 70000}, "port"), ({"route_length": 0.0}, "route_length"),
])
def test_bad_configuration_is_named_before_connecting(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        CarlaBackend(**kwargs)


def test_without_the_client_package_says_how_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "carla", None)  # as if carla were not installed
    with pytest.raises(ConfigError, match=r"pip install -e \.\[carla\]"):
        CarlaBackend(timeout=1.0)


def test_address_family_and_town_checks():
    assert parse_address("localhost:2000") == ("localhost", 2000)
    with pytest.raises(ValueError, match="host:port"):
        parse_address("localhost")
    check_family("route")
    with pytest.raises(ConfigError, match="'occluded_crossing'.*CARLA implements route"):
        check_family("occluded_crossing")
    assert check_town("Carla/Maps/Town05", "Town05", load_world=False) is False
    assert check_town("Carla/Maps/Town05", None, load_world=False) is False
    assert check_town("Carla/Maps/Town05", "Town10HD", load_world=True) is True
    with pytest.raises(ConfigError, match="'Town05'.*'Town10HD'"):
        check_town("Carla/Maps/Town05", "Town10HD", load_world=False)


class _Waypoint:
    """A lane centre point on a toy map: a road along +x (CARLA) that forks at x = 10 m into a
    straight branch and a branch turning to CARLA's +y (the right); dead end at x = 30 m."""

    def __init__(self, x: float, y: float, yaw: float = 0.0, junction: int | None = None):
        self.transform = carla.Transform(carla.Location(x=x, y=y), carla.Rotation(yaw=yaw))
        self.is_junction = junction is not None
        self.road_id, self.lane_id = (7 if y == 0 else 8), -1
        self._junction = junction

    def get_junction(self):
        bbox = carla.BoundingBox(carla.Location(12.0, 2.0, 0.0), carla.Vector3D(4.0, 3.0, 1.0))
        return type("J", (), {"id": self._junction, "bounding_box": bbox})()

    def next(self, step: float):
        x, y = self.transform.location.x, self.transform.location.y
        if x + step > 30.0:
            return []
        if y == 0 and 10.0 <= x + step <= 14.0:
            return [_Waypoint(x + step, 0.0, 0.0, 1), _Waypoint(x + step, step, 90.0, 1)]
        return [_Waypoint(x + step, y + (step if y > 0 else 0.0), 90.0 if y > 0 else 0.0)]


def test_chain_route_follows_choices_and_stops_at_dead_end():
    choices = []
    straight = chain_route(_Waypoint(0.0, 0.0), 100.0, 2.0, lambda n: choices.append(n) or 0)
    xy = route_xy(straight)
    np.testing.assert_allclose(xy[:, 0], np.arange(0.0, 30.1, 2.0))  # dead end at 30 m
    np.testing.assert_allclose(xy[:, 1], 0.0)
    assert choices == [2, 2, 2]  # forks met at x = 10, 12, 14
    turned = route_xy(chain_route(_Waypoint(0.0, 0.0), 14.0, 2.0, lambda n: 1))
    # Turning to CARLA's right is to our right: negative library y.
    np.testing.assert_allclose(turned[-1], [14.0, -6.0])
    assert len(turned) == 8  # ceil(14 / 2) steps
    with pytest.raises(ValueError, match="choose"):
        chain_route(_Waypoint(8.0, 0.0), 10.0, 2.0, lambda n: 5)


def test_rsu_junction_corners():
    chain = chain_route(_Waypoint(0.0, 0.0), 20.0, 2.0, lambda n: 0)
    boxes = route_junction_boxes(chain)
    assert len(boxes) == 1  # three junction waypoints, one junction
    corners = junction_corners(boxes[0])
    np.testing.assert_allclose(corners, [[16, 1], [16, -5], [8, -5], [8, 1]])  # centre (12, -2)


def _actor(actor_id, type_id, x, y, yaw, extent, vel=(0.0, 0.0, 0.0), attributes=None):
    return type("A", (), {
        "id": actor_id, "type_id": type_id, "attributes": attributes or {},
        "bounding_box": carla.BoundingBox(carla.Location(0.0, 0.0, extent[2]), carla.Vector3D(*extent)),
        "get_transform": lambda self: carla.Transform(carla.Location(x=x, y=y, z=0.0), carla.Rotation(yaw=yaw)),
        "get_velocity": lambda self: carla.Vector3D(*vel),
    })()


def test_objects_from_actors():
    actors = [
        _actor(1, "vehicle.lincoln.mkz_2020", 0.0, 0.0, 0.0, (2.4, 1.0, 0.8)),  # the ego, excluded
        _actor(2, "vehicle.audi.tt", 10.0, 5.0, 90.0, (2.0, 0.9, 0.7), vel=(3.0, 4.0, 0.0),
               attributes={"number_of_wheels": "4", "base_type": "car"}),
        _actor(3, "walker.pedestrian.0001", -3.0, -4.0, 0.0, (0.3, 0.3, 0.9)),
        _actor(4, "vehicle.tesla.model3", 200.0, 0.0, 0.0, (2.4, 1.0, 0.8)),  # out of range
        _actor(5, "sensor.lidar.ray_cast", 1.0, 1.0, 0.0, (0.1, 0.1, 0.1)),
    ]
    objs = objects_from_actors(actors, np.zeros(2), 100.0, exclude=(1,))
    assert objs.ids.tolist() == [2, 3]
    assert [OBJECT_CLASSES[c] for c in objs.classes] == ["car", "pedestrian"]
    np.testing.assert_allclose(objs.boxes[0], [10.0, -5.0, 0.7, 4.0, 1.8, 1.4, -np.pi / 2], atol=1e-6)
    np.testing.assert_allclose(objs.boxes[1], [-3.0, 4.0, 0.9, 0.6, 0.6, 1.8, 0.0], atol=1e-6)
    np.testing.assert_allclose(objs.speeds, [5.0, 0.0])
    assert len(objects_from_actors(actors[4:], np.zeros(2), 100.0)) == 0


def test_sensor_queue_returns_the_frame_asked_for():
    q = SensorQueue()
    for f in (3, 4, 5):
        q.put(type("D", (), {"frame": f})())
    assert q.get(4, timeout=0.1).frame == 4
    with pytest.raises(TimeoutError, match="frame 7"):
        q.get(7, timeout=0.05)
    q.put(type("D", (), {"frame": 9})())
    with pytest.raises(RuntimeError, match="skipped frame 8"):
        q.get(8, timeout=0.1)


def _hit(other_id, type_id, x=1.0, y=2.0):
    other = type("O", (), {"id": other_id, "type_id": type_id})()
    return type("E", (), {"other_actor": other, "transform": carla.Transform(carla.Location(x=x, y=y))})()


def test_collisions_count_once_per_contact():
    mon = CollisionMonitor()
    mon.on_collision(_hit(7, "walker.pedestrian.0002"))
    mon.on_collision(_hit(7, "walker.pedestrian.0002"))
    mon.on_collision(_hit(9, "static.prop.trafficcone01"))
    first = mon.collect(0.05)
    assert [(e.kind, e.other) for e in first] == [(EventKind.COLLISION_PEDESTRIAN, "7"),
                                                  (EventKind.COLLISION_STATIC, "9")]
    assert first[0].xy == (1.0, -2.0) and first[0].time == 0.05
    mon.on_collision(_hit(7, "walker.pedestrian.0002"))  # still touching: no new event
    assert mon.collect(0.10) == []
    assert mon.collect(0.15) == []  # contact ends
    mon.on_collision(_hit(7, "walker.pedestrian.0002"))
    assert [e.kind for e in mon.collect(0.20)] == [EventKind.COLLISION_PEDESTRIAN]


def test_crossed_line():
    line, d = np.array([10.0, 0.0]), np.array([1.0, 0.0])
    assert crossed_line(np.array([9.0, 0.5]), np.array([10.5, 0.5]), line, d, 1.75)
    assert not crossed_line(np.array([10.5, 0.5]), np.array([9.0, 0.5]), line, d, 1.75)  # backwards
    assert not crossed_line(np.array([9.0, 3.0]), np.array([10.5, 3.0]), line, d, 1.75)  # next lane
    assert not crossed_line(np.array([8.0, 0.0]), np.array([9.9, 0.0]), line, d, 1.75)  # short of it


class _Light:
    """A traffic light with one stop line at CARLA x = 20 across a lane heading +x."""

    id = 42

    def __init__(self, state):
        self.state = state

    def get_state(self):
        return self.state

    def get_stop_waypoints(self):
        wp = type("W", (), {"transform": carla.Transform(carla.Location(x=20.0, y=0.0)), "lane_width": 3.5})()
        return [wp]


@pytest.mark.parametrize("state, expected", [("Red", 1), ("Green", 0)])
def test_red_light_counts_crossing_on_red_once(state, expected):
    light = _Light(getattr(carla.TrafficLightState, state))
    mon = RedLightMonitor(red_state=carla.TrafficLightState.Red)
    events = []
    for k, x in enumerate(np.arange(10.0, 30.0, 1.0)):
        at_light = light if x < 18 else None  # the trigger volume ends before the line
        events += mon.update(0.05 * k, np.array([x, 0.2]), at_light)
        if x == 15.0:
            np.testing.assert_allclose(mon.signals(np.array([x, 0.2]), 0.0), [[20.0, 0.0, float(expected)]])
            assert mon.signals(np.array([x, 0.2]), np.pi).shape == (0, 3)  # facing away
    assert [e.kind for e in events] == [EventKind.RED_LIGHT] * expected
    if expected:
        assert events[0].other == "42" and events[0].xy == (20.0, 0.2)
    assert mon.signals(np.array([29.0, 0.2]), 0.0).shape == (0, 3)  # light passed and forgotten


def test_outside_route_lanes():
    driving, sidewalk = carla.LaneType.Driving, carla.LaneType.Sidewalk

    def wp(lane_type, road, lane, junction=False):
        return type("W", (), {"lane_type": lane_type, "road_id": road, "lane_id": lane, "is_junction": junction})()

    lanes = {(7, -1)}
    assert not is_outside_route_lanes(wp(driving, 7, -1), lanes, driving)
    assert is_outside_route_lanes(wp(driving, 7, 1), lanes, driving)  # opposite direction
    assert is_outside_route_lanes(wp(sidewalk, 7, -2), lanes, driving)
    assert is_outside_route_lanes(None, lanes, driving)  # off the map
    assert not is_outside_route_lanes(wp(driving, 99, 3, junction=True), lanes, driving)


def test_wheelbase_from_wheel_positions():
    def wheels(front_cm, rear_cm):
        return [carla.WheelPhysicsControl(position=carla.Vector3D(x, y, 30.0))
                for x, y in ((front_cm, -80), (front_cm, 80), (rear_cm, -80), (rear_cm, 80))]

    assert wheelbase_from_wheels(wheels(5140.0, 4860.0), 2.4) == pytest.approx(2.8)
    assert wheelbase_from_wheels(wheels(5010.0, 4990.0), 2.4) == pytest.approx(0.6 * 4.8)  # implausible


# --- with a CARLA server -------------------------------------------------------------------------

_SERVER = os.environ.get("COPERCEPTION_CARLA")
needs_server = pytest.mark.skipif(not _SERVER, reason="needs a CARLA 0.9.16 server: set COPERCEPTION_CARLA=host:port")


@pytest.fixture(scope="module")
def backend():
    host, port = parse_address(_SERVER)
    b = CarlaBackend(host, port, timeout=20.0, rate_hz=20.0, n_collaborators=1, n_rsus=1, n_traffic=5)
    yield b
    b.close()


@pytest.mark.carla
@needs_server
def test_server_route_reset_and_step(backend):
    assert isinstance(backend, Backend)
    info, tick = backend.reset("route", 3)
    assert info.family == "route" and 150.0 <= info.route.length <= 210.0
    assert "cav_1" in info.collaborators and tick.frame.ego_id == "ego"
    assert tick.time == pytest.approx(0.05, abs=1e-6)
    ego_obs = tick.frame.ego
    assert ego_obs.points.dtype == np.float32 and len(ego_obs.points) > 1000
    np.testing.assert_allclose(ego_obs.world_from_lidar[:2, 3], tick.ego.xy, atol=0.5)
    cav = tick.frame.observations["cav_1"]
    cav_actor_ids = [i for i, c in zip(tick.frame.objects.ids, tick.frame.objects.boxes)
                     if np.hypot(*(c[:2] - cav.world_from_lidar[:2, 3])) < 0.5]
    assert len(cav_actor_ids) == 1  # the collaborator's GT box sits under its LiDAR
    x0 = tick.ego.xy
    for _ in range(40):
        tick = backend.step({"ego": Control(accel=2.0, steer=0.0)})
    assert tick.time == pytest.approx(41 * 0.05, abs=1e-4)
    assert tick.ego.speed > 1.0
    assert np.linalg.norm(tick.ego.xy - x0) > 1.0
    s, dist = info.route.project(tick.ego.xy)
    assert s > 1.0 and dist < 2.0  # drove forward along its route (handedness end to end)
    info2, _ = backend.reset("route", 3)
    np.testing.assert_allclose(info2.route.waypoints, info.route.waypoints)


@pytest.mark.carla
@needs_server
def test_server_unknown_family_and_map_mismatch(backend):
    with pytest.raises(ConfigError, match="occluded_crossing"):
        backend.reset("occluded_crossing", 0)
    host, port = parse_address(_SERVER)
    with pytest.raises(ConfigError, match="Town_Missing"):
        CarlaBackend(host, port, timeout=20.0, town="Town_Missing", load_world=False)
