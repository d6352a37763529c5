"""The experiment schema: one YAML in ``models/`` describes one experiment.

``data`` (format, root, grid, agents), ``model`` (encoder, fusion, head, each a registry name
plus constructor arguments), ``train`` (:class:`~coperception.train.trainer.TrainConfig`) and
``eval`` settings. Experiment YAMLs name ``base: _base.yaml`` and hold only their difference.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from coperception import config as cfgio
from coperception.comm.strategies import STRATEGIES
from coperception.data.agent_frames import DEFAULT_AGENT_FRAME
from coperception.data.augment import AugmentConfig
from coperception.data.cameras import ModalityConfig
from coperception.data.noise import PoseNoise
from coperception.encoders import ENCODERS
from coperception.errors import ConfigError
from coperception.fusion import FUSIONS
from coperception.geometry.grid import BEVGrid
from coperception.heads import HEADS
from coperception.heads.detection_head import DEFAULT_MAX_BOX_EXTENT
from coperception.train.trainer import TrainConfig

Range6 = tuple[float, float, float, float, float, float]


@dataclass(frozen=True)
class DataConfig:
    """Where the frames come from and how a sample is built (see CooperativeDataset)."""

    format: Literal["opv2v", "dair-v2x"] = "opv2v"
    root: str = "data/demo"
    train_split: str = "train"
    val_split: str = "validate"
    test_split: str = "test"
    lidar_range: Range6 = (-51.2, -51.2, -3.0, 51.2, 51.2, 1.0)
    voxel_size: tuple[float, float, float] = (0.4, 0.4, 4.0)
    max_agents: int = 5
    comm_range: float | None = 70.0
    max_points_per_pillar: int = 32
    pose_noise: PoseNoise | None = None
    augment: AugmentConfig | None = None
    on_error: Literal["raise", "skip"] = "raise"
    #: which agents use LiDAR and / or cameras, and the camera image size; None: LiDAR only.
    modality: ModalityConfig | None = None
    #: the frame a collaborator's cloud is encoded in: "ego_heading" (its origin, the ego's axes;
    #: fusion warps by a translation only), "own" (its LiDAR frame) or "ego" (OpenCOOD's
    #: proj_first); see coperception.data.dataset.
    agent_frame: Literal["own", "ego_heading", "ego"] = DEFAULT_AGENT_FRAME
    #: where clouds become pillars / voxels: "loader" (DataLoader workers; the batch carries
    #: padded cells), "device" (the batch carries the raw clouds, ~10x fewer bytes to pin and
    #: copy, and the detector groups them on its device) or "auto" (device when CUDA is available).
    voxelize_on: Literal["auto", "loader", "device"] = "auto"

    @property
    def grid(self) -> BEVGrid:
        return BEVGrid(self.lidar_range, self.voxel_size)


@dataclass(frozen=True)
class Component:
    """A registry entry: ``name`` and keyword ``args`` for its constructor (checked at load)."""

    name: str
    args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class HeadConfig:
    """The detection head: ``name`` in the HEADS registry and its anchors / assignment / filters."""

    name: str = "anchor"
    anchor_sizes: tuple[tuple[float, float, float], ...] = ((4.5, 2.0, 1.56),)
    anchor_z: float = -1.0
    anchor_rotations_deg: tuple[float, ...] = (0.0, 90.0)
    use_direction: bool = True
    pos_threshold: float = 0.6
    neg_threshold: float = 0.45
    max_box_extent: float | None = DEFAULT_MAX_BOX_EXTENT


@dataclass(frozen=True)
class ModelConfig:
    encoder: Component = Component("pointpillars")
    fusion: Component | None = Component("max")
    head: HeadConfig = HeadConfig()
    #: weight of the per-agent (unfused) detection loss that trains ego-only / late inference
    #: and the confidence maps used by message selection; 0 disables it.
    single_loss_weight: float = 1.0
    #: 3x3 conv-BN-ReLU layers applied (as a residual) to the fused map only, before the shared
    #: head: capacity to combine the agents' views that the per-agent path does not share; 0 = none.
    post_fusion_layers: int = 0
    #: communication strategy of intermediate fusion (comm.strategies.STRATEGIES name + args);
    #: None = dense fp32 maps.
    comm: Component | None = None
    #: the strategy of late inference (one that sends boxes).
    late_comm: Component = Component("late")


@dataclass(frozen=True)
class EvalConfig:
    score_threshold: float = 0.2
    nms_threshold: float = 0.15
    iou_thresholds: tuple[float, ...] = (0.3, 0.5, 0.7)
    global_sort: bool = True
    #: bytes per agent per frame for intermediate / late inference (None = unlimited)
    budget_bytes: int | None = None
    modes: tuple[Literal["single", "late", "early", "intermediate"], ...] = ("single", "late", "intermediate")
    batch_size: int = 1


@dataclass(frozen=True)
class ExperimentConfig:
    name: str
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    fusion_mode: Literal["early", "intermediate", "late"] = "intermediate"


def load_experiment(path: str | Path) -> ExperimentConfig:
    """Load and fully validate an experiment YAML (including component constructor arguments)."""
    cfg = cfgio.load(ExperimentConfig, path)
    validate_components(cfg, str(path))
    return cfg


def validate_components(cfg: ExperimentConfig, source: str) -> None:
    """Check registry names and constructor arguments -- nested component arguments too (a
    multimodal encoder's ``lidar`` / ``camera`` dicts) -- now rather than at build time."""
    m = cfg.model
    enc, fus = m.encoder, m.fusion
    _check_component("model.encoder", enc, ENCODERS, source)
    modality = cfg.data.modality
    if modality is not None and modality.uses_cameras and ENCODERS[enc.name].input_kind not in ("cameras", "batch"):
        raise ConfigError(f"{source}: data.modality gives agents cameras, but model.encoder {enc.name!r} reads "
                          f"LiDAR cells only; use 'multimodal'")
    if m.head.name not in HEADS:
        raise ConfigError(f"{source}: model.head.name {m.head.name!r} unknown; known: {sorted(HEADS)}")
    if fus is not None:
        _check_component("model.fusion", fus, FUSIONS, source)
    for key, comp in (("model.comm", m.comm), ("model.late_comm", m.late_comm)):
        if comp is None:
            continue
        _check_component(key, comp, STRATEGIES, source)
        for reserved in ("channels", "grid", "stride"):
            if reserved in comp.args:
                raise ConfigError(f"{source}: {key}.args.{reserved} is derived from the encoder; remove it")
    if STRATEGIES[m.late_comm.name].sends_features:
        raise ConfigError(f"{source}: model.late_comm {m.late_comm.name!r} sends features; late inference needs a "
                          f"strategy that sends boxes")
    if cfg.eval.budget_bytes is not None and cfg.eval.budget_bytes < 0:
        raise ConfigError(f"{source}: eval.budget_bytes must be >= 0, got {cfg.eval.budget_bytes}")
    if cfg.fusion_mode == "intermediate" and fus is None:
        raise ConfigError(f"{source}: fusion_mode 'intermediate' needs model.fusion")
    for reserved in ("grid", "stride"):
        for label, comp in (("encoder", enc), ("fusion", fus)):
            if comp is not None and reserved in comp.args:
                raise ConfigError(f"{source}: model.{label}.args.{reserved} is derived from data; remove it")


def _check_component(key: str, comp: Component, registry: dict[str, type], source: str) -> None:
    """``comp.name`` in ``registry`` and its arguments accepted by the class -- recursively for the
    arguments the class declares as nested components (``nested_components(args)``: argument name
    -> the class its dict is given to)."""
    if comp.name not in registry:
        raise ConfigError(f"{source}: {key}.name {comp.name!r} unknown; known: {sorted(registry)}")
    cls = registry[comp.name]
    cfgio.check_constructor_args(cls, comp.args, f"{source}: {key}.args")
    _check_nested(cls, comp.args, f"{source}: {key}.args")


def _check_nested(cls: type, args: dict[str, Any], where: str) -> None:
    nested = getattr(cls, "nested_components", None)
    if nested is None:
        return
    for arg, sub_cls in nested(args).items():
        sub_args = args.get(arg)
        if sub_args is None:
            continue
        if not isinstance(sub_args, dict):
            raise ConfigError(f"{where}.{arg} must be a mapping of {sub_cls.__name__} arguments, got {sub_args!r}")
        cfgio.check_constructor_args(sub_cls, sub_args, f"{where}.{arg}")
        for reserved in ("grid", "stride"):
            if reserved in sub_args:
                raise ConfigError(f"{where}.{arg}.{reserved} is derived from data; remove it")
        _check_nested(sub_cls, sub_args, f"{where}.{arg}")
