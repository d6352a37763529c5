import numpy as np
import pytest

from coperception.drive.tracks import Tracker


def _box(x, y, yaw=0.0):
    return np.array([[x, y, 0.8, 4.6, 1.9, 1.6, yaw]])


def test_constant_velocity_target_is_estimated_within_5_percent():
    rng = np.random.default_rng(0)
    tr = Tracker()
    v = np.array([8.0, -3.0])
    for k in range(30):
        t = k * 0.1
        xy = np.array([5.0, 2.0]) + v * t + rng.normal(0, 0.02, 2)
        out = tr.update(t, _box(*xy), [0])
    assert len(out) == 1 and out.ids.tolist() == [0]
    assert np.linalg.norm(out.velocities[0] - v) < 0.05 * np.linalg.norm(v)


def test_one_missed_frame_keeps_the_track_where_it_should_be():
    tr = Tracker()
    v = np.array([10.0, 0.0])
    for k in range(6):
        tr.update(k * 0.1, _box(*(v * k * 0.1)), [0])
    out = tr.update(0.6, np.zeros((0, 7)), [])  # missed
    assert len(out) == 1 and out.ages[0] == pytest.approx(0.1)
    assert out.boxes[0, :2] == pytest.approx([6.0, 0.0], abs=1e-6)
    out = tr.update(0.7, _box(7.0, 0.0), [0])
    assert out.ids.tolist() == [0] and out.ages[0] == 0.0
    assert out.velocities[0] == pytest.approx(v)


def test_a_track_dies_after_max_age():
    tr = Tracker(max_age_s=0.5)
    tr.update(1.0, _box(0.0, 0.0), [0])
    assert len(tr.update(1.4, np.zeros((0, 7)), [])) == 1
    assert len(tr.update(1.6, np.zeros((0, 7)), [])) == 0
    out = tr.update(1.7, _box(0.0, 0.0), [0])
    assert out.ids.tolist() == [1]  # a new track


def test_two_crossing_targets_keep_their_ids():
    tr = Tracker()
    va, vb = np.array([8.0, 0.0]), np.array([0.0, 8.0])
    a0, b0 = np.array([-20.0, 0.0]), np.array([1.0, -20.0])  # closest approach ~0.7 m at t = 2.5 s
    ids = None
    for k in range(50):
        t = k * 0.1
        boxes = np.concatenate([_box(*(a0 + va * t)), _box(*(b0 + vb * t), np.pi / 2)])
        order = [1, 0] if k % 2 else [0, 1]  # the detector's order must not matter
        out = tr.update(t, boxes[order], [0, 0])
        by_x = {int(i): tuple(b[:2]) for i, b in zip(out.ids, out.boxes)}
        if ids is None:
            ids = {"a": min(by_x, key=lambda i: by_x[i][0]), "b": max(by_x, key=lambda i: by_x[i][0])}
        assert by_x[ids["a"]] == pytest.approx(tuple(a0 + va * t))
        assert by_x[ids["b"]] == pytest.approx(tuple(b0 + vb * t))
    assert len(out) == 2


def test_classes_are_not_mixed_and_gate_is_respected():
    tr = Tracker(gate_m=3.0)
    tr.update(0.0, _box(0.0, 0.0), [0])
    out = tr.update(0.1, _box(0.5, 0.0), [4])  # a pedestrian where the car was
    assert sorted(out.ids.tolist()) == [0, 1]
    out = tr.update(0.2, _box(10.0, 0.0), [0])  # 10 m jump: beyond the gate
    assert sorted(out.ids.tolist()) == [0, 1, 2]  # the car's track coasts, the far box starts track 2
    assert out.boxes[out.ids == 2][0, 0] == 10.0 and out.boxes[out.ids == 0][0, 0] == 0.0  # one hit: no velocity yet


def test_bad_input():
    tr = Tracker()
    with pytest.raises(ValueError, match="labels"):
        tr.update(0.0, _box(0, 0), [0, 1])
    tr.update(1.0, _box(0, 0), [0])
    with pytest.raises(ValueError, match="decrease"):
        tr.update(0.5, _box(0, 0), [0])
    with pytest.raises(ValueError, match="gate_m"):
        Tracker(gate_m=0)
