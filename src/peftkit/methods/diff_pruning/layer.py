"""The learned masks live in :mod:`peftkit.methods.selection.layer` (:class:`TopKDelta`,
:class:`HardConcreteDelta`), used by the shared sparse-delta layer."""

from ..selection.layer import HardConcreteDelta, SparseDeltaLayer, TopKDelta

__all__ = ["HardConcreteDelta", "SparseDeltaLayer", "TopKDelta"]
