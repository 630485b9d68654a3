"""peftkit's decoding engine: greedy, sampling, beam and contrastive search with a KV cache,
per-row adapters, per-step logits hooks, streaming, stop strings, and attention-mask helpers."""

from .config import STRATEGIES, DecodingConfig
from .engine import GenerationOutput, generate
from .hooks import LogitsHook, ModelLogitsHook, TextStreamer
from .masks import MASK_KINDS, build_mask, to_additive
from .stepper import CacheUnusedWarning, ModelStepper, StepOutput
from .stopping import cut_at_stop_string

__all__ = [
    "CacheUnusedWarning",
    "MASK_KINDS",
    "STRATEGIES",
    "DecodingConfig",
    "GenerationOutput",
    "LogitsHook",
    "ModelLogitsHook",
    "ModelStepper",
    "StepOutput",
    "TextStreamer",
    "build_mask",
    "cut_at_stop_string",
    "generate",
    "to_additive",
]
