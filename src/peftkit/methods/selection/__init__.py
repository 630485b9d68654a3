"""Selection methods: train chosen entries of the base model's own parameters as a sparse diff.

``selection`` (rules ``last_k_layers`` and ``smallest_magnitude``) lives here, with the layer and
injection that ``bitfit`` and ``diff_pruning`` share.
"""

from .config import SelectionConfig, SparseDeltaConfig, smallest_magnitude_mask
from .layer import FixedSparseDelta, HardConcreteDelta, SparseDeltaLayer, TopKDelta
from .method import SelectionMethod, SparseDeltaMethod

__all__ = [
    "FixedSparseDelta",
    "HardConcreteDelta",
    "SelectionConfig",
    "SelectionMethod",
    "SparseDeltaConfig",
    "SparseDeltaLayer",
    "SparseDeltaMethod",
    "TopKDelta",
    "smallest_magnitude_mask",
]
