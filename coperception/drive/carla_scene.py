"""Pieces of the CARLA backend that read a CARLA world but need no connection to build or test:
route chaining along the map's waypoints, road-side-unit placement, ground-truth objects, sensor
synchronisation and the leaderboard's infraction monitors (collisions, red lights, lanes).

They follow the CARLA leaderboard 1.0 criteria (``CollisionTest``, ``RunningRedLightTest``,
``OutsideRouteLanesTest``) as used by V2Xverse, and take any objects with CARLA's attribute names
(real client objects on a server, small stand-ins in tests).
"""

from __future__ import annotations

import logging
import queue
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from coperception.drive.carla_convert import (
    bounding_box_to_box,
    collision_kind,
    location_to_xyz,
    object_class,
)
from coperception.drive.records import Event, EventKind
from coperception.errors import ConfigError
from coperception.structures.records import ObjectSet

log = logging.getLogger(__name__)

#: Height (m) of a road-side unit's LiDAR above the road, as V2Xverse's RoadSideUnit mounts it.
RSU_HEIGHT = 7.5


def chain_route(start: Any, length: float, step: float, choose: Callable[[int], int]) -> list[Any]:
    """Waypoints from ``start`` following ``waypoint.next(step)`` for about ``length`` metres.

    Where the road branches (junctions) ``choose(n)`` picks one of the ``n`` successors; the
    chain stops early at a dead end.
    """
    if length <= 0 or step <= 0:
        raise ValueError(f"length and step must be > 0, got length={length}, step={step}")
    chain = [start]
    for _ in range(int(np.ceil(length / step))):
        successors = list(chain[-1].next(step))
        if not successors:
            break
        k = choose(len(successors)) if len(successors) > 1 else 0
        if not 0 <= k < len(successors):
            raise ValueError(f"choose({len(successors)}) returned {k}, outside 0..{len(successors) - 1}")
        chain.append(successors[k])
    return chain


def route_xy(waypoints: Sequence[Any]) -> np.ndarray:
    """(N, 2) library-frame xy of waypoints, consecutive duplicates dropped."""
    xy = np.array([location_to_xyz(w.transform.location)[:2] for w in waypoints]).reshape(-1, 2)
    keep = np.concatenate([[True], np.linalg.norm(np.diff(xy, axis=0), axis=1) > 1e-6])
    return xy[keep]


def junction_corners(junction_bbox: Any) -> np.ndarray:
    """(4, 2) library-frame xy of a junction bounding box's corners (CARLA junction boxes are
    axis-aligned in the world, ``location`` is the centre and ``extent`` half sizes)."""
    c = location_to_xyz(junction_bbox.location)
    ex, ey = junction_bbox.extent.x, junction_bbox.extent.y
    return c[:2] + np.array([[ex, ey], [ex, -ey], [-ex, -ey], [-ex, ey]])


def route_junction_boxes(waypoints: Iterable[Any]) -> list[Any]:
    """Bounding boxes of the junctions the route passes, in route order, each once."""
    seen: dict[int, Any] = {}
    for w in waypoints:
        if w.is_junction:
            junction = w.get_junction()
            seen.setdefault(junction.id, junction.bounding_box)
    return list(seen.values())


def objects_from_actors(actors: Iterable[Any], center_xy: np.ndarray, max_range: float,
                        exclude: Iterable[int] = ()) -> ObjectSet:
    """Ground truth (world frame) of the vehicles and walkers within ``max_range`` m (planar) of
    ``center_xy``; actors that are not objects (sensors, props) and ids in ``exclude`` are skipped."""
    skip = set(exclude)
    boxes, ids, classes, speeds = [], [], [], []
    for actor in actors:
        if actor.id in skip:
            continue
        cls = object_class(actor.type_id, dict(actor.attributes))
        if cls is None:
            continue
        box = bounding_box_to_box(actor.get_transform(), actor.bounding_box)
        if np.hypot(*(box[:2] - center_xy)) > max_range:
            continue
        boxes.append(box)
        ids.append(actor.id)
        classes.append(cls)
        speeds.append(float(np.linalg.norm(location_to_xyz(actor.get_velocity()))))
    if not boxes:
        return ObjectSet.empty()
    return ObjectSet(np.array(boxes), np.array(ids), np.array(classes), np.array(speeds))


class SensorQueue:
    """Measurements of one sensor, read in step with the synchronous world (CARLA's
    ``synchronous_mode.py`` pattern): ``listen`` puts, :meth:`get` returns the one of a frame."""

    def __init__(self) -> None:
        self._queue: queue.Queue = queue.Queue()

    def put(self, data: Any) -> None:
        self._queue.put(data)

    def get(self, frame: int, timeout: float) -> Any:
        """The measurement of simulator frame ``frame``; older ones are dropped."""
        while True:
            try:
                data = self._queue.get(timeout=timeout)
            except queue.Empty:
                raise TimeoutError(f"no sensor data for frame {frame} within {timeout} s") from None
            if data.frame == frame:
                return data
            if data.frame > frame:
                raise RuntimeError(f"sensor skipped frame {frame} (got frame {data.frame})")


class CollisionMonitor:
    """Turns the collision sensor's per-physics-frame hits into one event per contact: a hit with
    an actor counts again only after a tick without touching it. Hits arrive on the client's
    sensor thread, hence the queue; one reported just after a tick is counted at the next."""

    def __init__(self) -> None:
        self._touching: set[int] = set()
        self._pending: queue.SimpleQueue = queue.SimpleQueue()

    def on_collision(self, event: Any) -> None:
        """Callback of ``sensor.other.collision``."""
        other = event.other_actor
        xy = location_to_xyz(event.transform.location)[:2]
        self._pending.put((int(other.id), str(other.type_id), (float(xy[0]), float(xy[1]))))

    def collect(self, time: float) -> list[Event]:
        """Events of the hits since the last call, stamped ``time``."""
        events, touching = [], set()
        while not self._pending.empty():
            other_id, type_id, xy = self._pending.get()
            if other_id not in self._touching and other_id not in touching:
                events.append(Event(collision_kind(type_id), time, other=str(other_id), xy=xy))
            touching.add(other_id)
        self._touching = touching
        return events


def crossed_line(prev_xy: np.ndarray, cur_xy: np.ndarray, line_xy: np.ndarray, line_dir: np.ndarray,
                 half_width: float) -> bool:
    """Whether a point moving from ``prev_xy`` to ``cur_xy`` crossed a stop line forwards: the line
    passes through ``line_xy`` across the lane (``line_dir`` is the lane's driving direction) and
    is ``2 * half_width`` wide."""
    d = np.asarray(line_dir, dtype=np.float64) / np.linalg.norm(line_dir)
    before = float(np.dot(np.asarray(prev_xy) - line_xy, d))
    after = float(np.dot(np.asarray(cur_xy) - line_xy, d))
    if not (before < 0.0 <= after):
        return False
    t = -before / (after - before)
    hit = np.asarray(prev_xy) + t * (np.asarray(cur_xy) - np.asarray(prev_xy))
    offset = hit - line_xy
    lateral = abs(float(d[0] * offset[1] - d[1] * offset[0]))
    return lateral <= half_width


@dataclass
class StopLine:
    """One stop line of a traffic light: a point on it, the lane direction, half the lane width."""

    xy: np.ndarray
    direction: np.ndarray
    half_width: float

    @staticmethod
    def from_waypoint(waypoint: Any) -> StopLine:
        m = waypoint.transform
        yaw = -np.radians(m.rotation.yaw)
        return StopLine(location_to_xyz(m.location)[:2], np.array([np.cos(yaw), np.sin(yaw)]),
                        0.5 * float(waypoint.lane_width))


@dataclass
class RedLightMonitor:
    """Red-light infractions (leaderboard ``RunningRedLightTest``): the ego's front crossing a
    stop line of the traffic light that governs it while that light is red, once per light.

    red_state: the light state that counts as red (``carla.TrafficLightState.Red``); forget_at:
    a light whose stop lines are all farther than this (m) from the ego is dropped.
    """

    red_state: Any
    forget_at: float = 50.0
    _light: Any = None
    _reported: set[int] = field(default_factory=set)
    _prev_front: np.ndarray | None = None

    def _lines(self) -> list[StopLine]:
        return [StopLine.from_waypoint(w) for w in self._light.get_stop_waypoints()]

    def update(self, time: float, front_xy: np.ndarray, light: Any) -> list[Event]:
        """``light``: the traffic light the ego is at now (``vehicle.get_traffic_light()`` when
        ``is_at_traffic_light()``), else None; the last one is kept until passed."""
        front_xy = np.asarray(front_xy, dtype=np.float64)
        if light is not None:
            self._light = light
        events = []
        if self._light is not None and self._prev_front is not None:
            lines = self._lines()
            if any(crossed_line(self._prev_front, front_xy, s.xy, s.direction, s.half_width) for s in lines):
                if self._light.get_state() == self.red_state and self._light.id not in self._reported:
                    self._reported.add(self._light.id)
                    events.append(Event(EventKind.RED_LIGHT, time, other=str(self._light.id),
                                        xy=(float(front_xy[0]), float(front_xy[1]))))
                self._light = None  # past this light; the next one is picked up when reached
            elif all(np.hypot(*(s.xy - front_xy)) > self.forget_at for s in lines):
                self._light = None
        self._prev_front = front_xy
        return events

    def signals(self, front_xy: np.ndarray, heading: float) -> np.ndarray:
        """(K, 3) ``x, y, is_red`` of the current light's stop lines ahead of the ego, facing its way."""
        if self._light is None:
            return np.zeros((0, 3))
        is_red = float(self._light.get_state() == self.red_state)
        fwd = np.array([np.cos(heading), np.sin(heading)])
        rows = [[*s.xy, is_red] for s in self._lines()
                if np.dot(s.xy - front_xy, fwd) > 0 and np.dot(s.direction, fwd) > 0]
        return np.array(rows, dtype=np.float64).reshape(-1, 3)


def is_outside_route_lanes(waypoint: Any | None, route_lanes: set[tuple[int, int]],
                           driving_lane_type: Any) -> bool:
    """Whether the ego is off the route's lanes: off the map (``waypoint`` None), on a lane that is
    not a driving lane (sidewalk, shoulder, ...), or on a driving lane the route does not use
    (e.g. the opposite direction); inside junctions any driving lane counts as on route."""
    if waypoint is None or waypoint.lane_type != driving_lane_type:
        return True
    if waypoint.is_junction:
        return False
    return (waypoint.road_id, waypoint.lane_id) not in route_lanes


def wheelbase_from_wheels(wheels: Sequence[Any], half_length: float) -> float:
    """Axle distance (m) from a vehicle's ``WheelPhysicsControl`` list (front pair 0-1, rear pair
    2-3; ``position`` is a world location in centimetres). Outside 0.3..1.0 of the vehicle length
    (an unusual blueprint) it falls back to 0.6 of the length, with a warning."""
    if len(wheels) < 4:
        raise ValueError(f"expected 4 wheels, got {len(wheels)}")
    front = (location_to_xyz(wheels[0].position) + location_to_xyz(wheels[1].position)) / 2
    rear = (location_to_xyz(wheels[2].position) + location_to_xyz(wheels[3].position)) / 2
    base = float(np.linalg.norm(front - rear)) / 100.0
    length = 2.0 * half_length
    if not 0.3 * length <= base <= length:
        log.warning("wheelbase %.2f m implausible for a %.2f m vehicle; using %.2f m", base, length, 0.6 * length)
        return 0.6 * length
    return base


def town_name(map_name: str) -> str:
    """``"Carla/Maps/Town05"`` or ``"Town05_Opt"`` -> ``"Town05"``-style short name for comparison."""
    return map_name.rsplit("/", 1)[-1]


def check_town(current: str, requested: str | None, load_world: bool) -> bool:
    """Whether the requested town must be loaded; ConfigError when it differs and loading is off."""
    if requested is None or town_name(current) == town_name(requested):
        return False
    if not load_world:
        raise ConfigError(f"CARLA server runs map {town_name(current)!r} but town={requested!r} was "
                          f"requested and load_world is False (pass load_world=True or town=None)")
    return True
