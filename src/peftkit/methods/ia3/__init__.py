"""(IA)^3 (Liu et al. 2022): learned vectors that rescale keys, values and feed-forward activations."""

from .config import IA3Config
from .layer import IA3Linear
from .method import IA3Method

__all__ = ["IA3Config", "IA3Linear", "IA3Method"]
