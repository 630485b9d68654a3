"""Prefix tuning (Li & Liang 2021): trainable key/value prefixes in front of every attention layer."""

from .config import PrefixTuningConfig
from .layer import PrefixEncoder
from .method import PrefixTuningMethod, eject

__all__ = ["PrefixEncoder", "PrefixTuningConfig", "PrefixTuningMethod", "eject"]
