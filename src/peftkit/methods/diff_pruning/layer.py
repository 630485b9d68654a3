"""The learned mask lives in :class:`~peftkit.methods.selection.layer.TopKDelta`, used by the shared layer."""

from ..selection.layer import SparseDeltaLayer, TopKDelta

__all__ = ["SparseDeltaLayer", "TopKDelta"]
