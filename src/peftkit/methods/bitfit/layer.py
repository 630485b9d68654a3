"""BitFit's layer is the shared sparse-delta layer with a mask over the biases only."""

from ..selection.layer import SparseDeltaLayer

__all__ = ["SparseDeltaLayer"]
