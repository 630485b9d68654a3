"""Composing adapters: weighted merging, LoRAHub search over merge weights, proxy-tuning at decoding."""

from .merge import COMBINATIONS, add_weighted_adapter, write_weighted
from .proxy import check_vocabularies, proxy_tuning_hook

__all__ = [
    "COMBINATIONS",
    "add_weighted_adapter",
    "check_vocabularies",
    "proxy_tuning_hook",
    "write_weighted",
]
