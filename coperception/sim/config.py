"""Typed, frozen configuration of the embedded simulator, validated before any work starts.

A :class:`SimConfig` describes one kind of scenario: the town (a grid of multi-lane roads with
signalised junctions, buildings, parked cars), the traffic, the agents (connected vehicles and
road-side units) and their sensors. Presets live in :mod:`coperception.sim.scenarios`; a YAML
file may name one with ``preset:`` and override any key. :meth:`SimConfig.validate` rejects
impossible configurations (more vehicles than spawn slots, zero beams, negative ranges, a
placement on a road that does not exist) with a :class:`~coperception.errors.ConfigError`
naming the field and the value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Literal

from coperception.errors import ConfigError

#: Beam counts with a built-in vertical angle table (see :mod:`coperception.sim.lidar`).
LIDAR_CHANNELS: tuple[int, ...] = (64, 32, 16)
#: Leg of a junction, by the compass side it lies on.
Side = Literal["N", "E", "S", "W"]
Corner = Literal["NE", "NW", "SE", "SW"]
DYNAMIC_CLASSES: tuple[str, ...] = ("car", "van", "truck", "bus", "cyclist")


def _range(where: str, lo_hi: tuple[float, float], minimum: float = 0.0) -> None:
    lo, hi = lo_hi
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo < minimum or hi < lo:
        raise ConfigError(f"{where}: need {minimum} <= min <= max, got {list(lo_hi)}")


def _positive(where: str, value: float, allow_zero: bool = False) -> None:
    ok = value >= 0 if allow_zero else value > 0
    if not (math.isfinite(value) and ok):
        raise ConfigError(f"{where}: must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")


@dataclass(frozen=True)
class TownConfig:
    """Grid town: ``roads_x`` north-south roads by ``roads_y`` east-west roads, metres.

    The outermost roads form a ring, so every junction has 2 (corner), 3 or 4 legs and no
    vehicle leaves the town. ``outer_band`` is the depth of the built-up band outside the ring.
    """

    roads_x: int = 3
    roads_y: int = 3
    block_size: float = 90.0
    lanes_per_direction: int = 2
    lane_width: float = 3.5
    parking_width: float = 2.5
    sidewalk_width: float = 3.0
    outer_band: float = 30.0
    building_fill: float = 0.8
    building_lots: tuple[int, int] = (1, 3)
    building_height: tuple[float, float] = (8.0, 30.0)
    building_setback: tuple[float, float] = (0.5, 5.0)
    parked_density: float = 0.3
    poles: bool = True
    markings: bool = True

    @property
    def road_half_width(self) -> float:
        """Centre line to curb: lanes plus parking lane (m); also the junction half size."""
        return self.lanes_per_direction * self.lane_width + self.parking_width

    @property
    def segment_length(self) -> float:
        """Length of a lane between two junctions (m)."""
        return self.block_size - 2.0 * self.road_half_width

    def validate(self, where: str = "town") -> None:
        if self.roads_x < 2 or self.roads_y < 2:
            raise ConfigError(f"{where}.roads_x/roads_y: need >= 2 each, got {self.roads_x}, {self.roads_y}")
        if not 1 <= self.lanes_per_direction <= 4:
            raise ConfigError(f"{where}.lanes_per_direction: need 1..4, got {self.lanes_per_direction}")
        for name in ("block_size", "lane_width"):
            _positive(f"{where}.{name}", getattr(self, name))
        for name in ("parking_width", "sidewalk_width", "outer_band"):
            _positive(f"{where}.{name}", getattr(self, name), allow_zero=True)
        interior = self.block_size - 2 * (self.road_half_width + self.sidewalk_width)
        if interior < 10.0:
            raise ConfigError(f"{where}.block_size: {self.block_size} m leaves {interior:.1f} m between "
                              f"sidewalks; need >= 10 m (roads are {2 * self.road_half_width:.1f} m wide)")
        if not 0.0 <= self.building_fill <= 1.0 or not 0.0 <= self.parked_density <= 1.0:
            raise ConfigError(f"{where}.building_fill/parked_density: need 0..1, got "
                              f"{self.building_fill}, {self.parked_density}")
        if not 1 <= self.building_lots[0] <= self.building_lots[1] <= 6:
            raise ConfigError(f"{where}.building_lots: need 1 <= min <= max <= 6, got {list(self.building_lots)}")
        _range(f"{where}.building_height", self.building_height, minimum=1.0)
        _range(f"{where}.building_setback", self.building_setback)


@dataclass(frozen=True)
class LightConfig:
    """Fixed-time signal plan: each leg of a junction in turn gets green, yellow, all-red (s)."""

    green: float = 8.0
    yellow: float = 3.0
    all_red: float = 1.5

    def validate(self, where: str = "traffic.lights") -> None:
        _positive(f"{where}.green", self.green)
        _positive(f"{where}.yellow", self.yellow)
        _positive(f"{where}.all_red", self.all_red, allow_zero=True)


@dataclass(frozen=True)
class TrafficConfig:
    """Background traffic. ``vehicles`` counts non-connected motor vehicles (agents are extra)."""

    vehicles: int = 40
    cyclists: int = 0
    pedestrians: int = 0
    class_mix: dict[str, float] = field(default_factory=lambda: {"car": 0.7, "van": 0.15, "truck": 0.1, "bus": 0.05})
    speed_limit: float = 13.9
    speed_spread: float = 0.15
    slot_spacing: float = 14.0
    lights: LightConfig = field(default_factory=LightConfig)

    def validate(self, where: str = "traffic") -> None:
        for name in ("vehicles", "cyclists", "pedestrians"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{where}.{name}: must be >= 0, got {getattr(self, name)}")
        bad = sorted(set(self.class_mix) - {"car", "van", "truck", "bus"})
        if bad or not self.class_mix or any(v < 0 or not math.isfinite(v) for v in self.class_mix.values()) \
                or sum(self.class_mix.values()) <= 0:
            raise ConfigError(f"{where}.class_mix: need non-negative weights of car/van/truck/bus with a positive "
                              f"sum, got {self.class_mix}")
        _positive(f"{where}.speed_limit", self.speed_limit)
        if not 0.0 <= self.speed_spread < 0.5:
            raise ConfigError(f"{where}.speed_spread: need 0..0.5, got {self.speed_spread}")
        if self.slot_spacing < 13.0:
            raise ConfigError(f"{where}.slot_spacing: need >= 13 m (a bus plus a gap), got {self.slot_spacing}")
        self.lights.validate(f"{where}.lights")


@dataclass(frozen=True)
class LidarConfig:
    """Spinning LiDAR. Azimuth steps per revolution = ``firing_rate_hz / rotation_hz``
    (18 kHz at 10 Hz gives 1800, so 64 beams make 115,200 rays). Ranges in metres.

    Intensity = reflectivity * |cos(incidence)| * exp(-attenuation * range); a return is lost
    with probability ``dropout`` or when its intensity is below ``min_intensity``. The default
    dropout gives about 70k points per 64-beam scan in town, OPV2V's density (CARLA's ray-cast
    LiDAR drops 45% of returns by default).
    """

    channels: int = 64
    range: float = 120.0
    min_range: float = 0.5
    rotation_hz: float = 10.0
    firing_rate_hz: float = 18000.0
    noise_std: float = 0.02
    dropout: float = 0.3
    min_intensity: float = 0.005
    attenuation: float = 0.004
    height: float = 1.9
    rsu_height: float = 5.5
    rsu_pitch_deg: float = 5.0

    @property
    def azimuth_steps(self) -> int:
        return int(round(self.firing_rate_hz / self.rotation_hz))

    @property
    def rays_per_scan(self) -> int:
        return self.channels * self.azimuth_steps

    def validate(self, where: str = "lidar") -> None:
        if self.channels not in LIDAR_CHANNELS:
            raise ConfigError(f"{where}.channels: {self.channels} beams has no beam table; use one of {LIDAR_CHANNELS}")
        for name in ("range", "min_range", "rotation_hz", "firing_rate_hz", "height", "rsu_height"):
            _positive(f"{where}.{name}", getattr(self, name))
        if self.min_range >= self.range:
            raise ConfigError(f"{where}.min_range: {self.min_range} must be below range {self.range}")
        for name in ("noise_std", "min_intensity", "attenuation"):
            _positive(f"{where}.{name}", getattr(self, name), allow_zero=True)
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"{where}.dropout: need 0 <= dropout < 1, got {self.dropout}")
        if not 36 <= self.azimuth_steps <= 8000:
            raise ConfigError(f"{where}: firing_rate_hz / rotation_hz = {self.azimuth_steps} azimuth steps; "
                              "need 36..8000")
        if abs(self.rsu_pitch_deg) > 30:
            raise ConfigError(f"{where}.rsu_pitch_deg: need |pitch| <= 30, got {self.rsu_pitch_deg}")


@dataclass(frozen=True)
class CameraConfig:
    """Pinhole cameras rendered by ray casting (OPV2V layout: front, right, left, back)."""

    enabled: bool = False
    count: int = 4
    width: int = 400
    height: int = 300
    fov_deg: float = 100.0

    def validate(self, where: str = "camera") -> None:
        if not 1 <= self.count <= 4:
            raise ConfigError(f"{where}.count: need 1..4, got {self.count}")
        if not (8 <= self.width <= 4096 and 8 <= self.height <= 4096):
            raise ConfigError(f"{where}.width/height: need 8..4096 pixels, got {self.width}x{self.height}")
        if not 10.0 <= self.fov_deg <= 150.0:
            raise ConfigError(f"{where}.fov_deg: need 10..150, got {self.fov_deg}")


@dataclass(frozen=True)
class Placement:
    """A vehicle put on purpose: on the ``approach`` leg of ``junction`` (grid index, None = the
    ego junction), in ``lane`` (0 = next to the centre line), ``distance`` metres before the stop
    line, taking ``movement`` at that junction. ``role`` ego/cav makes it a connected agent."""

    role: Literal["ego", "cav", "npc"] = "npc"
    cls: Literal["car", "van", "truck", "bus", "cyclist"] = "car"
    approach: Side = "S"
    lane: int = 0
    distance: float = 20.0
    junction: tuple[int, int] | None = None
    speed: float | None = None
    movement: Literal["straight", "left", "right"] | None = None


@dataclass(frozen=True)
class RsuPlacement:
    """A road-side unit on the sidewalk ``corner`` of ``junction`` (None = the ego junction)."""

    corner: Corner = "NE"
    junction: tuple[int, int] | None = None


@dataclass(frozen=True)
class AgentsConfig:
    """Connected vehicles (``cavs`` includes the ego) and road-side units.

    ``ego_junction``: "center", "random" or a grid index; the ego starts on one of its legs
    (unless a placement says where). Other connected vehicles start within ``cav_radius`` m.
    ``ego_light``: the state of the ego's signal when the first frame is taken.
    """

    cavs: int = 3
    rsus: int = 1
    cav_radius: float = 60.0
    ego_junction: Literal["center", "random"] | tuple[int, int] = "center"
    ego_light: Literal["any", "red", "green"] = "any"
    placements: tuple[Placement, ...] = ()
    rsu_placements: tuple[RsuPlacement, ...] = ()


@dataclass(frozen=True)
class SimConfig:
    """One scenario family. Times in seconds; frames are emitted every ``frame_interval`` s."""

    preset: str = "town"
    town: TownConfig = field(default_factory=TownConfig)
    traffic: TrafficConfig = field(default_factory=TrafficConfig)
    lidar: LidarConfig = field(default_factory=LidarConfig)
    rsu_lidar_channels: int | None = None
    camera: CameraConfig = field(default_factory=CameraConfig)
    agents: AgentsConfig = field(default_factory=AgentsConfig)
    dt: float = 0.05
    frame_interval: float = 0.1
    warmup: float = 2.0
    gt_range: float = 120.0

    @property
    def ticks_per_frame(self) -> int:
        return int(round(self.frame_interval / self.dt))

    @property
    def junction_count(self) -> int:
        return self.town.roads_x * self.town.roads_y

    def with_overrides(self, **changes) -> "SimConfig":
        return replace(self, **changes)

    def validate(self) -> "SimConfig":
        """Raise ConfigError on anything impossible; return self so calls can chain."""
        self.town.validate()
        self.traffic.validate()
        self.lidar.validate()
        if self.rsu_lidar_channels is not None and self.rsu_lidar_channels not in LIDAR_CHANNELS:
            raise ConfigError(f"rsu_lidar_channels: {self.rsu_lidar_channels} has no beam table; use {LIDAR_CHANNELS}")
        self.camera.validate()
        _positive("dt", self.dt)
        _positive("gt_range", self.gt_range)
        _positive("warmup", self.warmup, allow_zero=True)
        ratio = self.frame_interval / self.dt
        if self.frame_interval <= 0 or abs(ratio - round(ratio)) > 1e-6 or self.dt > 0.1:
            raise ConfigError(f"frame_interval {self.frame_interval} must be a positive multiple of dt {self.dt} "
                              f"(dt <= 0.1 s)")
        self._validate_agents()
        return self

    def _validate_agents(self) -> None:
        a, t = self.agents, self.traffic
        if a.cavs < 1:
            raise ConfigError(f"agents.cavs: need >= 1 (the ego is the first connected vehicle), got {a.cavs}")
        if a.rsus < 0:
            raise ConfigError(f"agents.rsus: must be >= 0, got {a.rsus}")
        _positive("agents.cav_radius", a.cav_radius)
        slots = spawn_slot_count(self.town, t)
        wanted = a.cavs + t.vehicles + t.cyclists + sum(p.role == "npc" for p in a.placements)
        if wanted > slots:
            raise ConfigError(f"agents.cavs + traffic.vehicles + traffic.cyclists = {wanted} vehicles but the town has "
                              f"only {slots} spawn slots ({self.town.roads_x}x{self.town.roads_y} roads, "
                              f"{self.town.lanes_per_direction} lanes, slot_spacing {t.slot_spacing} m)")
        corners = 4 * self.junction_count
        if a.rsus > corners:
            raise ConfigError(f"agents.rsus: {a.rsus} road-side units but only {corners} junction corners")
        if len(a.rsu_placements) > a.rsus:
            raise ConfigError(f"agents.rsu_placements: {len(a.rsu_placements)} placements for {a.rsus} rsus")
        self._validate_placements()

    def _validate_placements(self) -> None:
        a, town = self.agents, self.town
        roles = [p.role for p in a.placements]
        if roles.count("ego") > 1 or roles.count("ego") + roles.count("cav") > a.cavs:
            raise ConfigError(f"agents.placements: roles {roles} exceed one ego and {a.cavs} connected vehicles")
        junctions = [a.ego_junction] if isinstance(a.ego_junction, tuple) else []
        junctions += [p.junction for p in a.placements if p.junction is not None]
        junctions += [r.junction for r in a.rsu_placements if r.junction is not None]
        for j in junctions:
            if not (0 <= j[0] < town.roads_x and 0 <= j[1] < town.roads_y):
                raise ConfigError(f"agents: junction {list(j)} outside the {town.roads_x}x{town.roads_y} road grid")
        for i, p in enumerate(a.placements):
            where = f"agents.placements[{i}]"
            if not 0 <= p.lane < town.lanes_per_direction:
                raise ConfigError(f"{where}.lane: {p.lane} but roads have {town.lanes_per_direction} "
                                  "lanes per direction")
            if not 0.0 <= p.distance <= town.segment_length - 6.0:
                raise ConfigError(f"{where}.distance: {p.distance} m; need 0..{town.segment_length - 6.0:.1f} m "
                                  f"(the lane is {town.segment_length:.1f} m long)")


def spawn_slot_count(town: TownConfig, traffic: TrafficConfig) -> int:
    """Number of spawn slots on all approach lanes (the most vehicles a town can start with)."""
    segments = (town.roads_x - 1) * town.roads_y + town.roads_x * (town.roads_y - 1)
    lanes = 2 * town.lanes_per_direction * segments
    return lanes * slots_per_lane(town.segment_length, traffic.slot_spacing)


def slots_per_lane(length: float, spacing: float) -> int:
    """Spawn slots on one lane of ``length`` m: centres ``spacing`` apart, 6 m clear of each end."""
    return max(0, int((length - 12.0) // spacing) + 1) if length >= 12.0 else 0
