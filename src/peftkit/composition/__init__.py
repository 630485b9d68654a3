"""Composing adapters: weighted merging, LoRAHub search over merge weights, proxy-tuning at decoding."""

from .merge import COMBINATIONS, add_weighted_adapter, write_weighted

__all__ = ["COMBINATIONS", "add_weighted_adapter", "write_weighted"]
