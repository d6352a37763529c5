"""Vehicle dynamics: lane following, IDM car-following and fixed-time traffic signals.

Longitudinal control is the Intelligent Driver Model (Treiber, Hennecke, Helbing, "Congested
traffic states in empirical observations and microscopic simulations", Phys. Rev. E 62, 2000):

    a = a_max * (1 - (v / v0)^4 - (s*(v, dv) / gap)^2),  s* = s0 + v T + v dv / (2 sqrt(a_max b))

Vehicles follow lane-centre polylines (:mod:`coperception.sim.roads`). The leader of a vehicle
is the next one on its lane, in the junction coming from the same leg, or on the lane it goes to
next; a signal that is red (or yellow while the vehicle can still stop comfortably),
a junction still occupied by traffic from another leg, or a full exit lane put a standing
obstacle at the stop line. Each leg of a junction gets its own green in turn, so paths from
different legs never share the junction. Everything is vectorised over vehicles; only the few
vehicles that change lane in a tick are handled one by one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from coperception.sim.config import LightConfig
from coperception.sim.roads import APPROACH, CONNECTOR, MOVEMENTS, RoadNetwork

GREEN, YELLOW, RED = 0, 1, 2
B_MAX = 8.0  # emergency braking (m/s^2)
SINGLE_FILE = 25.0  # m before the stop line where the lanes of an all-turning leg queue as one
_MOVE_WEIGHTS = np.array([0.5, 0.25, 0.25])  # straight, left, right


class TrafficLights:
    """Fixed-time plan: the legs of junction j (N, E, S, W order) get green in turn."""

    def __init__(self, legs: np.ndarray, cfg: LightConfig, offsets: np.ndarray):
        self.cfg = cfg
        self.phase = np.where(legs, np.cumsum(legs, axis=1) - 1, -1)  # (J, 4) phase of each leg
        self.period = cfg.green + cfg.yellow + cfg.all_red
        self.cycle = legs.sum(1) * self.period
        self.offsets = np.asarray(offsets, dtype=np.float64) % self.cycle

    def state(self, t: float) -> np.ndarray:
        """(J, 4) int8 GREEN/YELLOW/RED per junction leg at time ``t`` (s); missing legs RED."""
        local = (t + self.offsets) % self.cycle
        active = np.floor(local / self.period)
        within = (local - active * self.period)[:, None]
        on = self.phase == active[:, None]
        out = np.full(self.phase.shape, RED, dtype=np.int8)
        out[on & (within < self.cfg.green + self.cfg.yellow)] = YELLOW
        out[on & (within < self.cfg.green)] = GREEN
        return out

    def force(self, junction: int, side: int, state: str, t: float) -> None:
        """Shift junction's plan so that at time ``t`` leg ``side`` is 1 s into its green
        (``state="green"``) or waits while the leg before it in the cycle is 1 s into green
        (``"red"``: cross traffic flows, this leg goes next)."""
        n = self.cycle[junction] / self.period
        phase = self.phase[junction, side] if state == "green" else (self.phase[junction, side] - 1) % n
        self.offsets[junction] = (phase * self.period + 1.0 - t) % self.cycle[junction]


@dataclass
class Vehicles:
    """State of V lane-following vehicles (arrays (V,)): lane id, arc position s (m, of the box
    centre), speed v (m/s), the lanes taken next and before (-1: unknown), size (V, 3) m, class
    index and IDM parameters."""

    lane: np.ndarray
    s: np.ndarray
    v: np.ndarray
    next_lane: np.ndarray
    prev_lane: np.ndarray
    size: np.ndarray
    cls: np.ndarray
    v0: np.ndarray
    a_max: np.ndarray
    b: np.ndarray
    headway: np.ndarray
    s0: np.ndarray

    def __len__(self) -> int:
        return len(self.lane)

    @property
    def length(self) -> np.ndarray:
        return self.size[:, 0]

    def boxes(self, roads: RoadNetwork) -> np.ndarray:
        """(V, 7) world boxes ``[x, y, z, l, w, h, yaw]`` (bodies as chords of the path)."""
        xy, yaw = roads.body_pose(self.lane, self.s, self.length, self.prev_lane, self.next_lane)
        return np.column_stack([xy, self.size[:, 2] / 2, self.size, yaw])


def choose_next(roads: RoadNetwork, lane: int, rng: np.random.Generator, movement: str | None = None) -> int:
    """The lane after ``lane``: a random allowed connector of an approach, the exit of a connector."""
    if roads.lane_kind[lane] == CONNECTOR:
        return int(roads.conn_exit[lane])
    options = roads.options[lane]
    moves = roads.conn_movement[options]
    if movement is not None:
        wanted = options[moves == MOVEMENTS.index(movement)]
        if len(wanted):
            return int(wanted[0])
    w = _MOVE_WEIGHTS[moves]
    return int(rng.choice(options, p=w / w.sum()))


def _rear_by_group(group: np.ndarray, s: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Leader index of each vehicle within its group (-1 if front) and rearmost vehicle per group."""
    order = np.lexsort((s, group))
    g = group[order]
    leader = np.full(len(s), -1, dtype=np.int64)
    same = g[1:] == g[:-1]
    leader[order[:-1][same]] = order[1:][same]
    rear = np.full(n_groups, -1, dtype=np.int64)
    first = np.concatenate([[True], ~same]) if len(g) else np.zeros(0, bool)
    rear[g[first]] = order[first]
    return leader, rear


def gaps(veh: Vehicles, roads: RoadNetwork, lights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bumper-to-bumper gap (V,) to the nearest obstacle ahead (m, inf if none) and its speed (V,).

    Vehicles are ordered along a coordinate ``x``: arc position on their lane, except that all
    vehicles coming from one leg form one queue inside the junction (x = s on the connector) and,
    on legs where every lane turns, over the last ``SINGLE_FILE`` metres before the stop line too
    (x = s - lane length < 0): a long vehicle turning beside another lane cuts across its path.
    """
    n_lanes, L = roads.lane_count, veh.length
    on_approach = roads.lane_kind[veh.lane] == APPROACH
    to_end = roads.lane_length[veh.lane] - veh.s
    zone = on_approach & roads.single_file[veh.lane] & (to_end < min(SINGLE_FILE, 0.5 * roads.town.segment_length))
    leg = n_lanes + 4 * roads.lane_junction + roads.lane_side
    own_lane = on_approach & ~zone
    group = np.where(own_lane, veh.lane, leg[veh.lane])
    x = np.where(zone, -to_end, veh.s)
    leader, rear = _rear_by_group(group, x, n_lanes + 4 * len(roads.centers))
    _, rear_of_lane = _rear_by_group(veh.lane, veh.s, n_lanes)  # whatever queue they are in
    gap = np.full(len(veh), np.inf)
    lead_v = veh.v.copy()
    has = leader >= 0
    gap[has] = x[leader[has]] - x[has] - (L[has] + L[leader[has]]) / 2
    lead_v[has] = veh.v[leader[has]]

    def consider(mask: np.ndarray, rears: np.ndarray, target: np.ndarray, coord: np.ndarray, extra) -> None:
        r = np.where(mask, rears[np.where(mask, target, 0)], -1)
        ok = r >= 0
        cand = to_end[ok] + extra[ok] + coord[r[ok]] - (L[ok] + L[r[ok]]) / 2
        better = cand < gap[ok]
        idx = np.flatnonzero(ok)[better]
        gap[idx], lead_v[idx] = cand[better], veh.v[r[ok][better]]

    exit_lane = roads.conn_exit[veh.next_lane]
    zero = np.zeros(len(veh))
    consider(own_lane, rear, leg[veh.lane], x, zero)                                    # my leg's queue
    consider(on_approach, rear_of_lane, exit_lane, veh.s, roads.lane_length[veh.next_lane])  # after the junction
    consider(~on_approach, rear_of_lane, roads.conn_exit[veh.lane], veh.s, zero)        # where my connector leads
    stop = _stop_line(veh, roads, lights, rear_of_lane, to_end)
    stop_gap = to_end - L / 2 - 1.0
    closer = stop & (stop_gap < gap)
    gap[closer], lead_v[closer] = stop_gap[closer], 0.0
    return gap, lead_v


def _stop_line(veh, roads, lights, rear, to_end) -> np.ndarray:
    """(V,) bool: the vehicle must stop at the stop line of its approach lane."""
    n_lanes = roads.lane_count
    on_approach = roads.lane_kind[veh.lane] == APPROACH
    junction, side = roads.lane_junction[veh.lane], roads.lane_side[veh.lane]
    light = lights[junction, side]
    dist = to_end - veh.length / 2
    can_stop = dist > veh.v ** 2 / (2 * veh.b)
    committed = dist < veh.v ** 2 / (2 * B_MAX)
    in_box = ~on_approach
    occ = np.zeros(lights.shape, dtype=np.int64)
    np.add.at(occ, (junction[in_box], side[in_box]), 1)
    busy = (occ.sum(1)[junction] - occ[junction, side]) > 0
    # Room on the exit lane: its rearmost vehicle minus what is already crossing towards it.
    exit_lane = roads.conn_exit[veh.next_lane]
    r = rear[np.where(on_approach, exit_lane, 0)]
    room = np.where(r >= 0, veh.s[np.maximum(r, 0)] - veh.length[np.maximum(r, 0)] / 2, np.inf)
    queued = np.bincount(roads.conn_exit[veh.lane[in_box]], weights=veh.length[in_box] + 2.0, minlength=n_lanes)
    full = room - queued[exit_lane] < veh.length + 2.5
    want = (light == RED) | ((light == YELLOW) & can_stop) | busy | full
    return on_approach & want & ~committed


def idm_acceleration(veh: Vehicles, roads: RoadNetwork, gap: np.ndarray, lead_v: np.ndarray) -> np.ndarray:
    """IDM acceleration (V,) m/s^2 with the desired speed lowered ahead of and inside turns."""
    v = veh.v
    to_end = roads.lane_length[veh.lane] - veh.s
    curve_here = roads.turn_speed[veh.lane]
    upcoming = np.where(roads.lane_kind[veh.lane] == APPROACH, roads.turn_speed[veh.next_lane], np.inf)
    v0 = np.minimum(veh.v0, np.minimum(curve_here, np.sqrt(upcoming ** 2 + 2 * veh.b * np.maximum(to_end, 0))))
    v0 = np.maximum(v0, 0.5)
    s_star = veh.s0 + np.maximum(0.0, v * veh.headway + v * (v - lead_v) / (2 * np.sqrt(veh.a_max * veh.b)))
    acc = veh.a_max * (1 - (v / v0) ** 4 - (s_star / np.maximum(gap, 0.1)) ** 2)
    return np.clip(acc, -B_MAX, veh.a_max)


def advance(veh: Vehicles, roads: RoadNetwork, acc: np.ndarray, dt: float, rng: np.random.Generator) -> None:
    """Integrate one tick (ballistic update, speeds never negative) and move vehicles past a lane
    end onto their next lane, choosing the lane after that."""
    v_new = veh.v + acc * dt
    stops = v_new < 0
    ds = np.where(stops, veh.v ** 2 / (2 * np.maximum(-acc, 1e-6)), (veh.v + v_new) / 2 * dt)
    veh.s += ds
    veh.v = np.maximum(v_new, 0.0)
    for i in np.flatnonzero(veh.s >= roads.lane_length[veh.lane]):
        while veh.s[i] >= roads.lane_length[veh.lane[i]]:
            veh.s[i] -= roads.lane_length[veh.lane[i]]
            veh.prev_lane[i] = veh.lane[i]
            veh.lane[i] = veh.next_lane[i]
            veh.next_lane[i] = choose_next(roads, veh.lane[i], rng)


def step(veh: Vehicles, roads: RoadNetwork, lights: np.ndarray, dt: float, rng: np.random.Generator,
         accel_override: np.ndarray | None = None) -> np.ndarray:
    """One tick of all vehicles; ``accel_override`` (V,) replaces IDM where finite. Returns acc."""
    gap, lead_v = gaps(veh, roads, lights)
    acc = idm_acceleration(veh, roads, gap, lead_v)
    if accel_override is not None:
        acc = np.where(np.isfinite(accel_override), np.clip(accel_override, -B_MAX, 4.0), acc)
    advance(veh, roads, acc, dt, rng)
    return acc
