"""P-tuning v2 (Liu et al. 2022): deep prompts at every layer for understanding tasks."""

from .config import PTuningV2Config
from .layer import DeepPrompt
from .method import PTuningV2Method

__all__ = ["DeepPrompt", "PTuningV2Config", "PTuningV2Method"]
