"""``diff_pruning``'s registration: every parameter of the targeted modules, learned top-k mask."""

from __future__ import annotations

from ...registry import register_method
from ..selection.method import SparseDeltaMethod
from .config import DiffPruningConfig


@register_method("diff_pruning", config=DiffPruningConfig)
class DiffPruningMethod(SparseDeltaMethod):
    """Targets as :class:`~peftkit.methods.selection.SparseDeltaMethod`; the layer learns the mask."""
