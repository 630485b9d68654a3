"""AdaLoRA (Zhang et al. 2023): SVD-shaped LoRA whose rank budget is re-allocated during training."""

from .allocation import RankBudget, allocate, rank_map
from .config import AdaLoraConfig
from .layer import AdaLoraLinear
from .method import AdaLoraMethod

__all__ = ["AdaLoraConfig", "AdaLoraLinear", "AdaLoraMethod", "RankBudget", "allocate", "rank_map"]
