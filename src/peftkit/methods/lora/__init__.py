"""LoRA: low-rank adaptation (Hu et al. 2021), with rsLoRA scaling and PiSSA initialisation."""

from .config import LoraConfig
from .layer import LoraEmbedding, LoraLinear
from .method import LoraMethod

__all__ = ["LoraConfig", "LoraEmbedding", "LoraLinear", "LoraMethod"]
