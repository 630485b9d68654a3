"""Training: a compact, resumable loop (``Trainer``) and its config (``TrainConfig``)."""

from .config import TrainConfig
from .trainer import Trainer, TrainResult

__all__ = ["TrainConfig", "TrainResult", "Trainer"]
