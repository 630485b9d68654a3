"""Learned sparse diffs: straight-through top-k scores or hard-concrete (L0) gates, at a target density."""

from .config import DiffPruningConfig
from .method import DiffPruningMethod

__all__ = ["DiffPruningConfig", "DiffPruningMethod"]
