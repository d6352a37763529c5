"""Records the closed loop passes between its parts: controls, vehicle states, routes, events, ticks.

One tick of the loop::

    backend.step(controls) -> Tick   # every agent's sensing + ground truth + events of the interval
    perception(tick)       -> list of perceived objects (ego frame / world frame)
    agent.act(tick, objs)  -> Control for the ego (and for scripted collaborators)

Units and frames follow the library convention: right-handed world frame, metres, radians,
seconds; yaw is counter-clockwise from +x. Backends convert at their edge (CARLA is left-handed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Mapping, Protocol, runtime_checkable

import numpy as np

from coperception.structures.records import Frame


@dataclass(frozen=True)
class Control:
    """What a controlled vehicle is told for the next interval.

    accel: commanded longitudinal acceleration, m/s^2 (negative = braking).
    steer: front-wheel steering angle, rad (positive turns left / counter-clockwise).
    """

    accel: float = 0.0
    steer: float = 0.0


@dataclass(frozen=True)
class VehicleState:
    """A vehicle's planar state: rear-axle-independent centre pose and speed.

    x, y: box centre in the world (m); yaw: heading (rad); speed: m/s along the heading (>= 0);
    length, width: footprint (m); wheelbase: axle distance (m) of the kinematic bicycle.
    """

    x: float
    y: float
    yaw: float
    speed: float
    length: float = 4.6
    width: float = 1.9
    wheelbase: float = 2.8

    @property
    def xy(self) -> np.ndarray:
        return np.array([self.x, self.y])

    def box(self, z: float = 0.8, height: float = 1.6) -> np.ndarray:
        """(7,) ``[x, y, z, l, w, h, yaw]`` box of the vehicle."""
        return np.array([self.x, self.y, z, self.length, self.width, height, self.yaw])


@dataclass(frozen=True)
class Route:
    """A route to drive: a polyline in the world frame, start to goal.

    waypoints: (N, 2) metres, N >= 2, consecutive points distinct.
    """

    waypoints: np.ndarray

    def __post_init__(self) -> None:
        pts = np.asarray(self.waypoints, dtype=np.float64)
        if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) < 2:
            raise ValueError(f"route waypoints must be (N >= 2, 2), got shape {pts.shape}")
        if not np.isfinite(pts).all():
            raise ValueError("route waypoints must be finite")
        object.__setattr__(self, "waypoints", pts)

    @property
    def cumulative(self) -> np.ndarray:
        """(N,) arc length at each waypoint (m), starting at 0."""
        return np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(self.waypoints, axis=0), axis=1))])

    @property
    def length(self) -> float:
        return float(self.cumulative[-1])

    def project(self, xy: np.ndarray) -> tuple[float, float]:
        """Arc length ``s`` of the closest route point to ``xy`` and the distance to it (m)."""
        p = np.asarray(xy, dtype=np.float64)
        a, b = self.waypoints[:-1], self.waypoints[1:]
        ab = b - a
        t = np.clip(np.einsum("ij,ij->i", p - a, ab) / np.maximum(np.einsum("ij,ij->i", ab, ab), 1e-12), 0, 1)
        closest = a + t[:, None] * ab
        d = np.linalg.norm(closest - p, axis=1)
        k = int(np.argmin(d))
        return float(self.cumulative[k] + t[k] * np.linalg.norm(ab[k])), float(d[k])

    def point_at(self, s: float) -> np.ndarray:
        """(2,) the route point at arc length ``s`` (clamped to the route)."""
        cum = self.cumulative
        s = float(np.clip(s, 0.0, cum[-1]))
        k = int(np.clip(np.searchsorted(cum, s, side="right") - 1, 0, len(cum) - 2))
        t = (s - cum[k]) / max(cum[k + 1] - cum[k], 1e-12)
        return self.waypoints[k] + t * (self.waypoints[k + 1] - self.waypoints[k])


class EventKind(str, Enum):
    """Infractions and terminations, named as the CARLA leaderboard names its criteria."""

    COLLISION_PEDESTRIAN = "collision_pedestrian"
    COLLISION_VEHICLE = "collision_vehicle"
    COLLISION_STATIC = "collision_static"  # layout: buildings, poles, parked objects
    RED_LIGHT = "red_light"
    STOP_SIGN = "stop_sign"
    OUTSIDE_ROUTE_LANES = "outside_route_lanes"  # distance driven outside the route's lanes
    ROUTE_DEVIATION = "route_deviation"
    BLOCKED = "agent_blocked"
    TIMEOUT = "route_timeout"


@dataclass(frozen=True)
class Event:
    """One infraction or termination seen during a tick.

    kind: what happened; time: simulation seconds; other: the other party's id ("" if none);
    xy: (2,) where (world, m); value: a quantity where the kind has one (metres driven outside
    the route's lanes for OUTSIDE_ROUTE_LANES), else 0.
    """

    kind: EventKind
    time: float
    other: str = ""
    xy: tuple[float, float] = (0.0, 0.0)
    value: float = 0.0


@dataclass
class Tick:
    """What the backend reports after one interval.

    time: simulation seconds since reset; frame: every agent's sensing and the ground truth
    (world frame; ``frame.ego_id`` is the driven ego); ego: the ego's state; events: infractions
    and terminations that happened during the interval (collisions counted once per contact);
    signals: traffic-light stop lines ahead of the ego, (K, 3) ``x, y, is_red`` (world).
    """

    time: float
    frame: Frame
    ego: VehicleState
    events: list[Event] = field(default_factory=list)
    signals: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))


@dataclass(frozen=True)
class ScenarioInfo:
    """A scenario as reset: family name, seed, the ego's route, the time limit (s), and the ids
    of the collaborating agents (vehicles and road-side units)."""

    family: str
    seed: int
    route: Route
    timeout: float
    collaborators: tuple[str, ...] = ()


def route_timeout(route_length: float) -> float:
    """V2Xverse's route time limit: 0.8 s per metre of route plus 8 s (the stock leaderboard uses 0.4)."""
    return float(int(0.8 * route_length + 8.0))


@runtime_checkable
class Backend(Protocol):
    """A world the closed loop drives in (embedded simulator or CARLA).

    ``reset(family, seed)`` builds a scenario and returns it with the first tick;
    ``step(controls)`` advances one interval (``1 / rate_hz`` s) with each controlled vehicle's
    control (agent id -> Control; vehicles not named keep their own driver) and returns the tick;
    ``close()`` releases the world (a CARLA server's actors, threads).
    """

    rate_hz: float

    def reset(self, family: str, seed: int) -> tuple[ScenarioInfo, Tick]: ...

    def step(self, controls: Mapping[str, Control]) -> Tick: ...

    def close(self) -> None: ...
