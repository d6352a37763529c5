"""The closed loop on a CARLA 0.9.16 server (the V2Xverse / CARLA leaderboard 1.0 setting).

:class:`CarlaBackend` implements :class:`coperception.drive.records.Backend`: it runs the world in
synchronous mode (``fixed_delta_seconds = 1 / rate_hz``, traffic manager synchronous), spawns the
ego, collaborating vehicles and road-side units (static LiDARs 7.5 m above a junction corner, as
V2Xverse's RoadSideUnit), reads every agent's LiDAR in step with the world and reports ticks in
the library convention (conversions in :mod:`coperception.drive.carla_convert`). Only the
generic ``"route"`` family exists on CARLA; the other families are the embedded simulator's.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from coperception.drive.carla_convert import (
    DEFAULT_LIMITS,
    control_to_vehicle_control,
    import_carla,
    lidar_measurement_to_points,
    location_to_xyz,
    max_steer_deg,
    transform_to_matrix,
)
from coperception.drive.carla_scene import (
    RSU_HEIGHT,
    CollisionMonitor,
    RedLightMonitor,
    SensorQueue,
    chain_route,
    check_town,
    is_outside_route_lanes,
    junction_corners,
    objects_from_actors,
    route_junction_boxes,
    route_xy,
    wheelbase_from_wheels,
)
from coperception.drive.dynamics import VehicleLimits
from coperception.drive.records import (
    Control,
    Event,
    EventKind,
    Route,
    ScenarioInfo,
    Tick,
    VehicleState,
    route_timeout,
)
from coperception.errors import ConfigError
from coperception.structures.records import AgentKind, AgentObservation, Frame

log = logging.getLogger(__name__)

#: Scenario families the CARLA backend builds (the embedded simulator has the others).
SUPPORTED_FAMILIES: tuple[str, ...] = ("route",)
EGO_ID = "ego"
_ROUTE_STEP = 2.0  # m between route waypoints (map.get_waypoint(...).next(2.0))
_START_HINT = ("start one from a CARLA 0.9.16 install with `./CarlaUE4.sh -RenderOffScreen "
               "-carla-rpc-port={port}`, or with docker: `docker run --rm --gpus all --net=host "
               "carlasim/carla:0.9.16 bash CarlaUE4.sh -RenderOffScreen -carla-rpc-port={port}`")


class CarlaUnavailable(ConfigError):
    """No CARLA server answered at the configured address (or it stopped answering)."""


@dataclass(frozen=True)
class LidarSpec:
    """A ``sensor.lidar.ray_cast``: beams, range (m), points per second, vertical field of view
    (deg) and mount height (m above the vehicle's origin; RSUs use :data:`RSU_HEIGHT`)."""

    channels: int = 32
    range: float = 100.0
    points_per_second: int = 560_000
    upper_fov: float = 10.0
    lower_fov: float = -30.0
    mount_z: float = 2.5


def parse_address(text: str) -> tuple[str, int]:
    """``"host:port"`` -> ``(host, port)``; ValueError naming the text when malformed."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected a CARLA address 'host:port', got {text!r}")
    return host, int(port)


def check_family(family: str) -> None:
    """ConfigError unless the CARLA backend builds scenario family ``family``."""
    if family not in SUPPORTED_FAMILIES:
        raise ConfigError(f"scenario family {family!r} is not implemented on CARLA; CARLA implements "
                          f"{', '.join(SUPPORTED_FAMILIES)} (the embedded simulator implements the others)")


def connect(host: str, port: int, timeout: float) -> Any:
    """A ``carla.Client`` that has answered, or :class:`CarlaUnavailable` after ``timeout`` s."""
    carla = import_carla()
    client = carla.Client(host, port)
    client.set_timeout(timeout)
    try:
        server = client.get_server_version()
    except RuntimeError as exc:
        raise CarlaUnavailable(f"no CARLA server answered at {host}:{port} within {timeout:g} s ({exc}); "
                               + _START_HINT.format(port=port)) from exc
    if server != client.get_client_version():
        log.warning("CARLA server %s differs from the client %s", server, client.get_client_version())
    return client


class CarlaBackend:
    """A :class:`~coperception.drive.records.Backend` on a CARLA 0.9.16 server (see module doc).

    town: map to run (None keeps the server's); load_world: load ``town`` when the server runs
    another map (else ConfigError); n_collaborators / n_rsus / n_traffic: connected vehicles,
    road-side units at the route's junctions, autopilot background vehicles; route_length (m);
    gt_range: ground-truth objects within this planar distance of the ego (m).
    """

    def __init__(self, host: str = "localhost", port: int = 2000, timeout: float = 10.0,
                 rate_hz: float = 20.0, town: str | None = None, *, load_world: bool = True,
                 n_collaborators: int = 1, n_rsus: int = 1, n_traffic: int = 10,
                 route_length: float = 200.0, gt_range: float = 100.0, tm_port: int = 8000,
                 ego_blueprint: str = "vehicle.lincoln.mkz_2020", lidar: LidarSpec | None = None,
                 limits: VehicleLimits = DEFAULT_LIMITS) -> None:
        for name, value in (("timeout", timeout), ("rate_hz", rate_hz), ("route_length", route_length),
                            ("gt_range", gt_range)):
            if not value > 0:
                raise ConfigError(f"CarlaBackend {name} must be > 0, got {value}")
        for name, value in (("n_collaborators", n_collaborators), ("n_rsus", n_rsus), ("n_traffic", n_traffic)):
            if value < 0:
                raise ConfigError(f"CarlaBackend {name} must be >= 0, got {value}")
        if not 0 < port < 65536:
            raise ConfigError(f"CarlaBackend port must be in 1..65535, got {port}")
        self.rate_hz = float(rate_hz)
        self.address = f"{host}:{port}"
        self._timeout = float(timeout)
        self._opts = {"n_collaborators": n_collaborators, "n_rsus": n_rsus, "n_traffic": n_traffic,
                      "route_length": route_length, "gt_range": gt_range, "ego_blueprint": ego_blueprint}
        self._lidar, self._limits, self._tm_port = lidar or LidarSpec(), limits, tm_port
        self._carla = import_carla()
        self._client = connect(host, port, timeout)
        world = self._client.get_world()
        if check_town(world.get_map().name, town, load_world):
            log.info("loading %s on the CARLA server at %s", town, self.address)
            world = self._client.load_world(town)
        self._world = world
        self._map = world.get_map()
        self._original_settings = world.get_settings()
        self._tm = self._client.get_trafficmanager(tm_port)
        self._actors: list[Any] = []
        self._clear_episode()

    # --- Backend protocol ---------------------------------------------------------------------

    def reset(self, family: str, seed: int) -> tuple[ScenarioInfo, Tick]:
        check_family(family)
        self._destroy_actors()
        self._clear_episode()
        self._synchronous(True, seed)
        rng = np.random.default_rng(seed)
        spawns = list(self._map.get_spawn_points())
        free = [int(i) for i in rng.permutation(len(spawns))]
        ego, start = self._spawn_vehicle(self._opts["ego_blueprint"], spawns, free, EGO_ID, rng, hero=True)
        # A synchronous world reports a new actor's pose only after the next tick: use the spawn point.
        chain = chain_route(self._map.get_waypoint(start.location), self._opts["route_length"],
                            _ROUTE_STEP, lambda n: int(rng.integers(n)))
        route = Route(route_xy(chain))
        self._route_lanes = {(w.road_id, w.lane_id) for w in chain if not w.is_junction}
        self._spawn_collaborators(spawns, free, route, rng)
        self._spawn_rsus(route_junction_boxes(chain), rng)
        for k in range(self._opts["n_traffic"]):
            if free:
                self._spawn_vehicle("vehicle.*", spawns, free, f"traffic_{k}", rng, autopilot=True, agent=False)
        collision = self._spawn(self._world.get_blueprint_library().find("sensor.other.collision"),
                                self._carla.Transform(), attach_to=ego)
        collision.listen(self._collisions.on_collision)
        self._ego_wheelbase = wheelbase_from_wheels(ego.get_physics_control().wheels, ego.bounding_box.extent.x)
        self._scenario = f"carla_{family}_{seed}"
        self._t0 = self._world.get_snapshot().timestamp.elapsed_seconds
        tick = self._observe(self._tick())
        collaborators = tuple(a for a in self._agents if a != EGO_ID)
        return ScenarioInfo(family, seed, route, route_timeout(route.length), collaborators), tick

    def step(self, controls: Mapping[str, Control]) -> Tick:
        if self._ego is None:
            raise RuntimeError("CarlaBackend.step called before reset")
        unknown = sorted(set(controls) - set(self._vehicles))
        if unknown:
            raise ValueError(f"controls name unknown vehicles {unknown}; known: {sorted(self._vehicles)}")
        for agent_id, control in controls.items():
            vehicle = self._vehicles[agent_id]
            if agent_id in self._autopilot:  # a named vehicle is driven by the caller from now on
                vehicle.set_autopilot(False, self._tm_port)
                self._autopilot.discard(agent_id)
            vehicle.apply_control(control_to_vehicle_control(control, self._max_steer[agent_id], self._limits))
        return self._observe(self._tick())

    def close(self) -> None:
        self._destroy_actors()
        self._clear_episode()
        try:
            self._synchronous(False, 0)
        except RuntimeError as exc:  # the server is gone; nothing left to restore
            log.warning("could not restore the CARLA world settings at %s: %s", self.address, exc)

    def __enter__(self) -> CarlaBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- world set-up -------------------------------------------------------------------------

    def _clear_episode(self) -> None:
        self._ego: Any = None
        self._agents: dict[str, tuple[AgentKind, SensorQueue, Any]] = {}
        self._vehicles: dict[str, Any] = {}
        self._max_steer: dict[str, float] = {}
        self._autopilot: set[str] = set()
        self._route_lanes: set[tuple[int, int]] = set()
        self._collisions = CollisionMonitor()
        self._red_lights = RedLightMonitor(red_state=self._carla.TrafficLightState.Red)
        self._prev_xy: np.ndarray | None = None
        self._ticks = 0
        self._t0 = 0.0
        self._scenario = ""
        self._ego_wheelbase = VehicleState(0.0, 0.0, 0.0, 0.0).wheelbase

    def _synchronous(self, on: bool, seed: int) -> None:
        settings = self._world.get_settings() if on else self._original_settings
        if on:
            settings.synchronous_mode = True
            settings.fixed_delta_seconds = 1.0 / self.rate_hz
        self._world.apply_settings(settings)
        self._tm.set_synchronous_mode(on)
        if on:
            self._tm.set_random_device_seed(int(seed))

    def _spawn(self, blueprint: Any, transform: Any, attach_to: Any = None) -> Any:
        actor = self._world.spawn_actor(blueprint, transform, attach_to=attach_to)
        self._actors.append(actor)
        return actor

    def _spawn_vehicle(self, pattern: str, spawns: list, free: list[int], agent_id: str,
                       rng: np.random.Generator, hero: bool = False, autopilot: bool = False,
                       agent: bool = True) -> tuple[Any, Any]:
        """Spawn a vehicle of blueprint ``pattern`` at the first free spawn point that is clear;
        returns the actor and that spawn point."""
        library = self._world.get_blueprint_library()
        if pattern.endswith("*"):  # background and collaborating traffic: cars only (no bikes)
            candidates = [bp for bp in library.filter(pattern) if bp.has_attribute("number_of_wheels")
                          and bp.get_attribute("number_of_wheels").as_int() == 4]
        else:
            candidates = [library.find(pattern)]
        bp = candidates[int(rng.integers(len(candidates)))]
        bp.set_attribute("role_name", "hero" if hero else agent_id)
        while free:
            spawn = spawns[free.pop(0)]
            actor = self._world.try_spawn_actor(bp, spawn)
            if actor is not None:
                break
        else:
            raise ConfigError(f"no free spawn point left on {self._map.name} for {agent_id!r}")
        self._actors.append(actor)
        if hero:
            self._ego = actor
        if autopilot:
            actor.set_autopilot(True, self._tm_port)
            self._autopilot.add(agent_id)
        if agent:
            self._vehicles[agent_id] = actor
            self._max_steer[agent_id] = max_steer_deg(actor)
            self._attach_lidar(agent_id, AgentKind.VEHICLE, parent=actor)
        return actor, spawn

    def _spawn_collaborators(self, spawns: list, free: list[int], route: Route, rng: np.random.Generator) -> None:
        """Connected vehicles at the free spawn points closest to the route, on autopilot."""
        dist = {i: route.project(location_to_xyz(spawns[i].location)[:2])[1] for i in free}
        for k in range(self._opts["n_collaborators"]):
            if not free:
                break
            free.sort(key=dist.__getitem__)
            self._spawn_vehicle("vehicle.*", spawns, free, f"cav_{k + 1}", rng, autopilot=True)

    def _spawn_rsus(self, junction_boxes: list, rng: np.random.Generator) -> None:
        """A LiDAR :data:`RSU_HEIGHT` m above a random corner of each of the first junctions,
        heading to the junction centre."""
        for k, bbox in enumerate(junction_boxes[: self._opts["n_rsus"]]):
            corner = junction_corners(bbox)[int(rng.integers(4))]
            centre = location_to_xyz(bbox.location)[:2]
            ground = self._map.get_waypoint(self._carla.Location(x=float(corner[0]), y=float(-corner[1]),
                                                                 z=float(bbox.location.z)))
            z = ground.transform.location.z + RSU_HEIGHT
            yaw = float(np.degrees(np.arctan2(*(centre - corner)[::-1])))
            transform = self._carla.Transform(self._carla.Location(x=float(corner[0]), y=float(-corner[1]), z=z),
                                              self._carla.Rotation(yaw=-yaw))
            self._attach_lidar(f"rsu_{k + 1}", AgentKind.INFRASTRUCTURE, transform=transform)

    def _attach_lidar(self, agent_id: str, kind: AgentKind, parent: Any = None, transform: Any = None) -> None:
        spec = self._lidar
        bp = self._world.get_blueprint_library().find("sensor.lidar.ray_cast")
        for name, value in (("channels", spec.channels), ("range", spec.range),
                            ("points_per_second", spec.points_per_second), ("rotation_frequency", self.rate_hz),
                            ("upper_fov", spec.upper_fov), ("lower_fov", spec.lower_fov)):
            bp.set_attribute(name, str(value))
        if transform is None:
            transform = self._carla.Transform(self._carla.Location(z=spec.mount_z))
        sensor = self._spawn(bp, transform, attach_to=parent)
        sensors = SensorQueue()
        sensor.listen(sensors.put)
        self._agents[agent_id] = (kind, sensors, parent)

    def _destroy_actors(self) -> None:
        for actor in reversed(self._actors):  # sensors (spawned after their parents) first
            try:
                if hasattr(actor, "is_listening") and actor.is_listening:
                    actor.stop()
                actor.destroy()
            except RuntimeError as exc:
                log.warning("could not destroy CARLA actor %s: %s", actor.id, exc)
        self._actors = []

    # --- one tick -----------------------------------------------------------------------------

    def _tick(self) -> int:
        try:
            return int(self._world.tick(self._timeout))
        except RuntimeError as exc:
            raise CarlaUnavailable(f"the CARLA server at {self.address} stopped answering ({exc}); "
                                   + _START_HINT.format(port=self.address.rsplit(':', 1)[1])) from exc

    def _observe(self, frame: int) -> Tick:
        time = float(self._world.get_snapshot().timestamp.elapsed_seconds - self._t0)
        observations = {}
        for agent_id, (kind, sensors, parent) in self._agents.items():
            m = sensors.get(frame, self._timeout)
            speed = 0.0 if parent is None else float(np.linalg.norm(location_to_xyz(parent.get_velocity())))
            observations[agent_id] = AgentObservation(agent_id, kind, transform_to_matrix(m.transform),
                                                      lidar_measurement_to_points(m), speed=speed,
                                                      lidar_channels=self._lidar.channels)
        ego = self._ego_state()
        everyone = self._world.get_actors()
        actors = list(everyone.filter("vehicle.*")) + list(everyone.filter("walker.*"))
        objects = objects_from_actors(actors, ego.xy, self._opts["gt_range"], exclude=(self._ego.id,))
        frame_record = Frame(self._scenario, self._ticks, EGO_ID, observations, objects)
        front = ego.xy + 0.5 * ego.length * np.array([np.cos(ego.yaw), np.sin(ego.yaw)])
        light = self._ego.get_traffic_light() if self._ego.is_at_traffic_light() else None
        events = self._collisions.collect(time) + self._red_lights.update(time, front, light)
        events += self._lane_events(time, ego.xy)
        self._ticks += 1
        return Tick(time, frame_record, ego, events, self._red_lights.signals(front, ego.yaw))

    def _ego_state(self) -> VehicleState:
        transform = self._ego.get_transform()
        m = transform_to_matrix(transform)
        yaw = float(np.arctan2(m[1, 0], m[0, 0]))
        speed = float(np.dot(location_to_xyz(self._ego.get_velocity()), m[:3, 0]))
        extent = self._ego.bounding_box.extent
        return VehicleState(float(m[0, 3]), float(m[1, 3]), yaw, max(speed, 0.0), length=2 * extent.x,
                            width=2 * extent.y, wheelbase=self._ego_wheelbase)

    def _lane_events(self, time: float, xy: np.ndarray) -> list[Event]:
        """Metres driven outside the route's lanes during the interval (one event per tick)."""
        prev, self._prev_xy = self._prev_xy, xy
        if prev is None:
            return []
        waypoint = self._map.get_waypoint(self._ego.get_location(), project_to_road=False,
                                          lane_type=self._carla.LaneType.Any)
        dist = float(np.linalg.norm(xy - prev))
        if dist > 0 and is_outside_route_lanes(waypoint, self._route_lanes, self._carla.LaneType.Driving):
            return [Event(EventKind.OUTSIDE_ROUTE_LANES, time, xy=(float(xy[0]), float(xy[1])), value=dist)]
        return []
