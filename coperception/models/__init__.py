"""Model assembly: the experiment schema, the composed :class:`CooperativeDetector` and builders."""

from coperception.models.config import ExperimentConfig, load_experiment
from coperception.models.detector import CooperativeDetector

__all__ = ["CooperativeDetector", "ExperimentConfig", "load_experiment"]
