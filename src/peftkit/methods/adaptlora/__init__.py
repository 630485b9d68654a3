"""AdaPtLoRA: a prompt per task plus LoRA shared by all tasks, gated per task and per layer."""

from .config import AdaPtLoraConfig
from .layer import GatedLoraLinear, TaskPrompts
from .method import AdaPtLoraMethod, gate_values

__all__ = ["AdaPtLoraConfig", "AdaPtLoraMethod", "GatedLoraLinear", "TaskPrompts", "gate_values"]
