"""Rule-based selection (``last_k_layers``, ``smallest_magnitude``): train chosen entries of the base
model's own parameters as a sparse diff (the layer and injection every sparse-delta method shares
are in :mod:`peftkit.methods.sparse_delta`)."""

from .config import SelectionConfig, smallest_magnitude_mask
from .method import SelectionMethod

__all__ = ["SelectionConfig", "SelectionMethod", "smallest_magnitude_mask"]
