"""Scripted test drivers for the embedded backend: a route follower that ignores everything and
one that also brakes for ground-truth objects predicted into its corridor."""

from __future__ import annotations

import numpy as np

from coperception.drive.records import Control, Route, VehicleState


def _heading(route: Route, s: float) -> float:
    d = route.point_at(s + 0.5) - route.point_at(s - 0.5)
    return float(np.arctan2(d[1], d[0]))


def follow(route: Route, ego: VehicleState, v_cruise: float, v_turn: float) -> Control:
    """Pure pursuit along ``route`` at ``v_cruise``, slowing to ``v_turn`` before curves."""
    s, _ = route.project(ego.xy)
    look = max(4.0, 0.9 * ego.speed)
    target = route.point_at(s + look)
    alpha = np.arctan2(target[1] - ego.y, target[0] - ego.x) - ego.yaw
    steer = float(np.arctan2(2.0 * ego.wheelbase * np.sin(alpha), look))
    ahead = np.arange(0.0, 25.0, 1.0)
    bend = np.array([abs(np.angle(np.exp(1j * (_heading(route, s + a + 2.0) - _heading(route, s + a - 2.0)))))
                     for a in ahead])
    limit = np.where(bend > 0.1, np.sqrt(v_turn ** 2 + 2 * 2.5 * ahead), np.inf).min()
    v_target = min(v_cruise, limit)
    return Control(float(np.clip(1.5 * (v_target - ego.speed), -4.0, 2.0)), steer)


def gt_threat(route: Route, ego: VehicleState, tick, horizon: float = 2.0) -> bool:
    """A ground-truth object now or predicted at constant velocity within ``horizon`` s is in the
    ego's corridor (its lane width) ahead within stopping distance."""
    objs, vel = tick.frame.objects, tick.velocities
    other = objs.ids != int(tick.frame.ego_id)
    boxes, vel = objs.boxes[other], vel[other]
    s_ego, _ = route.project(ego.xy)
    reach = ego.speed ** 2 / (2 * 6.0) + 0.3 * ego.speed + ego.length / 2 + 3.0
    for t in np.arange(0.0, horizon + 1e-9, 0.25):
        xy = boxes[:, :2] + t * vel
        near = np.linalg.norm(xy - ego.xy, axis=1) < reach + 10.0
        for p, half in zip(xy[near], boxes[near, 4] / 2):
            s, d = route.project(p)
            if d < ego.width / 2 + half + 0.4 and 0.0 < s - s_ego < reach:
                return True
    return False


def drive(backend, info, tick, seconds: float, brake_on_gt: bool, until_collision: bool = False):
    """Run ``seconds`` of the episode (or up to the first collision); returns all events and the ticks."""
    v_cruise = max(tick.ego.speed, 5.0)
    sc = backend.scenario
    v_turn = float(min(sc.sim.world.roads.turn_speed[sc.route_lanes[1]], v_cruise))
    events, ticks = [], [tick]
    for _ in range(int(round(seconds * backend.rate_hz))):
        c = follow(info.route, tick.ego, v_cruise, v_turn)
        if brake_on_gt and gt_threat(info.route, tick.ego, tick):
            c = Control(-8.0, c.steer)
        tick = backend.step({tick.frame.ego_id: c})
        events += tick.events
        ticks.append(tick)
        if until_collision and any(e.kind.value.startswith("collision") for e in tick.events):
            break
    return events, ticks
