"""Training: one trainer (AMP, DDP via torchrun, atomic checkpoints, exact resume, TensorBoard)."""

from coperception.train.checkpoint import load_checkpoint, load_model_state, save_checkpoint
from coperception.train.distributed import DistInfo, ResumableSampler, init_distributed
from coperception.train.trainer import TrainConfig, Trainer

__all__ = ["DistInfo", "ResumableSampler", "TrainConfig", "Trainer", "init_distributed",
           "load_checkpoint", "load_model_state", "save_checkpoint"]
