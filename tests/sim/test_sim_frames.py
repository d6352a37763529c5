"""Frames: seeded reproducibility, stable object ids, agent conventions, cameras consistent with
the LiDAR (OpenCV axes, intrinsics, depth)."""

from __future__ import annotations

import numpy as np

from coperception.sim.simulation import Simulation
from coperception.structures.records import OBJECT_CLASSES


def _frames(cfg, seed, n=3):
    return list(Simulation(cfg, seed=seed).frames(n))


def test_same_seed_gives_identical_frames(tiny_config):
    cfg = tiny_config()
    a, b = _frames(cfg, 11), _frames(cfg, 11)
    for fa, fb in zip(a, b):
        assert (fa.scenario, fa.timestamp, fa.agent_ids) == (fb.scenario, fb.timestamp, fb.agent_ids)
        np.testing.assert_array_equal(fa.objects.boxes, fb.objects.boxes)
        np.testing.assert_array_equal(fa.objects.ids, fb.objects.ids)
        for k in fa.observations:
            np.testing.assert_array_equal(fa.observations[k].points, fb.observations[k].points)
            np.testing.assert_array_equal(fa.observations[k].world_from_lidar, fb.observations[k].world_from_lidar)
            np.testing.assert_array_equal(fa.visibility[k], fb.visibility[k])
    c = _frames(cfg, 12, 1)[0]
    assert not np.array_equal(c.ego.world_from_lidar, a[0].ego.world_from_lidar) or \
        len(c.objects) != len(a[0].objects) or not np.array_equal(c.objects.boxes, a[0].objects.boxes)


def test_frame_conventions(tiny_config):
    frames = _frames(tiny_config(), 4, 3)
    assert [f.timestamp for f in frames] == [frames[0].timestamp + 2 * i for i in range(3)]  # 10 Hz of 20 Hz ticks
    first, last = frames[0], frames[-1]
    ids = set(first.objects.ids) & set(last.objects.ids)
    assert len(ids) > 20  # stable ids across frames
    for frame in frames:
        objs = frame.objects
        assert np.all(objs.ids > 0) and len(np.unique(objs.ids)) == len(objs)
        assert objs.classes.min() >= 0 and objs.classes.max() < len(OBJECT_CLASSES)
        assert set(objs.classes) >= {0, 4}  # cars and pedestrians
        cars = objs.boxes[objs.classes == 0]
        assert 3.7 <= cars[:, 3].min() and cars[:, 3].max() <= 5.3 and 4.2 < cars[:, 3].mean() < 4.8
        np.testing.assert_allclose(objs.boxes[objs.classes <= 3, 2], objs.boxes[objs.classes <= 3, 5] / 2)
        for agent_id, obs in frame.observations.items():
            assert obs.points.dtype == np.float32 and obs.points.shape[1] == 4
            assert frame.visibility[agent_id].shape == (len(objs),) and frame.visibility[agent_id].dtype == np.int32
            if not obs.is_infrastructure:  # a vehicle agent is an object with the same id, unseen by itself
                k = np.flatnonzero(objs.ids == int(agent_id))
                assert len(k) == 1 and frame.visibility[agent_id][k[0]] == 0
                np.testing.assert_allclose(obs.world_from_lidar[:2, 3], objs.boxes[k[0], :2], atol=1e-6)
    # The ego moves forward along its heading (or waits at a light).
    d = last.ego.world_from_lidar[:2, 3] - first.ego.world_from_lidar[:2, 3]
    assert d @ first.ego.world_from_lidar[:2, 0] >= -1e-6


def test_cameras_agree_with_the_lidar(tiny_config):
    cfg = tiny_config(camera={"enabled": True, "count": 4, "width": 160, "height": 120, "fov_deg": 90.0},
                      lidar={"noise_std": 0.0, "dropout": 0.0})
    frame = Simulation(cfg, seed=2).step()
    obs = frame.ego
    assert [c.name for c in obs.cameras] == ["camera0", "camera1", "camera2", "camera3"]
    cam = obs.cameras[0]
    assert cam.image.shape == (120, 160, 3) and cam.image.dtype == np.uint8 and cam.depth.shape == (120, 160)
    assert cam.image.std() > 10  # shaded scene, not a flat colour
    np.testing.assert_allclose(cam.intrinsic[0, 0], 80.0)  # W / (2 tan 45 deg)
    # camera0 looks along the LiDAR's +x: its optical axis (OpenCV z) is LiDAR x.
    np.testing.assert_allclose(cam.lidar_from_camera[:3, 2], [1, 0, 0], atol=1e-9)
    np.testing.assert_allclose(cam.lidar_from_camera[:3, 1], [0, 0, -1], atol=1e-9)  # y down
    # Project LiDAR points into the image: depth at their pixel matches their camera-frame z.
    pts = obs.points[:, :3].astype(np.float64)
    cam_from_lidar = np.linalg.inv(cam.lidar_from_camera)
    p = pts @ cam_from_lidar[:3, :3].T + cam_from_lidar[:3, 3]
    front = p[:, 2] > 2.0
    uv = (p[front] @ cam.intrinsic.T)
    u, v = uv[:, 0] / uv[:, 2], uv[:, 1] / uv[:, 2]
    inside = (u >= 0) & (u < 160) & (v >= 0) & (v < 120)
    assert inside.sum() > 100
    depth = cam.depth[v[inside].astype(int), u[inside].astype(int)]
    rel = np.abs(depth - p[front][inside, 2]) / p[front][inside, 2]
    assert np.median(rel) < 0.02
    sky = cam.depth == 0
    assert sky.any() and (~sky).any() and sky[:10].mean() > sky[-10:].mean()  # sky above, ground below
