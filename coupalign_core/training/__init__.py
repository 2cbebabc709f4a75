"""Training engine: YAML config, DDP under torchrun, AMP, exact resume, reports (``coupalign train``)."""

from .config import DataConfig, Interval, OptimConfig, TrainingConfig
from .schedule import PolyLR, build_optimizer, param_groups, poly_lr

__all__ = [
    "DataConfig", "Interval", "OptimConfig", "TrainingConfig", "PolyLR", "build_optimizer",
    "param_groups", "poly_lr",
]
