"""The prompt: ``V x num_transformer_submodules`` trainable vectors of the model's hidden size."""

from __future__ import annotations

import math

import torch
from torch import nn

from ...virtual import ReparametrisedPrompt
from .config import PromptTuningConfig


class PromptEmbedding(ReparametrisedPrompt):
    """Virtual token embeddings; on encoder-decoders the first ``V`` rows feed the encoder (peft
    stores a second block of ``V`` rows for the decoder, kept for checkpoint compatibility)."""

    def __init__(self, config: PromptTuningConfig, token_dim: int, submodules: int):
        V = config.num_virtual_tokens
        super().__init__(V, V * submodules, token_dim, None, dtype=torch.float32)

    def virtual_embeddings(self) -> torch.Tensor:
        return self.encoded()[: self.num_virtual_tokens]  # (V, d)

    @torch.no_grad()
    def init_from_tokens(self, word_embeddings: nn.Embedding, token_ids: list[int]) -> None:
        """Copy the embeddings of ``token_ids`` (repeated or cut to the number of rows)."""
        rows = self.embedding.weight.shape[0]
        ids = (token_ids * math.ceil(rows / len(token_ids)))[:rows]
        index = torch.tensor(ids, device=word_embeddings.weight.device)
        self.embedding.weight.copy_(word_embeddings(index).float())
