"""Full fine-tuning (every parameter of the targeted modules trains) under the adapter API."""

from .config import FullConfig
from .layer import DeltaTree, FullLayer
from .method import FullMethod

__all__ = ["DeltaTree", "FullConfig", "FullLayer", "FullMethod"]
