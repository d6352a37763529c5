"""Scenario families: each builds a route through its junction movement with collaborators, and in
each occlusion family the scripted actor is hidden from the ego but seen by a collaborator when it
starts, an ego that ignores it collides, and an ego braking on the ground truth does not."""

from __future__ import annotations

import numpy as np
import pytest
from embedded_drivers import drive

from coperception.drive.embedded import EmbeddedBackend, closed_loop_config
from coperception.drive.records import EventKind, Route, route_timeout
from coperception.drive.scenario_kit import validate_route
from coperception.drive.scenarios import FAMILIES
from coperception.errors import ConfigError
from coperception.sim.roads import MOVEMENTS

FAST = {"lidar": {"channels": 16, "firing_rate_hz": 3600.0}}
COLLISIONS = (EventKind.COLLISION_PEDESTRIAN, EventKind.COLLISION_VEHICLE, EventKind.COLLISION_STATIC)
# The junction movement of each family's route (vehicle_turning: right or left by seed).
MOVES = {"unprotected_left": ("left",), "vehicle_turning": ("right", "left")}
TURN = {"straight": 0.0, "left": np.pi / 2, "right": -np.pi / 2}


@pytest.fixture(scope="module")
def fast():
    return EmbeddedBackend(closed_loop_config(FAST))


def test_registry_lists_the_six_families():
    assert sorted(FAMILIES) == sorted(["occluded_crossing", "signal_junction_crossing", "unsignalized_junction",
                                       "unprotected_left", "vehicle_turning", "cut_in"])


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_builds_a_route_with_collaborators(fast, family):
    info, tick = fast.reset(family, 0)
    sc = fast.scenario
    route = info.route
    assert info.family == family and info.timeout == route_timeout(route.length)
    np.testing.assert_allclose(route.waypoints[0], tick.ego.xy, atol=1e-6)  # the route starts at the ego
    validate_route(route, sc.sim.world.roads)
    assert "-1" in info.collaborators and any(c != "-1" for c in info.collaborators)
    assert set(info.collaborators) == set(tick.frame.observations) - {tick.frame.ego_id}
    # Every scripted actor is in the ground truth; the route turns as the family says.
    assert set(sc.actor_ids.values()) <= set(tick.frame.objects.ids.tolist())
    d0, d1 = np.diff(route.waypoints[:2], axis=0)[0], np.diff(route.waypoints[-2:], axis=0)[0]
    turn = np.angle(np.exp(1j * (np.arctan2(d1[1], d1[0]) - np.arctan2(d0[1], d0[0]))))
    movement = MOVEMENTS[sc.sim.world.roads.conn_movement[sc.route_lanes[1]]]
    assert movement in MOVES.get(family, ("straight",)) and turn == pytest.approx(TURN[movement], abs=0.05)


def test_route_off_the_road_is_a_config_error(fast):
    fast.reset("cut_in", 0)
    roads = fast.scenario.sim.world.roads
    inside_block = roads.centers[0] + roads.town.block_size / 2
    bad = Route(np.array([roads.points[0], inside_block]))
    with pytest.raises(ConfigError, match="waypoint 1 .* off the road network"):
        validate_route(bad, roads)


def _actor(sc) -> int:
    return sc.actor_ids[next(k for k in ("crossing", "runner", "oncoming", "cut_in") if k in sc.actor_ids)]


def _check_family(family: str, seed: int, fast: EmbeddedBackend) -> None:
    # An ego that ignores everything: hidden actor at its start, then a collision with it.
    full = EmbeddedBackend(closed_loop_config())
    info, tick = full.reset(family, seed)
    sc = full.scenario
    actor = _actor(sc)
    events, ticks = drive(full, info, tick, 12.0, brake_on_gt=False, until_collision=True)
    hits = [e for e in events if e.kind in COLLISIONS]
    assert [e.other for e in hits][:1] == [str(actor)], hits
    if sc.triggers:
        start = next(t for t in ticks if t.time >= sc.triggers[0].fired_at)  # the first frame after it starts
        row = np.flatnonzero(start.frame.objects.ids == actor)[0]
        points = {a: int(v[row]) for a, v in start.frame.visibility.items()}
        assert points.pop(start.frame.ego_id) == 0 and max(points.values()) > 0, points
    # An ego braking for ground-truth objects in its corridor: no collision at all.
    info, tick = fast.reset(family, seed)
    events, _ = drive(fast, info, tick, 12.0, brake_on_gt=True)
    assert [e for e in events if e.kind in COLLISIONS] == []


def test_occluded_crossing_needs_collaboration(fast):
    _check_family("occluded_crossing", 0, fast)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["signal_junction_crossing", "unsignalized_junction", "unprotected_left",
                                    "vehicle_turning", "cut_in"])
def test_occlusion_family_needs_collaboration(fast, family):
    _check_family(family, 0, fast)
