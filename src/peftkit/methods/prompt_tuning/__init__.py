"""Prompt tuning (Lester et al. 2021): trainable virtual token embeddings prepended to the input."""

from .config import PromptTuningConfig
from .layer import PromptEmbedding
from .method import PromptTuningMethod

__all__ = ["PromptEmbedding", "PromptTuningConfig", "PromptTuningMethod"]
