import numpy as np
import pytest

from coperception.drive.agent import AgentConfig, DrivingAgent, PerceivedObjects
from coperception.drive.dynamics import step_bicycle
from coperception.drive.footprints import footprints_overlap
from coperception.drive.metrics import EpisodeMonitor
from coperception.drive.records import Route, Tick, VehicleState
from coperception.errors import ConfigError
from coperception.structures.records import Frame, ObjectSet

ROUTE = Route(np.array([[0.0, 0.0], [50.0, 0.0], [100.0, 0.0]]))
PARKED = np.array([60.0, 0.0, 0.8, 4.6, 1.9, 1.6, 0.0])


def _tick(t, ego, boxes, classes):
    """A Tick whose ground truth holds the ego's own box and ``boxes``."""
    all_boxes = np.concatenate([ego.box()[None], boxes])
    objects = ObjectSet(all_boxes, np.arange(len(all_boxes)), [0, *classes], [ego.speed, *[0.0] * len(boxes)])
    return Tick(t, Frame("straight", round(t * 10), "ego", {}, objects), ego)


def _ground_truth(tick):
    o = tick.frame.objects
    return PerceivedObjects(o.boxes, o.classes, np.ones(len(o)))


def _drive(agent, ego, seconds, perceive, dt=0.1, reasons=None):
    states = []
    for k in range(round(seconds / dt)):
        tick = _tick(k * dt, ego, PARKED[None], [0])
        ego = step_bicycle(ego, agent.act(tick, perceive(k, tick)), dt, agent.limits)
        states.append(ego)
        if reasons is not None:
            reasons.append(agent.last_plan.reason)
    return states


def test_agent_on_ground_truth_stops_before_a_parked_car_blocking_its_lane():
    agent = DrivingAgent(ROUTE)
    states = _drive(agent, VehicleState(0.0, 0.0, 0.0, 0.0), 30.0, lambda k, tick: _ground_truth(tick))
    final = states[-1]
    gap = (PARKED[0] - 2.3) - (final.x + 2.3)
    assert final.speed == 0.0 and 3.5 <= gap <= 5.5
    assert max(s.speed for s in states) == pytest.approx(8.0, abs=0.3)  # it did cruise first
    assert not any(footprints_overlap(s.box(), PARKED) for s in states)
    assert abs(final.y) < 1e-6
    assert agent.last_plan.reason == "follow" and len(agent.last_tracks) == 1  # the ego was dropped


def test_missed_detections_are_bridged_by_the_tracker():
    # Every third frame the car is not detected: the track coasts and the agent still stops.
    def flaky(k, tick):
        gt = _ground_truth(tick)
        return PerceivedObjects.empty() if k % 3 == 2 else gt
    reasons = []
    states = _drive(DrivingAgent(ROUTE), VehicleState(0.0, 0.0, 0.0, 8.0), 25.0, flaky, reasons=reasons)
    gap = (PARKED[0] - 2.3) - (states[-1].x + 2.3)
    assert states[-1].speed == 0.0 and 3.5 <= gap <= 5.5
    first = reasons.index("follow")
    assert set(reasons[first:]) == {"follow"}  # a miss never lets it forget the car
    # Without a track history each miss would be a moment of "cruise".
    reasons = []
    _drive(DrivingAgent(ROUTE, AgentConfig(track_max_age=0.0)), VehicleState(0.0, 0.0, 0.0, 8.0), 25.0, flaky,
           reasons=reasons)
    assert "cruise" in reasons[reasons.index("follow"):]


def test_low_score_detections_are_ignored():
    agent = DrivingAgent(ROUTE, AgentConfig(score_threshold=0.5))
    ego = VehicleState(40.0, 0.0, 0.0, 6.0)
    tick = _tick(0.0, ego, PARKED[None], [0])
    gt = _ground_truth(tick)
    weak = PerceivedObjects(gt.boxes, gt.labels, np.full(len(gt.boxes), 0.4))
    assert agent.act(tick, weak).accel > 0 and agent.last_plan.reason == "cruise"
    agent2 = DrivingAgent(ROUTE, AgentConfig(score_threshold=0.3))
    assert agent2.act(tick, weak).accel < 0 and agent2.last_plan.reason == "follow"


def test_monitor_and_agent_complete_an_empty_route():
    agent, monitor = DrivingAgent(ROUTE), EpisodeMonitor(ROUTE, rate_hz=10)
    ego, k = VehicleState(0.0, 0.0, 0.0, 0.0), 0
    while not monitor.done and k < 400:
        tick = _tick(k * 0.1, ego, np.zeros((0, 7)), [])
        if monitor.update(tick):
            break
        ego = step_bicycle(ego, agent.act(tick, _ground_truth(tick)), 0.1, agent.limits)
        k += 1
    r = monitor.result("straight", 0, "oracle")
    assert r.status == "Completed" and r.driving_score == 100.0 and r.min_ttc == float("inf")
    assert 12.0 < r.duration < 16.0  # 100 m at up to 8 m/s from standstill


def test_config_validation_and_from_dict():
    with pytest.raises(ConfigError, match="cruise_speed"):
        AgentConfig(cruise_speed=0.0)
    with pytest.raises(ConfigError, match="score_threshold"):
        AgentConfig(score_threshold=1.5)
    with pytest.raises(ConfigError, match="min_lookahead"):
        AgentConfig(min_lookahead=20.0)
    with pytest.raises(ConfigError, match="speed_kp"):
        AgentConfig(speed_kp=float("nan"))
    with pytest.raises(ConfigError, match="unknown agent config keys \\['cruise'\\]"):
        AgentConfig.from_dict({"cruise": 5.0})
    cfg = AgentConfig.from_dict({"cruise_speed": 6.0, "speed_ki": 0.0})
    assert cfg.planner_config().cruise_speed == 6.0 and AgentConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="labels and scores"):
        PerceivedObjects(np.zeros((2, 7)), [0], [1.0, 1.0])
