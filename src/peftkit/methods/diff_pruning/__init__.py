"""Learned sparse diffs: straight-through top-k scores ending at an exact target density."""

from .config import DiffPruningConfig
from .method import DiffPruningMethod

__all__ = ["DiffPruningConfig", "DiffPruningMethod"]
