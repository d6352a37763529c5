"""The embedded simulator: a seeded town, traffic and sensing agents producing :class:`Frame` s.

``Simulation(config, seed)`` builds the world, places traffic and agents and runs ``warmup``
seconds of traffic; each :meth:`Simulation.step` advances ``frame_interval`` (0.1 s, 10 Hz) in
ticks of ``dt`` and senses: all agents' LiDAR (and camera) rays are cast in one call against the
static world plus the road users of that instant, so occlusion is whatever the geometry makes
it. Everything random draws from generators seeded by ``seed``: equal seeds give equal frames.
Frame timestamps count ticks (with the default 20 Hz ticks they step by 2, as OPV2V's do).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np

from coperception.geometry.pose import se3_from_xyz_rpy
from coperception.sim.camera import camera_groups, camera_mounts, camera_rig, render
from coperception.sim.config import SimConfig
from coperception.sim.lidar import LidarModel, lidar_model, lidar_returns, rotate_rows
from coperception.sim.objects import CLASS_INDEX, PARTS_PER_OBJECT, part_boxes, sample_paint
from coperception.sim.pedestrians import spawn_pedestrians
from coperception.sim.raycast import Hits, Mesh, RayBatch, box_mesh, cast_rays, count_hits
from coperception.sim.spawn import FIRST_OBJECT_ID, populate
from coperception.sim.traffic import TrafficLights
from coperception.sim.traffic import step as traffic_step
from coperception.sim.world import METAL, build_world
from coperception.structures.records import AgentKind, AgentObservation, Camera, Frame, ObjectSet

log = logging.getLogger(__name__)
NO_OWN_OBJECT = -2


@dataclass(frozen=True)
class AgentSpec:
    """A sensing agent: id (vehicles: their object id, RSUs negative), kind, LiDAR head, the index
    of its own vehicle among the scene objects (NO_OWN_OBJECT for an RSU), an RSU's sensor pose,
    and the RSU's reported (virtual LiDAR) frame.

    A road-side LiDAR sits metres above the road and is pitched down. Like DAIR-V2X's "virtual
    LiDAR", its points are reported in a level frame at the vehicle LiDAR height above the ground
    under the sensor (same x, y, yaw), so that ground objects fall in the usual z range
    ([-3, 1] m) of every detector and of OpenCOOD's range filters. ``virtual_from_sensor`` maps
    the physical sensor frame into it.
    """

    agent_id: str
    kind: AgentKind
    lidar: LidarModel
    own_object: int
    fixed_pose: np.ndarray | None = None
    reported_pose: np.ndarray | None = None

    @property
    def virtual_from_sensor(self) -> np.ndarray | None:
        if self.reported_pose is None or self.fixed_pose is None:
            return None
        return np.linalg.inv(self.reported_pose) @ self.fixed_pose


class Simulation:
    """A running scenario; see the module docstring. ``threads``: ray-casting threads (0 = all
    cores; 1 when several simulations share the machine)."""

    def __init__(self, config: SimConfig, seed: int = 0, name: str | None = None, threads: int = 0):
        self.cfg = config.validate()
        self.threads = threads  # Embree threads per cast (0: all cores)
        self.name = name or f"{config.preset}_{seed:04d}"
        world_ss, traffic_ss, sensor_ss = np.random.SeedSequence(seed).spawn(3)
        self.rng_traffic = np.random.default_rng(traffic_ss)
        self.rng_sensor = np.random.default_rng(sensor_ss)
        rng_world = np.random.default_rng(world_ss)
        self.world = build_world(config.town, rng_world)
        roads = self.world.roads
        self.lights = TrafficLights(roads.legs, config.traffic.lights,
                                    self.rng_traffic.uniform(0, 1e3, len(roads.centers)))
        self.population = populate(config, self.world, self.lights, self.rng_traffic)
        self.vehicles = self.population.vehicles
        self.pedestrians = spawn_pedestrians(self.world.sidewalk_loops, config.traffic.pedestrians, self.rng_traffic)
        n_parked = len(self.world.parked_boxes)
        self.classes = np.concatenate([self.vehicles.cls, self.world.parked_classes,
                                       np.full(len(self.pedestrians), CLASS_INDEX["pedestrian"], np.int64)])
        self.ids = FIRST_OBJECT_ID + np.arange(len(self.classes), dtype=np.int64)
        self.paint, self.reflectivity = sample_paint(len(self.classes), self.classes, rng_world)
        self.agents = self._make_agents()
        self.static = Mesh.concat([self.world.static, self._rsu_poles()])
        self.time, self.tick = 0.0, 0
        self._lidar_starts = np.concatenate([[0], np.cumsum([a.lidar.rays for a in self.agents])]).astype(np.int64)
        self._own = np.array([a.own_object for a in self.agents], dtype=np.int64)
        self._reported_dirs, self._offsets = _reported_directions(self.agents)
        self._fixed_rows: dict[int, np.ndarray] = {}  # world directions of fixed (road-side) LiDARs
        self._dirs = np.empty((3, 0), np.float32)  # buffers, grown as needed
        self._aos = np.empty((0, 6), np.float32)
        log.debug("%s: %d vehicles, %d parked, %d pedestrians, %d agents", self.name, len(self.vehicles),
                  n_parked, len(self.pedestrians), len(self.agents))
        for _ in range(int(round(config.warmup / config.dt))):
            self._tick()

    # ----------------------------------------------------------------------------- set-up
    def _make_agents(self) -> list[AgentSpec]:
        cfg = self.cfg
        vehicle_model = lidar_model(cfg.lidar.channels, cfg.lidar.azimuth_steps)
        rsu_model = lidar_model(cfg.rsu_lidar_channels or cfg.lidar.channels, cfg.lidar.azimuth_steps)
        agents = [AgentSpec(str(self.ids[i]), AgentKind.VEHICLE, vehicle_model, i)
                  for i in range(self.population.n_cavs)]
        for k, (x, y, yaw) in enumerate(self.population.rsu_poses):
            pose = se3_from_xyz_rpy(x, y, cfg.lidar.rsu_height, pitch=np.radians(cfg.lidar.rsu_pitch_deg), yaw=yaw)
            virtual = se3_from_xyz_rpy(x, y, cfg.lidar.height, yaw=yaw)
            agents.append(AgentSpec(str(-(k + 1)), AgentKind.INFRASTRUCTURE, rsu_model, NO_OWN_OBJECT, pose, virtual))
        return agents

    def _rsu_poles(self) -> Mesh:
        poses = self.population.rsu_poses
        h = self.cfg.lidar.rsu_height - 0.35
        centres = np.column_stack([poses[:, :2], np.full(len(poses), h / 2)])
        return box_mesh(centres, np.tile([0.3, 0.3, h], (len(poses), 1)), poses[:, 2], *METAL)

    # ----------------------------------------------------------------------------- dynamics
    def _tick(self, accel_override: np.ndarray | None = None) -> None:
        traffic_step(self.vehicles, self.world.roads, self.lights.state(self.time), self.cfg.dt,
                     self.rng_traffic, accel_override)
        self.pedestrians.step(self.cfg.dt)
        self.time += self.cfg.dt
        self.tick += 1

    def step(self, controls: dict[str, float] | None = None) -> Frame:
        """Advance one frame interval and sense. ``controls``: connected-vehicle agent id ->
        longitudinal acceleration (m/s^2) replacing its IDM command (for closed-loop driving)."""
        override = None
        if controls:
            override = np.full(len(self.vehicles), np.nan)
            index = {a.agent_id: a.own_object for a in self.agents if a.kind is AgentKind.VEHICLE}
            for agent_id, acc in controls.items():
                override[index[agent_id]] = acc
        for _ in range(self.cfg.ticks_per_frame):
            self._tick(override)
        return self.sense()

    def frames(self, n: int):
        """Yield ``n`` consecutive frames."""
        for _ in range(n):
            yield self.step()

    # ----------------------------------------------------------------------------- state
    def object_boxes(self) -> tuple[np.ndarray, np.ndarray]:
        """All road users now: boxes (N, 7) world ``[x, y, z, l, w, h, yaw]`` and speeds (N,) m/s."""
        veh = self.vehicles
        boxes = np.concatenate([veh.boxes(self.world.roads), self.world.parked_boxes, self.pedestrians.boxes()])
        speeds = np.concatenate([veh.v, np.zeros(len(self.world.parked_boxes)), self.pedestrians.speeds()])
        return boxes, speeds

    def ground_truth(self) -> ObjectSet:
        """Every road user in the town (world frame), ids stable across frames."""
        boxes, speeds = self.object_boxes()
        return ObjectSet(boxes, self.ids, self.classes, speeds)

    def agent_poses(self, boxes: np.ndarray) -> np.ndarray:
        """(A, 4, 4) ``world_from_lidar`` of every agent given the current object boxes."""
        out = []
        for a in self.agents:
            if a.fixed_pose is not None:
                out.append(a.fixed_pose)
                continue
            x, y, _, _, _, h, yaw = boxes[a.own_object]
            out.append(se3_from_xyz_rpy(x, y, self._lidar_height(h), yaw=yaw))
        return np.stack(out)

    # ----------------------------------------------------------------------------- sensing
    def dynamic_mesh(self, boxes: np.ndarray) -> Mesh:
        centres, sizes, yaws = part_boxes(boxes, self.classes)
        return box_mesh(centres, sizes, yaws, np.repeat(self.reflectivity, PARTS_PER_OBJECT),
                        np.repeat(self.paint, PARTS_PER_OBJECT, axis=0))

    def sense(self) -> Frame:
        """Cast every agent's rays at the current scene and package the frame."""
        boxes, speeds = self.object_boxes()
        poses = self.agent_poses(boxes)
        rays, sel, rig = self._rays(poses)
        dynamic = self.dynamic_mesh(boxes)
        hits = cast_rays(self.static, dynamic, rays, self.world.ground, nthreads=self.threads,
                         buffer=self._aos[:len(rays)], aos_ready=True)
        points, agent, obj = lidar_returns(hits, self._reported_dirs, self._own, self.cfg.lidar, self.rng_sensor,
                                           dropout=0.0, ray_index=sel, offsets=self._offsets)
        counts = count_hits(obj, agent, len(self.agents), len(boxes))
        bounds = np.searchsorted(agent, np.arange(len(self.agents) + 1))
        cameras = self._cameras(rig, hits) if rig is not None else [()] * len(self.agents)
        near = np.linalg.norm(boxes[:, None, :2] - poses[None, :, :2, 3], axis=2).min(1) <= self.cfg.gt_range
        observations = {}
        for k, a in enumerate(self.agents):
            speed = float(speeds[a.own_object]) if a.own_object >= 0 else 0.0
            pose, cams = poses[k], cameras[k]
            if a.virtual_from_sensor is not None:  # points are already in the reported frame
                pose, cams = a.reported_pose, _cameras_to_virtual_frame(a, cams)
            observations[a.agent_id] = AgentObservation(
                agent_id=a.agent_id, kind=a.kind, world_from_lidar=pose, points=points[bounds[k]:bounds[k + 1]],
                cameras=cams, speed=speed, lidar_channels=a.lidar.channels)
        objects = ObjectSet(boxes[near], self.ids[near], self.classes[near], speeds[near])
        visibility = {a.agent_id: counts[k][near] for k, a in enumerate(self.agents)}
        return Frame(scenario=self.name, timestamp=self.tick, ego_id=self.agents[0].agent_id,
                     observations=observations, objects=objects, visibility=visibility)

    def _rays(self, poses: np.ndarray) -> tuple[RayBatch, np.ndarray, object]:
        """All rays of this step, in reused buffers (``self._dirs`` rows and ``self._aos``, the
        layout Embree takes): one group per LiDAR (agent order), then one per camera.

        The LiDAR's random dropout is applied before casting (a dropped return is independent of
        what its ray would hit, so tracing it is wasted work): only the surviving rays' sensor
        directions are gathered and rotated. Returns the batch, ``sel`` (the index of each LiDAR
        ray in the agents' concatenated ray tables) and the camera rig (None without cameras)."""
        rig = camera_rig(self.cfg.camera) if self.cfg.camera.enabled else None
        starts = self._lidar_starts
        p = self.cfg.lidar.dropout
        if p > 0:
            sel = np.flatnonzero(self.rng_sensor.random(int(starts[-1]), dtype=np.float32) >= p)
        else:
            sel = np.arange(starts[-1])
        cuts = np.searchsorted(sel, starts)
        sizes = list(np.diff(cuts)) + ([len(rig.pixel_dirs)] * len(rig.names) * len(self.agents) if rig else [])
        group_starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        dirs = self._buffers(int(group_starts[-1]))
        origins = [p[:3, 3] for p in poses]
        for k, a in enumerate(self.agents):
            local = sel[cuts[k]:cuts[k + 1]] - starts[k]
            out = dirs[:, group_starts[k]:group_starts[k + 1]]
            if a.fixed_pose is not None:
                if k not in self._fixed_rows:
                    self._fixed_rows[k] = rotate_rows(a.lidar.directions_rows, poses[k][:3, :3],
                                                      np.empty((3, a.lidar.rays), np.float32))
                for i in range(3):
                    np.take(self._fixed_rows[k][i], local, out=out[i])
            else:
                rows = a.lidar.directions_rows
                rotate_rows(np.stack([np.take(rows[i], local) for i in range(3)]), poses[k][:3, :3], out)
        if rig is not None:
            g = len(self.agents)
            for k, p in enumerate(poses):
                for origin, rotation in camera_groups(self._camera_mounts(k), p):
                    rotate_rows(rig.pixel_rows, rotation, dirs[:, group_starts[g]:group_starts[g + 1]])
                    origins.append(origin)
                    g += 1
        batch = RayBatch(np.array(origins), group_starts, dirs)
        batch.aos(self._aos[:len(batch)])
        return batch, sel, rig

    def _buffers(self, n: int) -> np.ndarray:
        """(3, n) view of the direction buffer, both buffers grown to hold ``n`` rays."""
        if self._dirs.shape[1] < n:
            self._dirs = np.empty((3, n), np.float32)
            self._aos = np.empty((n, 6), np.float32)
        return self._dirs[:, :n]

    def _camera_mounts(self, k: int) -> np.ndarray:
        """(K, 4, 4) lidar_from_camera of agent ``k``'s cameras (vehicles: on the body's edge)."""
        a = self.agents[k]
        if a.own_object < 0:
            return camera_mounts(self.cfg.camera.count)
        length, width, height = self.vehicles.size[a.own_object]
        return camera_mounts(self.cfg.camera.count, (length, width, height, self._lidar_height(height)))

    def _lidar_height(self, vehicle_height: float) -> float:
        """Roof LiDAR height above ground (m): the configured height, or 25 cm above a tall roof."""
        return max(self.cfg.lidar.height, vehicle_height + 0.25)

    def _cameras(self, rig, hits: Hits) -> list[tuple[Camera, ...]]:
        out = []
        first = len(self.agents)
        for k in range(len(self.agents)):
            group = first + k * len(rig.names)
            sl = slice(int(hits.rays.starts[group]), int(hits.rays.starts[group + len(rig.names)]))
            images, depths = render(rig, hits, sl)
            mounts = self._camera_mounts(k)
            out.append(tuple(Camera(name, rig.intrinsic, mounts[i], images[i], depths[i])
                             for i, name in enumerate(rig.names)))
        return out


def _reported_directions(agents: list[AgentSpec]) -> tuple[np.ndarray, np.ndarray]:
    """Each agent's LiDAR ray directions in the frame its points are reported in, concatenated
    as rows (3, L) float32, and the sensor origin in that frame (A, 3): the sensor frame itself, except
    for a road-side unit's virtual LiDAR frame (rotation and offset folded in once, so a point is
    ``offset + direction * range`` with no per-frame transform)."""
    dirs, offsets = [], np.zeros((len(agents), 3), np.float32)
    for k, a in enumerate(agents):
        m = a.virtual_from_sensor
        if m is None:
            dirs.append(a.lidar.directions)
        else:
            dirs.append((a.lidar.directions.astype(np.float64) @ m[:3, :3].T).astype(np.float32))
            offsets[k] = m[:3, 3]
    return np.ascontiguousarray(np.concatenate(dirs).T), offsets


def _cameras_to_virtual_frame(agent: AgentSpec, cameras) -> tuple:
    """Re-express an RSU's camera mounts in its reported virtual LiDAR frame."""
    m = agent.virtual_from_sensor
    return tuple(replace(c, lidar_from_camera=m @ c.lidar_from_camera) for c in cameras)
