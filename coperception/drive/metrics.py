"""Driving metrics of the CARLA leaderboard 1.0, as its ``statistics_manager`` and the scenario
runner's criteria compute them in the V2Xverse fork (Liu et al., "Towards Collaborative Autonomous
Driving: Simulation Platform and End-to-End System", 2024), plus a minimum time-to-collision.

Per route: route completion RC (% of the route's length reached, 100 once completed), infraction
penalty IS (a product of per-infraction factors), driving score DS = max(RC * IS, 0). Over routes:
the arithmetic means, and infractions per km (see :func:`global_statistics` for the upstream quirk).
:class:`EpisodeMonitor` applies the termination rules tick by tick (V2Xverse's
``route_scenario.py``: blocked below 0.5 m/s for 30 s, deviation beyond 30 m, timeout 0.8 s/m + 8 s).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from coperception.drive.footprints import TTC_HORIZON, time_to_collision
from coperception.drive.records import (
    Event,
    EventKind,
    Route,
    Tick,
    VehicleState,
    route_timeout,
)

#: Leaderboard names of the infraction lists, per event kind.
INFRACTION_KEYS: dict[EventKind, str] = {
    EventKind.COLLISION_PEDESTRIAN: "collisions_pedestrian",
    EventKind.COLLISION_VEHICLE: "collisions_vehicle",
    EventKind.COLLISION_STATIC: "collisions_layout",
    EventKind.RED_LIGHT: "red_light",
    EventKind.STOP_SIGN: "stop_infraction",
    EventKind.OUTSIDE_ROUTE_LANES: "outside_route_lanes",
    EventKind.ROUTE_DEVIATION: "route_dev",
    EventKind.TIMEOUT: "route_timeout",
    EventKind.BLOCKED: "vehicle_blocked",
}
#: Multiplicative penalty per infraction (``PENALTY_*`` of the statistics manager).
PENALTIES: dict[str, float] = {
    "collisions_pedestrian": 0.50, "collisions_vehicle": 0.60, "collisions_layout": 0.65,
    "red_light": 0.70, "stop_infraction": 0.80,
}
COLLISION_KEYS: tuple[str, ...] = ("collisions_pedestrian", "collisions_vehicle", "collisions_layout")
#: Status suffixes of the statistics manager for the kinds that end a route.
FAILURES: dict[str, str] = {"route_timeout": "Agent timed out", "route_dev": "Agent deviated from the route",
                            "vehicle_blocked": "Agent got blocked"}


# --------------------------------------------------------------------------- per-route scores
@dataclass(frozen=True)
class Infraction:
    """One entry of an infraction list: when, with whom, where, and the kind's quantity (metres
    outside the route lanes for ``outside_route_lanes``)."""

    time: float
    other: str = ""
    x: float = 0.0
    y: float = 0.0
    value: float = 0.0

    def to_json(self) -> dict:
        return {"time": self.time, "other": self.other, "x": self.x, "y": self.y, "value": self.value}

    @staticmethod
    def from_json(d: Mapping) -> Infraction:
        return Infraction(float(d["time"]), str(d.get("other", "")), float(d.get("x", 0.0)),
                          float(d.get("y", 0.0)), float(d.get("value", 0.0)))


def outside_lanes_percentage(metres: float, driven_m: float) -> float:
    """The leaderboard's off-lane percentage: metres outside the route's lanes over the route
    distance travelled (``OutsideRouteLanesTest``: "% of the completed route"; not of the whole
    route's length), at most 100."""
    if metres <= 0:
        return 0.0
    return float(min(100.0, 100.0 * metres / max(driven_m, metres)))


def infraction_penalty(infractions: Mapping[str, Sequence[Infraction]], driven_m: float) -> float:
    """IS: 0.5 per pedestrian, 0.6 per vehicle, 0.65 per layout collision, 0.7 per red light,
    0.8 per stop sign, times ``1 - pct / 100`` per off-lane entry (pct of ``driven_m``)."""
    penalty = 1.0
    for key, factor in PENALTIES.items():
        penalty *= factor ** len(infractions.get(key, ()))
    for entry in infractions.get("outside_route_lanes", ()):
        penalty *= 1.0 - outside_lanes_percentage(entry.value, driven_m) / 100.0
    return float(penalty)


def _empty_infractions() -> dict[str, list[Infraction]]:
    return {key: [] for key in INFRACTION_KEYS.values()}


@dataclass
class EpisodeResult:
    """The outcome of one closed-loop episode, as a leaderboard route record plus our extras.

    status: 'Completed', 'Failed', 'Failed - <reason>' (leaderboard wording) or 'Failed - Crashed'.
    route_completion (RC, %), infraction_penalty (IS), driving_score (DS = RC * IS, 0..100);
    infractions: leaderboard list name -> entries; route_length (m); duration (simulated s);
    min_ttc (s, inf if never within the horizon); bytes_per_agent_tick: mean message bytes sent
    per collaborating agent per tick; crashed: why the episode raised ('' if it did not).
    """

    family: str
    seed: int
    perception: str
    status: str
    route_completion: float
    infraction_penalty: float
    driving_score: float
    route_length: float
    duration: float
    infractions: dict[str, list[Infraction]] = field(default_factory=_empty_infractions)
    min_ttc: float = math.inf
    bytes_per_agent_tick: float = 0.0
    crashed: str = ""

    @property
    def route_id(self) -> str:
        return f"{self.family}/{self.seed}"

    @property
    def km_driven(self) -> float:
        """Kilometres of the route covered (RC of the route length)."""
        return self.route_completion / 100.0 * self.route_length / 1000.0

    def count(self, keys: Iterable[str]) -> int:
        return sum(len(self.infractions.get(k, ())) for k in keys)

    def per_km(self, keys: Iterable[str] = COLLISION_KEYS) -> float:
        """Infractions of ``keys`` per km of route covered (count / max(km, 0.001))."""
        return self.count(keys) / max(self.km_driven, 0.001)

    def per_km_leaderboard(self, keys: Iterable[str] = COLLISION_KEYS) -> float:
        """The leaderboard's figure, ``count / max(score_route * route_length / 1000, 0.001)`` with
        score_route in percent: 100 times smaller than :meth:`per_km` (see :func:`global_statistics`)."""
        return self.count(keys) / max(self.route_completion * self.route_length / 1000.0, 0.001)

    def to_json(self) -> dict:
        """A leaderboard checkpoint record (``route_id, status, scores, infractions, meta``)."""
        return {
            "route_id": self.route_id, "status": self.status,
            "scores": {"score_route": self.route_completion, "score_penalty": self.infraction_penalty,
                       "score_composed": self.driving_score},
            "infractions": {k: [e.to_json() for e in v] for k, v in self.infractions.items()},
            "meta": {"family": self.family, "seed": self.seed, "perception": self.perception,
                     "route_length": self.route_length, "duration_game": self.duration,
                     "min_ttc": None if math.isinf(self.min_ttc) else self.min_ttc,
                     "bytes_per_agent_tick": self.bytes_per_agent_tick, "crashed": self.crashed},
        }

    @staticmethod
    def from_json(d: Mapping) -> EpisodeResult:
        try:
            meta, scores = d["meta"], d["scores"]
            infractions = _empty_infractions()
            for key, entries in d["infractions"].items():
                infractions[key] = [Infraction.from_json(e) for e in entries]
            ttc = meta.get("min_ttc")
            return EpisodeResult(
                str(meta["family"]), int(meta["seed"]), str(meta["perception"]), str(d["status"]),
                float(scores["score_route"]), float(scores["score_penalty"]), float(scores["score_composed"]),
                float(meta["route_length"]), float(meta["duration_game"]), infractions,
                math.inf if ttc is None else float(ttc), float(meta.get("bytes_per_agent_tick", 0.0)),
                str(meta.get("crashed", "")))
        except (KeyError, TypeError) as e:
            raise ValueError(f"not an episode record: missing or bad field {e}") from e


def score_route(infractions: Mapping[str, Sequence[Infraction]], route_length: float, progress_m: float,
                completed: bool) -> tuple[float, float, float]:
    """(RC, IS, DS) of one route: RC = 100 if completed else the progress in % (2 decimals, as the
    leaderboard rounds it), IS from the infractions, DS = max(RC * IS, 0)."""
    if route_length <= 0:
        raise ValueError(f"route_length must be > 0, got {route_length}")
    rc = 100.0 if completed else round(100.0 * min(max(progress_m, 0.0), route_length) / route_length, 2)
    penalty = infraction_penalty(infractions, rc / 100.0 * route_length)
    return rc, penalty, max(rc * penalty, 0.0)


# --------------------------------------------------------------------------- aggregation
def global_statistics(results: Sequence[EpisodeResult]) -> dict:
    """The leaderboard's global record over ``results``: mean DS / RC / IS, and per infraction list
    two rates.

    ``infractions_per_km_leaderboard`` reproduces ``compute_global_statistics`` verbatim: the sum
    over routes of ``len(list) / max(score_route * route_length / 1000, 0.001)``. score_route is in
    percent, so each term is 100x too small to be "per km", and the terms are summed, not pooled.
    ``infractions_per_km`` is the figure the label promises: total count / max(total km of route
    covered, 0.001).
    """
    if not results:
        raise ValueError("global_statistics needs at least one result")
    n = float(len(results))
    keys = list(INFRACTION_KEYS.values())
    quirk = {k: sum(r.per_km_leaderboard([k]) for r in results) for k in keys}
    km = max(sum(r.km_driven for r in results), 0.001)
    exceptions = [(r.route_id, r.status) for r in results if r.status != "Completed"]
    return {
        "status": "Failed" if exceptions else "Completed",
        "scores": {"score_route": sum(r.route_completion for r in results) / n,
                   "score_penalty": sum(r.infraction_penalty for r in results) / n,
                   "score_composed": sum(r.driving_score for r in results) / n},
        "infractions_per_km_leaderboard": quirk,
        "infractions_per_km": {k: sum(r.count([k]) for r in results) / km for k in keys},
        "exceptions": exceptions,
    }


def summarize(results: Sequence[EpisodeResult]) -> list[dict]:
    """One row per (perception, family): ``n`` episodes, ``crashed`` count (excluded from the
    means), and ``<metric>_mean`` / ``<metric>_std`` over seeds of ds, rc, is,
    collisions_per_km, collisions_per_km_leaderboard, min_ttc (clipped to the TTC horizon so that
    "never close" averages as 10 s) and bytes_per_agent_tick."""
    groups: dict[tuple[str, str], list[EpisodeResult]] = defaultdict(list)
    for r in results:
        groups[(r.perception, r.family)].append(r)
    rows = []
    for (perception, family), group in sorted(groups.items()):
        ok = [r for r in group if not r.crashed]
        row: dict = {"perception": perception, "family": family, "n": len(group), "crashed": len(group) - len(ok)}
        metrics = {
            "ds": [r.driving_score for r in ok], "rc": [r.route_completion for r in ok],
            "is": [r.infraction_penalty for r in ok], "collisions_per_km": [r.per_km() for r in ok],
            "collisions_per_km_leaderboard": [r.per_km_leaderboard() for r in ok],
            "min_ttc": [min(r.min_ttc, TTC_HORIZON) for r in ok],
            "bytes_per_agent_tick": [r.bytes_per_agent_tick for r in ok],
        }
        for name, values in metrics.items():
            row[f"{name}_mean"] = float(np.mean(values)) if values else math.nan
            row[f"{name}_std"] = float(np.std(values)) if values else math.nan
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- termination rules
BLOCKED_SPEED = 0.5  # m/s, V2Xverse's AgentBlockedTest threshold
BLOCKED_TIME = 30.0  # s
DEVIATION_M = 30.0  # InRouteTest offroad_max
SAFE_ROUTE_M = 15.0  # InRouteTest offroad_min (half of the max)
MAX_OFF_ROUTE_PCT = 30.0  # InRouteTest MAX_ROUTE_PERCENTAGE
COMPLETION_PCT = 99.0  # RouteCompletionTest PERCENTAGE_THRESHOLD
COMPLETION_DISTANCE = 10.0  # RouteCompletionTest DISTANCE_THRESHOLD
PROGRESS_SLACK = 1.0  # m of progress allowed per tick beyond the distance driven
_ENDING = {EventKind.ROUTE_DEVIATION, EventKind.BLOCKED, EventKind.TIMEOUT}


class EpisodeMonitor:
    """Tracks one episode tick by tick: route progress, infractions, min TTC and the end.

    Progress is the furthest arc length reached (``Route.project``), counted only within
    ``DEVIATION_M`` of the route and advancing per tick by at most the distance driven plus
    ``PROGRESS_SLACK`` (no jumping ahead where a route passes near itself). The episode ends when
    the route is completed (progress > 99 % and the goal within 10 m, the leaderboard's test), on
    route deviation (30 m from the route, or over 30 % of the route covered farther than 15 m from
    it), when blocked (below 0.5 m/s for 30 s in a row: the leaderboard counts this even while the
    ego waits legitimately, e.g. behind a stopped car; upstream ends one tick later, at > 30 s),
    on timeout (elapsed time > ``timeout``), or when the backend reports one of these kinds.
    Collisions and other events are kept as the backend reports them (once per contact);
    ``outside_route_lanes`` metres are summed into one entry, as the leaderboard's single event.
    ``rate_hz`` is the backend's tick rate (the rules themselves are in seconds and metres).
    """

    def __init__(self, route: Route, rate_hz: float, timeout: float | None = None) -> None:
        if rate_hz <= 0:
            raise ValueError(f"rate_hz must be > 0, got {rate_hz}")
        self.route, self.rate_hz = route, float(rate_hz)
        self.timeout = route_timeout(route.length) if timeout is None else float(timeout)
        self.progress = 0.0
        self.min_ttc = math.inf
        self.done = self.completed = False
        self.failure = ""  # infraction key of the rule that ended the episode
        self.events: list[Event] = []  # as recorded, including the terminations this monitor adds
        self._infractions = _empty_infractions()
        self._outside_m, self._outside_first = 0.0, None
        self._off_route_m = 0.0
        self._start: float | None = None
        self._time = 0.0
        self._last_xy: np.ndarray | None = None
        self._last_moving = 0.0

    @property
    def duration(self) -> float:
        return 0.0 if self._start is None else self._time - self._start

    def update(self, tick: Tick, ttc: float | None = None) -> bool:
        """Consume one tick (``ttc``: this tick's TTC if the caller has it, else it is computed
        from the ground truth); returns whether the episode has ended (later ticks are ignored)."""
        if self.done:
            return True
        if self._start is None:
            self._start = self._last_moving = tick.time
        self._time = tick.time
        for event in tick.events:
            self._record(event)
        distance = self._advance(tick.ego)
        self.min_ttc = min(self.min_ttc, self._ground_truth_ttc(tick) if ttc is None else float(ttc))
        self._check_end(tick, distance)
        return self.done

    def _record(self, event: Event) -> None:
        self.events.append(event)
        if event.kind is EventKind.OUTSIDE_ROUTE_LANES:
            self._outside_m += float(event.value)
            self._outside_first = self._outside_first or event
            return
        key = INFRACTION_KEYS[event.kind]
        self._infractions[key].append(Infraction(event.time, event.other, *map(float, event.xy), event.value))
        if event.kind in _ENDING:
            self._end(key)

    def _advance(self, ego: VehicleState) -> float:
        s, distance = self.route.project(ego.xy)
        driven = 0.0 if self._last_xy is None else float(np.linalg.norm(ego.xy - self._last_xy))
        self._last_xy = ego.xy
        if distance < DEVIATION_M:
            new = min(s, self.progress + driven + PROGRESS_SLACK)
            if new > self.progress:
                if distance > SAFE_ROUTE_M:
                    self._off_route_m += new - self.progress
                self.progress = new
        return distance

    def _check_end(self, tick: Tick, distance: float) -> None:
        if self.done:
            return
        ego = tick.ego
        pct = round(100.0 * self.progress / self.route.length, 2)
        if pct > COMPLETION_PCT and np.linalg.norm(ego.xy - self.route.waypoints[-1]) < COMPLETION_DISTANCE:
            self.done = self.completed = True
        elif distance >= DEVIATION_M or 100.0 * self._off_route_m / self.route.length > MAX_OFF_ROUTE_PCT:
            self._fail(EventKind.ROUTE_DEVIATION, tick)
        elif ego.speed >= BLOCKED_SPEED:
            self._last_moving = tick.time
        elif tick.time - self._last_moving >= BLOCKED_TIME - 1e-9:
            self._fail(EventKind.BLOCKED, tick)
        if not self.done and tick.time - self._start > self.timeout:
            self._fail(EventKind.TIMEOUT, tick)

    def _fail(self, kind: EventKind, tick: Tick) -> None:
        self._record(Event(kind, tick.time, "", (tick.ego.x, tick.ego.y)))

    def _end(self, key: str) -> None:
        self.done, self.failure = True, key

    @staticmethod
    def _ground_truth_ttc(tick: Tick) -> float:
        objs = tick.frame.objects
        if len(objs) == 0:
            return math.inf
        # The ego appears in its own ground truth: drop boxes centred on it.
        keep = np.linalg.norm(objs.boxes[:, :2] - tick.ego.xy, axis=1) > 1.0
        boxes = objs.boxes[keep]
        vel = objs.speeds[keep, None] * np.stack([np.cos(boxes[:, 6]), np.sin(boxes[:, 6])], -1)
        return time_to_collision(tick.ego, boxes, vel)

    def infractions(self) -> dict[str, list[Infraction]]:
        out = {k: list(v) for k, v in self._infractions.items()}
        if self._outside_m > 0:
            e = self._outside_first
            out["outside_route_lanes"] = [Infraction(e.time, "", *map(float, e.xy), self._outside_m)]
        return out

    def result(self, family: str, seed: int, perception: str, bytes_per_agent_tick: float = 0.0,
               crashed: str = "") -> EpisodeResult:
        """The episode's record so far (an unfinished or crashed episode scores its progress)."""
        infractions = self.infractions()
        rc, penalty, ds = score_route(infractions, self.route.length, self.progress, self.completed)
        if crashed:
            status = "Failed - Crashed"
        elif self.completed:
            status = "Completed"
        else:
            status = f"Failed - {FAILURES[self.failure]}" if self.failure else "Failed"
        return EpisodeResult(family, int(seed), perception, status, rc, penalty, ds, self.route.length,
                             self.duration, infractions, self.min_ttc, float(bytes_per_agent_tick), crashed)
