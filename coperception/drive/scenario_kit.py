"""Building blocks of the closed-loop scenario families (:mod:`coperception.drive.scenarios`).

Geometry is written in a junction frame seen from the ego's approach: ``a`` metres to the ego's
right, ``b`` metres forward, origin at the junction centre (:class:`JunctionFrame`), so that a
family is one layout whichever leg the seed puts the ego on. Scripted actors start as in the CARLA
scenario runner: they wait until the ego would reach the conflict point no later than they would
(time to reach, :class:`Trigger`), so that an ego at any speed meets them there.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from coperception.drive.events import boxes_overlap
from coperception.drive.records import Route, VehicleState
from coperception.errors import ConfigError
from coperception.sim.config import TownConfig
from coperception.sim.driven import DrivenSimulation, PathActor
from coperception.sim.roads import SIDE_VECTORS, SIDES, RoadNetwork
from coperception.sim.traffic import B_MAX

COMFORT_DECEL = 2.5  # m/s^2 an ego is assumed to brake at before a turn


@dataclass(frozen=True)
class JunctionFrame:
    """Junction ``grid`` (i, j) with centre ``center`` (2,), the ego arriving from leg ``side``."""

    grid: tuple[int, int]
    center: np.ndarray
    side: int

    @property
    def forward(self) -> np.ndarray:
        return -SIDE_VECTORS[self.side]

    @property
    def right(self) -> np.ndarray:
        f = self.forward
        return np.array([f[1], -f[0]])

    def world(self, a: float, b: float) -> np.ndarray:
        return self.center + a * self.right + b * self.forward

    def yaw(self, da: float, db: float) -> float:
        d = da * self.right + db * self.forward
        return float(np.arctan2(d[1], d[0]))

    def leg(self, rel: str) -> str:
        """Compass letter of the leg ``rel`` (back / ahead / right / left) seen from the ego."""
        straight = (self.side + 2) % 4
        return SIDES[{"back": self.side, "ahead": straight, "right": (straight + 1) % 4,
                      "left": (straight - 1) % 4}[rel]]

    def corner(self, sa: int, sb: int) -> str:
        """Compass name of the junction corner on side ``sa`` (+1 right) and ``sb`` (+1 ahead)."""
        v = sa * self.right + sb * self.forward
        return ("N" if v[1] > 0 else "S") + ("E" if v[0] > 0 else "W")


def four_leg_junction(town: TownConfig, side: int) -> JunctionFrame:
    """The central junction of a town with at least 3 x 3 roads (every inner junction has 4 legs)."""
    if town.roads_x < 3 or town.roads_y < 3:
        raise ConfigError(f"town.roads_x/roads_y: the scenario needs a junction with 4 legs, which a "
                          f"{town.roads_x}x{town.roads_y} grid does not have (need >= 3x3)")
    i, j = town.roads_x // 2, town.roads_y // 2
    center = np.array([(i - (town.roads_x - 1) / 2.0) * town.block_size, (j - (town.roads_y - 1) / 2.0) * town.block_size])
    return JunctionFrame((i, j), center, side)


def need_segment(town: TownConfig, metres: float, what: str) -> None:
    if town.segment_length < metres:
        raise ConfigError(f"town.block_size: {what} needs {metres:.0f} m between junctions, the town has "
                          f"{town.segment_length:.1f} m (block_size {town.block_size})")


def time_to_cover(d: float, v: float, v_target: float, accel: float) -> float:
    """Seconds to cover ``d`` m from speed ``v`` accelerating at ``accel`` up to ``v_target``."""
    if d <= 0:
        return 0.0
    if v >= v_target or accel <= 0:
        return d / max(v, 1e-6)
    ramp = (v_target ** 2 - v ** 2) / (2 * accel)
    if d <= ramp:
        return float((-v + np.sqrt(v * v + 2 * accel * d)) / accel)
    return (v_target - v) / accel + (d - ramp) / v_target


def polyline_crossing(p: np.ndarray, q: np.ndarray) -> tuple[float, float]:
    """Arc lengths along ``p`` and ``q`` (polylines (N, 2), (M, 2)) of their first crossing on ``p``."""
    a0, a1, b0, b1 = p[:-1, None], p[1:, None], q[None, :-1], q[None, 1:]
    da, db = a1 - a0, b1 - b0

    def cross(u, v):
        return u[..., 0] * v[..., 1] - u[..., 1] * v[..., 0]

    den = cross(da, db)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = cross(b0 - a0, db) / den
        u = cross(b0 - a0, da) / den
    ok = (np.abs(den) > 1e-12) & (t >= 0) & (t <= 1) & (u >= 0) & (u <= 1)
    if not ok.any():
        raise ConfigError("scenario: the actor's path does not cross the ego's route")
    i, j = np.argwhere(ok)[0]
    cum_p = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(p, axis=0), axis=1))])
    cum_q = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(q, axis=0), axis=1))])
    return (float(cum_p[i] + t[i, j] * np.linalg.norm(da[i, 0])), float(cum_q[j] + u[i, j] * np.linalg.norm(db[0, j])))


def lanes_polyline(roads: RoadNetwork, lanes: list[int]) -> np.ndarray:
    """(P, 2) centre line of consecutive ``lanes`` (shared end points once)."""
    parts = [roads.points[roads.lane_offset[k]:roads.lane_offset[k] + roads.lane_points[k]] for k in lanes]
    pts = np.concatenate([parts[0]] + [p[1:] for p in parts[1:]])
    keep = np.concatenate([[True], np.linalg.norm(np.diff(pts, axis=0), axis=1) > 1e-6])
    return pts[keep]


def build_route(roads: RoadNetwork, lanes: list[int], start_s: float, exit_length: float) -> Route:
    """The route along ``lanes`` from ``start_s`` m on the first to ``exit_length`` m into the last."""
    pts = lanes_polyline(roads, lanes)
    cum = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))])
    end = float(roads.lane_length[lanes[:-1]].sum()) + min(exit_length, float(roads.lane_length[lanes[-1]]))
    inside = (cum > start_s) & (cum < end)
    start = np.interp(start_s, cum, pts[:, 0]), np.interp(start_s, cum, pts[:, 1])
    stop = np.interp(end, cum, pts[:, 0]), np.interp(end, cum, pts[:, 1])
    return Route(np.vstack([start, pts[inside], stop]))


def validate_route(route: Route, roads: RoadNetwork, tolerance: float = 0.25) -> None:
    """ConfigError if a route waypoint lies off every lane (farther than half a lane from its centre)."""
    limit = roads.town.lane_width / 2 + tolerance
    for k, p in enumerate(route.waypoints):
        d = np.min(np.einsum("ij,ij->i", roads.points - p, roads.points - p))
        if d > limit ** 2:
            raise ConfigError(f"route: waypoint {k} at ({p[0]:.1f}, {p[1]:.1f}) is {np.sqrt(d):.1f} m from the "
                              f"nearest lane centre; it is off the road network")


def clear_around(sim: DrivenSimulation, center: np.ndarray, radius: float, protected: int) -> None:
    """Remove background vehicles within ``radius`` m of ``center``; the first ``protected``
    vehicles (agents and the scenario's placed vehicles) stay."""
    xy = sim.vehicles.boxes(sim.world.roads)[:, :2]
    drop = np.linalg.norm(xy - center, axis=1) <= radius
    drop[:protected] = False
    sim.remove(vehicles=drop)


def clear_parked(sim: DrivenSimulation, zones: np.ndarray) -> None:
    """Remove parked cars overlapping any of the boxes ``zones`` (K, 7)."""
    if len(sim.world.parked_boxes):
        sim.remove(parked=boxes_overlap(sim.world.parked_boxes, zones).any(1))


@dataclass
class Trigger:
    """Starts a scripted road user (a :class:`PathActor` or traffic row ``vehicle``) once the ego,
    at its current speed (see :meth:`ego_time`), would reach the conflict point (route
    arc ``route_s``) no later than the actor (arc ``actor_s`` of its path), accelerating at
    ``accel`` to ``v_target``. A traffic row waits standing (accel override) until then. With
    ``sync_until`` > 0 a started :class:`PathActor` keeps adjusting its speed (between half and
    all of ``v_target``) to arrive with the ego until it is that close to the conflict (the
    scenario runner's ``SyncArrival``), then keeps its speed."""

    route_s: float
    actor_s: float
    v_target: float
    accel: float
    actor: PathActor | None = None
    vehicle: int = -1
    vehicle_lanes: list[int] = field(default_factory=list)
    v_floor: float = 2.0
    slow_zone: tuple[float, float, float] | None = None
    sync_until: float = 0.0
    fired_at: float | None = None

    def ego_time(self, front_s: float, speed: float) -> float:
        """Seconds the ego needs from route arc ``front_s`` (its front) to the conflict at ``speed``
        (at least ``v_floor``); with ``slow_zone = (s0, s1, v)`` (a turn) it brakes at
        ``COMFORT_DECEL`` to ``v`` before ``s0``, keeps ``v`` to ``s1`` and then drives at the mean of
        the two speeds."""
        v = max(speed, self.v_floor)
        if self.slow_zone is None:
            return max(self.route_s - front_s, 0.0) / v
        s0, s1, v_slow = self.slow_zone
        pre = max(min(self.route_s, s0) - front_s, 0.0)
        turn = max(min(self.route_s, s1) - max(front_s, s0), 0.0)
        post = max(self.route_s - max(front_s, s1), 0.0)  # speeding up again after the turn
        brake = min(pre, max(v * v - v_slow * v_slow, 0.0) / (2 * COMFORT_DECEL))
        v_end = np.sqrt(max(v * v - 2 * COMFORT_DECEL * brake, 0.0))
        v_turn = min(v, v_slow)
        return ((pre - brake) / v + 2 * brake / max(v + v_end, 1e-6) + turn / v_turn
                + post / (0.5 * (v_turn + v)))

    def _actor_state(self, sim: DrivenSimulation) -> tuple[float, float]:
        if self.actor is not None:
            return self.actor.s, self.actor.v
        veh, roads = sim.vehicles, sim.world.roads
        lane = int(veh.lane[self.vehicle])
        if lane not in self.vehicle_lanes:
            return np.inf, float(veh.v[self.vehicle])
        k = self.vehicle_lanes.index(lane)
        return float(roads.lane_length[self.vehicle_lanes[:k]].sum() + veh.s[self.vehicle]), float(veh.v[self.vehicle])

    def update(self, sim: DrivenSimulation, ego: VehicleState, ego_s: float) -> None:
        s, v = self._actor_state(sim)
        if self.fired_at is None:
            t_ego = self.ego_time(ego_s + ego.length / 2, ego.speed)
            lead = 1.4 if self.sync_until > 0 else 1.0  # a synchronised actor starts early, then slows
            if t_ego <= lead * time_to_cover(self.actor_s - s, v, self.v_target, self.accel):
                self.fired_at = sim.time
        if self.actor is not None:
            self.actor.started = self.fired_at is not None
            remaining = self.actor_s - s
            if self.actor.started and remaining > self.sync_until > 0:
                t_ego = self.ego_time(ego_s + ego.length / 2, ego.speed)
                self.actor.v_target = float(np.clip(remaining / max(t_ego, 1e-3), 0.5 * self.v_target, self.v_target))
            return
        if self.fired_at is None:
            sim.accel_override[self.vehicle] = -B_MAX if v > 0 else 0.0
        elif not np.isfinite(s):  # past its scripted path: back to IDM
            sim.accel_override[self.vehicle] = np.nan
        else:
            sim.accel_override[self.vehicle] = float(np.clip((self.v_target - v) / sim.cfg.dt, -self.accel, self.accel))


def hold(sim: DrivenSimulation, vehicle: int) -> None:
    """Keep traffic row ``vehicle`` standing for the whole episode (a vehicle queued to turn)."""
    sim.accel_override[vehicle] = 0.0
    sim.vehicles.v[vehicle] = 0.0
