"""CarlaBackend's orchestration (reset, step, close) against a small in-process stand-in of a
CARLA server: a straight two-lane road along CARLA +x with one junction, vehicles that move by
their throttle, LiDARs that return fixed points. Geometry uses the real client's types, so the
conversions are the ones a server would exercise; what a real server adds is covered by the
``-m carla`` tests in test_carla_backend.py."""

from __future__ import annotations

import fnmatch

import numpy as np
import pytest

from coperception.drive import carla_backend
from coperception.drive.carla_backend import CarlaBackend
from coperception.drive.records import Control, EventKind
from coperception.errors import ConfigError

carla = pytest.importorskip("carla", reason="the CARLA 0.9.16 client (pip install carla==0.9.16)")

DT = 0.05
RAW_POINTS = np.array([[5.0, 1.0, -1.5, 0.3], [-2.0, -4.0, 0.5, 0.9]], dtype=np.float32)
JUNCTION = carla.BoundingBox(carla.Location(105.0, 1.75, 0.0), carla.Vector3D(5.0, 5.0, 1.0))


class _Waypoint:
    def __init__(self, x: float, lane: int):
        self.x, self.lane = x, lane
        self.transform = carla.Transform(carla.Location(x=x, y=3.5 * lane, z=0.0), carla.Rotation())
        self.is_junction = 100.0 <= x <= 110.0
        self.road_id, self.lane_id, self.lane_width = 1, -1 - lane, 3.5
        self.lane_type = carla.LaneType.Driving

    def next(self, step):
        return [] if self.x + step > 300 else [_Waypoint(self.x + step, self.lane)]

    def get_junction(self):
        return type("J", (), {"id": 5, "bounding_box": JUNCTION})()


class _Map:
    name = "Carla/Maps/Town05"

    def get_spawn_points(self):
        return [carla.Transform(carla.Location(x=float(x), y=3.5 * lane, z=0.3)) for x in (0, 20, 40, 60)
                for lane in (0, 1)]

    def get_waypoint(self, loc, project_to_road=True, lane_type=None):
        return _Waypoint(2.0 * round(loc.x / 2.0), round(loc.y / 3.5))


class _Blueprint:
    def __init__(self, bp_id, wheels=4):
        self.id, self.attrs = bp_id, {"number_of_wheels": str(wheels), "role_name": ""}

    def has_attribute(self, name):
        return name in self.attrs

    def get_attribute(self, name):
        return type("Attr", (), {"as_int": lambda s: int(self.attrs[name])})()

    def set_attribute(self, name, value):
        self.attrs[name] = value


class _Library:
    def find(self, bp_id):
        return _Blueprint(bp_id)

    def filter(self, pattern):
        return [_Blueprint("vehicle.audi.tt"), _Blueprint("vehicle.yamaha.yzf", wheels=2)]


class _Actor:
    def __init__(self, world, bp, transform, parent=None):
        self.world, self.parent, self.rel = world, parent, transform
        self.id, self.type_id, self.attributes = world.next_id(), bp.id, dict(bp.attrs)
        self.speed, self.control, self.autopilot, self.alive, self.callback = 0.0, None, False, True, None
        self.bounding_box = carla.BoundingBox(carla.Location(0.0, 0.0, 0.8), carla.Vector3D(2.4, 1.0, 0.8))
        self.is_listening, self.born = False, world.frame

    def get_transform(self):
        if self.world.frame == self.born:  # a synchronous world reports new actors only after a tick
            return carla.Transform()
        if self.parent is None:
            return self.rel
        p = self.parent.get_transform()
        return carla.Transform(carla.Location(p.location.x + self.rel.location.x, p.location.y + self.rel.location.y,
                                              p.location.z + self.rel.location.z), p.rotation)

    def get_location(self):
        return self.get_transform().location

    def get_velocity(self):
        return carla.Vector3D(self.speed, 0.0, 0.0)

    def get_physics_control(self):
        wheels = [carla.WheelPhysicsControl(position=carla.Vector3D(x, y, 30.0), max_steer_angle=70.0)
                  for x, y in ((140, -80), (140, 80), (-140, -80), (-140, 80))]
        return type("P", (), {"wheels": wheels})()

    def set_autopilot(self, on, port=8000):
        self.autopilot = on

    def apply_control(self, control):
        self.control = control

    def is_at_traffic_light(self):
        return False

    def listen(self, callback):
        self.callback, self.is_listening = callback, True

    def stop(self):
        self.is_listening = False

    def destroy(self):
        self.alive = False
        self.world.actors.remove(self)


class _World:
    def __init__(self):
        self.map, self.actors, self.frame, self._id = _Map(), [], 0, 100
        self.settings = {"synchronous_mode": False, "fixed_delta_seconds": None}

    def next_id(self):
        self._id += 1
        return self._id

    def get_map(self):
        return self.map

    def get_settings(self):
        s = carla.WorldSettings()
        s.synchronous_mode, s.fixed_delta_seconds = self.settings["synchronous_mode"], self.settings["fixed_delta_seconds"]
        return s

    def apply_settings(self, s):
        self.settings = {"synchronous_mode": s.synchronous_mode, "fixed_delta_seconds": s.fixed_delta_seconds}

    def get_blueprint_library(self):
        return _Library()

    def spawn_actor(self, bp, transform, attach_to=None):
        self.actors.append(_Actor(self, bp, transform, attach_to))
        return self.actors[-1]

    def try_spawn_actor(self, bp, transform):
        taken = any(a.parent is None and a.rel.location.distance(transform.location) < 1 for a in self.actors)
        return None if taken else self.spawn_actor(bp, transform)

    def get_snapshot(self):
        return type("S", (), {"timestamp": type("T", (), {"elapsed_seconds": 7.0 + self.frame * DT})()})()

    def get_actors(self):
        actors = list(self.actors)
        return type("L", (), {"filter": lambda s, p: [a for a in actors if fnmatch.fnmatch(a.type_id, p)]})()

    def tick(self, seconds=0.0):
        self.frame += 1
        for a in self.actors:
            if a.parent is None and a.control is not None:
                a.speed = max(0.0, a.speed + (3.0 * a.control.throttle - 8.0 * a.control.brake) * DT)
                loc = a.rel.location
                a.rel = carla.Transform(carla.Location(loc.x + a.speed * DT, loc.y, loc.z), a.rel.rotation)
        for a in self.actors:
            if a.callback is not None and a.type_id == "sensor.lidar.ray_cast":
                a.callback(type("M", (), {"frame": self.frame, "transform": a.get_transform(),
                                          "raw_data": RAW_POINTS.tobytes()})())
        return self.frame


class _TrafficManager:
    sync, seed = False, None

    def set_synchronous_mode(self, on):
        self.sync = on

    def set_random_device_seed(self, seed):
        self.seed = seed


@pytest.fixture
def fake(monkeypatch):
    world, tm = _World(), _TrafficManager()
    client = type("C", (), {"get_world": lambda s: world, "get_trafficmanager": lambda s, port: tm,
                            "load_world": lambda s, town: pytest.fail("must not load")})()
    monkeypatch.setattr(carla_backend, "connect", lambda host, port, timeout: client)
    backend = CarlaBackend(town="Town05", n_collaborators=1, n_rsus=1, n_traffic=1, route_length=150.0)
    return backend, world, tm


def test_reset_builds_agents_route_and_first_tick(fake):
    backend, world, tm = fake
    with pytest.raises(RuntimeError, match="before reset"):
        backend.step({})
    info, tick = backend.reset("route", 4)
    assert world.settings == {"synchronous_mode": True, "fixed_delta_seconds": DT} and tm.sync and tm.seed == 4
    assert info.collaborators == ("cav_1", "rsu_1") and info.timeout == int(0.8 * info.route.length + 8)
    ego = next(a for a in world.actors if a.attributes["role_name"] == "hero")
    start = ego.get_location()
    np.testing.assert_allclose(info.route.waypoints[0], [start.x, -start.y])
    assert info.route.length == pytest.approx(min(150.0, 300.0 - start.x))
    assert list(tick.frame.observations) == ["ego", "cav_1", "rsu_1"] and tick.time == pytest.approx(DT)
    obs = tick.frame.ego
    np.testing.assert_array_equal(obs.points[:, 1], -RAW_POINTS[:, 1])
    np.testing.assert_allclose(obs.world_from_lidar[:3, 3], [start.x, -start.y, start.z + 2.5])
    rsu = tick.frame.observations["rsu_1"]
    assert rsu.is_infrastructure and rsu.world_from_lidar[2, 3] == pytest.approx(7.5)
    corner = rsu.world_from_lidar[:2, 3]
    assert np.abs(np.abs(corner - [105.0, -1.75]) - 5.0).max() < 1e-6  # a junction corner
    heading = rsu.world_from_lidar[:2, 0]
    np.testing.assert_allclose(heading, ([105.0, -1.75] - corner) / np.linalg.norm([105.0, -1.75] - corner), atol=1e-6)
    ids = tick.frame.objects.ids.tolist()
    assert ego.id not in ids and len(ids) == 2  # the collaborator and the traffic car, no sensors
    assert tick.ego.wheelbase == pytest.approx(2.8) and tick.ego.length == pytest.approx(4.8)


def test_step_controls_events_and_close(fake):
    backend, world, tm = fake
    backend.reset("route", 4)
    ego = next(a for a in world.actors if a.attributes["role_name"] == "hero")
    cav = next(a for a in world.actors if a.attributes["role_name"] == "cav_1")
    assert cav.autopilot
    tick = backend.step({"ego": Control(3.0, np.radians(35.0)), "cav_1": Control(-8.0, 0.0)})
    assert (ego.control.throttle, ego.control.steer, ego.control.brake) == pytest.approx((1.0, -0.5, 0.0))
    assert not cav.autopilot and cav.control.brake == pytest.approx(1.0)
    assert tick.time == pytest.approx(2 * DT) and tick.ego.speed == pytest.approx(3.0 * DT)
    assert tick.events == []
    with pytest.raises(ValueError, match="bogus"):
        backend.step({"bogus": Control()})
    # Into the neighbouring lane (not the route's): the metres driven there are reported.
    loc = ego.rel.location
    ego.rel = carla.Transform(carla.Location(loc.x, loc.y + 3.5, loc.z), ego.rel.rotation)
    backend.step({})
    tick = backend.step({})
    lane = [e for e in tick.events if e.kind is EventKind.OUTSIDE_ROUTE_LANES]
    assert len(lane) == 1 and lane[0].value == pytest.approx(tick.ego.speed * DT, rel=1e-5)
    collision_sensor = next(a for a in world.actors if a.type_id == "sensor.other.collision")
    other = type("O", (), {"id": cav.id, "type_id": cav.type_id})()
    collision_sensor.callback(type("E", (), {"other_actor": other, "transform": ego.get_transform()})())
    tick = backend.step({})
    assert [e.other for e in tick.events if e.kind is EventKind.COLLISION_VEHICLE] == [str(cav.id)]
    backend.close()
    assert world.actors == [] and world.settings["synchronous_mode"] is False and not tm.sync


def test_reset_twice_replaces_actors_and_unknown_family(fake):
    backend, world, _ = fake
    backend.reset("route", 4)
    n = len(world.actors)
    backend.reset("route", 4)
    assert len(world.actors) == n  # the first episode's actors were destroyed
    with pytest.raises(ConfigError, match="not implemented on CARLA"):
        backend.reset("occluded_crossing", 0)


def test_map_mismatch_names_both_maps(monkeypatch):
    world = _World()
    client = type("C", (), {"get_world": lambda s: world, "get_trafficmanager": lambda s, port: _TrafficManager()})()
    monkeypatch.setattr(carla_backend, "connect", lambda host, port, timeout: client)
    with pytest.raises(ConfigError, match="'Town05'.*'Town03'"):
        CarlaBackend(town="Town03", load_world=False)
