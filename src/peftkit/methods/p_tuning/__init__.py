"""P-tuning (Liu et al. 2021, "GPT Understands, Too"): virtual tokens from a prompt encoder, at
any positions of a template."""

from .config import PTuningConfig
from .layer import PromptEncoder, render_template
from .method import PTuningMethod

PromptEncoderConfig = PTuningConfig  # peft's name of the P-tuning config (its fields are peft's)

__all__ = ["PTuningConfig", "PromptEncoderConfig", "PTuningMethod", "PromptEncoder", "render_template"]
