"""The embedded closed-loop backend: scenario families driven in the embedded simulator.

:class:`EmbeddedBackend` implements :class:`coperception.drive.records.Backend` on a
:class:`~coperception.sim.driven.DrivenSimulation`. The ego is the first connected vehicle; its
motion is the kinematic bicycle (:func:`coperception.drive.dynamics.step_bicycle`) under the
control it is given, integrated at every simulator tick (``dt``, 0.05 s) of the frame interval
(``1 / rate_hz``: 10 Hz by default, 20 Hz as an option). Its box is in the scene (other agents'
LiDARs see it); IDM vehicles behind it on its lanes follow it as their leader (see
:mod:`coperception.sim.driven` for what they do not do). After each interval all agents sense
(one ray cast), and the tick reports what happened in it (:mod:`coperception.drive.events`):
collisions (checked every simulator tick), red lights run, metres outside the route's lanes.

Ground truth is ``tick.frame.objects`` (every road user within ``gt_range`` of an agent, the ego
included, pedestrians and cyclists with their class indices); :class:`EmbeddedTick` adds
``velocities`` (N, 2), the world ``vx, vy`` of those objects (speed along the box heading: the
simulator's road users move where they face).

The ``closed_loop`` preset (:data:`CLOSED_LOOP`, the default configuration) is the ``town``
preset with the datasets' LiDAR (64 beams x 1800 azimuth steps), lighter background traffic and
no warm-up (scenario actors start from their scripted states). Measured on two shared CPU cores
with four sensing agents (ego, two connected cars, one road-side unit): about 70 ms per step
(~14 steps/s, ray casting ~60 ms of it); :data:`REDUCED_LIDAR` (32 beams x 900 steps) brings that
to about 25 ms (~40 steps/s).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Mapping

import numpy as np

from coperception.config import merge
from coperception.drive.dynamics import VehicleLimits, step_bicycle
from coperception.drive.events import ContactTracker, LaneJudge, StopLines, boxes_overlap, footprint_samples, mesh_boxes
from coperception.drive.records import Control, Event, EventKind, ScenarioInfo, Tick, VehicleState, route_timeout
from coperception.drive.scenarios import Scenario, build_scenario
from coperception.sim.config import SimConfig
from coperception.sim.objects import CLASS_INDEX
from coperception.sim.roads import APPROACH
from coperception.sim.scenarios import load_sim_config
from coperception.sim.traffic import GREEN, RED
from coperception.structures.records import ObjectSet

log = logging.getLogger(__name__)

#: Overrides of the ``town`` preset that make the ``closed_loop`` preset (see the module docstring).
CLOSED_LOOP: dict = {
    "traffic": {"vehicles": 24, "cyclists": 2, "pedestrians": 12},
    "warmup": 0.0,
}
#: A cheaper LiDAR for the closed loop (28,800 rays per scan instead of 115,200).
REDUCED_LIDAR: dict = {"lidar": {"channels": 32, "firing_rate_hz": 9000.0}}
_PEOPLE = (CLASS_INDEX["pedestrian"], CLASS_INDEX["cyclist"])


def closed_loop_config(overrides: dict | None = None) -> SimConfig:
    """The ``closed_loop`` simulator preset, with nested ``overrides`` merged on top."""
    cfg = load_sim_config(preset="town", overrides=merge(CLOSED_LOOP, overrides or {}))
    return replace(cfg, preset="closed_loop").validate()


def object_velocities(objects: ObjectSet) -> np.ndarray:
    """(N, 2) world ``vx, vy`` (m/s) of ground-truth objects: speed along the box heading."""
    yaw = objects.boxes[:, 6]
    return objects.speeds[:, None] * np.stack([np.cos(yaw), np.sin(yaw)], 1)


@dataclass
class EmbeddedTick(Tick):
    """A :class:`Tick` with ``velocities`` (N, 2): world ``vx, vy`` of ``frame.objects``."""

    velocities: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))


class EmbeddedBackend:
    """Scenario families (:data:`coperception.drive.scenarios.FAMILIES`) in the embedded simulator.

    sim_config: the base configuration (town, traffic, sensors; default :func:`closed_loop_config`);
    each family sets the agents and scenario actors on top. rate_hz: control rate (the frame
    interval must be a multiple of the simulator's ``dt``). threads: ray-casting threads (0: all).
    ``step(controls)``: the ego's Control (if absent, its last one is held); a connected vehicle
    named there has its IDM acceleration replaced by ``Control.accel`` (it stays on its lane, steer
    is ignored); road-side units cannot be controlled.
    """

    def __init__(self, sim_config: SimConfig | None = None, rate_hz: float = 10.0, threads: int = 0,
                 limits: VehicleLimits = VehicleLimits()):
        if not np.isfinite(rate_hz) or rate_hz <= 0:
            raise ValueError(f"rate_hz must be > 0, got {rate_hz}")
        base = sim_config if sim_config is not None else closed_loop_config()
        self.base = replace(base, frame_interval=1.0 / rate_hz).validate()
        self.rate_hz = float(rate_hz)
        self.threads = threads
        self.limits = limits
        self.scenario: Scenario | None = None
        self.last_tick: EmbeddedTick | None = None

    # ----------------------------------------------------------------------------- protocol
    def reset(self, family: str, seed: int) -> tuple[ScenarioInfo, EmbeddedTick]:
        sc = build_scenario(family, self.base, seed, self.threads)
        self.scenario, sim = sc, sc.sim
        x, y, _, length, width, _, yaw = sim.ego_box
        self.ego = VehicleState(float(x), float(y), float(yaw), sim.ego_speed, float(length), float(width),
                                wheelbase=0.6 * float(length))
        self._control = Control()
        self._contacts = ContactTracker()
        self._static = mesh_boxes(sim.static)
        self._stop_lines = StopLines.of(sim.world.roads)
        self._lanes = LaneJudge(sim.world.roads)
        info = ScenarioInfo(family, int(seed), sc.route, route_timeout(sc.route.length), sc.collaborators)
        log.debug("reset %s seed %d: route %.1f m, collaborators %s", family, seed, sc.route.length, sc.collaborators)
        return info, self._make_tick([])

    def step(self, controls: Mapping[str, Control]) -> EmbeddedTick:
        if self.scenario is None:
            raise RuntimeError("EmbeddedBackend.step before reset")
        sc = self.scenario
        sim = sc.sim
        override = self._overrides(controls)
        control = controls.get(sim.agents[0].agent_id, self._control)
        self._control = control
        events: list[Event] = []
        outside = 0.0
        for _ in range(sim.cfg.ticks_per_frame):
            prev = self.ego
            self.ego = step_bicycle(prev, control, sim.cfg.dt, self.limits)
            sim.set_ego(self.ego.x, self.ego.y, self.ego.yaw, self.ego.speed)
            sc.update(self.ego)
            sim.advance_tick(override)
            events += self._collisions()
            events += self._red_lights(prev)
            outside += self._outside(prev)
        if outside > 0:
            events.append(Event(EventKind.OUTSIDE_ROUTE_LANES, sim.time, "", (self.ego.x, self.ego.y), outside))
        return self._make_tick(events)

    def close(self) -> None:
        self.scenario = None
        self.last_tick = None

    def object_velocities(self) -> np.ndarray:
        """(N, 2) ``vx, vy`` of the last tick's ``frame.objects`` (see :func:`object_velocities`)."""
        if self.last_tick is None:
            raise RuntimeError("no tick yet: call reset first")
        return self.last_tick.velocities

    # ----------------------------------------------------------------------------- internals
    def _overrides(self, controls: Mapping[str, Control]) -> np.ndarray:
        sim = self.scenario.sim
        rows = {a.agent_id: a.own_object for a in sim.agents}
        override = np.full(len(sim.vehicles), np.nan)
        for agent_id, c in controls.items():
            if agent_id not in rows:
                raise ValueError(f"controls: unknown agent id {agent_id!r}; agents are {sorted(rows)}")
            if not isinstance(c, Control):
                raise ValueError(f"controls[{agent_id!r}]: expected a Control, got {type(c).__name__}")
            if rows[agent_id] < 0:
                raise ValueError(f"controls: {agent_id!r} is a road-side unit and cannot be driven")
            if rows[agent_id] > 0:
                override[rows[agent_id]] = c.accel
        return override

    def _make_tick(self, events: list[Event]) -> EmbeddedTick:
        sim = self.scenario.sim
        frame = sim.sense()
        tick = EmbeddedTick(time=sim.time, frame=frame, ego=self.ego, events=events, signals=self._signals(),
                            velocities=object_velocities(frame.objects))
        self.last_tick = tick
        return tick

    def _collisions(self) -> list[Event]:
        sim = self.scenario.sim
        boxes, _ = sim.object_boxes()
        ego_box = boxes[0]
        near = np.flatnonzero(np.linalg.norm(boxes[1:, :2] - ego_box[:2], axis=1) < 20.0) + 1
        hit = near[boxes_overlap(ego_box, boxes[near])[0]] if len(near) else near
        kinds = {str(sim.ids[i]): (EventKind.COLLISION_PEDESTRIAN if sim.classes[i] in _PEOPLE
                                   else EventKind.COLLISION_VEHICLE) for i in hit}
        static = np.flatnonzero(boxes_overlap(ego_box, self._static)[0]) if len(self._static) else []
        kinds.update({f"static:{k}": EventKind.COLLISION_STATIC for k in static})
        samples = footprint_samples(ego_box)
        if sim.world.ground.in_block(samples[:, 0], samples[:, 1]).any():
            kinds["curb"] = EventKind.COLLISION_STATIC
        xy = (self.ego.x, self.ego.y)
        return [Event(kinds[k], sim.time, k, xy) for k in self._contacts.update(set(kinds))]

    def _red_lights(self, prev: VehicleState) -> list[Event]:
        sim, lines = self.scenario.sim, self._stop_lines
        crossed = np.flatnonzero(lines.crossed(prev.xy, self.ego.xy))
        state = sim.lights.state(sim.time)
        return [Event(EventKind.RED_LIGHT, sim.time, f"junction:{lines.junction[k]}", (self.ego.x, self.ego.y))
                for k in crossed if lines.junction[k] not in self.scenario.unsignalised
                and state[lines.junction[k], lines.side[k]] == RED]

    def _outside(self, prev: VehicleState) -> float:
        route = self.scenario.route
        s, _ = route.project(self.ego.xy)
        d = route.point_at(s + 0.5) - route.point_at(s - 0.5)
        if not self._lanes.outside(self.ego.xy, float(np.arctan2(d[1], d[0]))):
            return 0.0
        return float(np.linalg.norm(self.ego.xy - prev.xy))

    def _signals(self) -> np.ndarray:
        """(K, 3) ``x, y, is_red`` of the route's stop lines ahead of the ego's centre: is_red is 1
        for red, 0.5 for yellow, 0 for green (junctions without lights give none)."""
        sc = self.scenario
        roads = sc.sim.world.roads
        ego_s, _ = sc.route.project(self.ego.xy)
        state = sc.sim.lights.state(sc.sim.time)
        out = []
        for lane in sc.route_lanes:
            j = int(roads.lane_junction[lane])
            if roads.lane_kind[lane] != APPROACH or j in sc.unsignalised:
                continue
            end = roads.points[roads.lane_offset[lane] + roads.lane_points[lane] - 1]
            s, d = sc.route.project(end)
            if d < 0.5 and s >= ego_s:
                light = state[j, roads.lane_side[lane]]
                out.append((end[0], end[1], 1.0 if light == RED else (0.0 if light == GREEN else 0.5)))
        return np.array(out, np.float64).reshape(-1, 3)
