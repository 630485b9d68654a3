"""The prefix: ``V`` rows of ``layers x 2 x kv_heads x head_dim`` values, flat or from an MLP."""

from __future__ import annotations

import torch
from torch import nn

from ...virtual import ReparametrisedPrompt


class PrefixEncoder(ReparametrisedPrompt):
    """peft's layout: ``embedding.weight`` is ``(V, layers * 2 * token_dim)`` (flat) or ``(V, token_dim)``
    followed by ``head = Linear(token_dim, hidden) -> tanh -> Linear(hidden, layers * 2 * token_dim)``."""

    writes_cache = True

    def __init__(self, V: int, layers: int, heads: int, token_dim: int, hidden: int | None):
        self.layers, self.heads, self.head_dim = layers, heads, token_dim // heads
        self.stored_layer = list(
            range(layers)
        )  # layer l reads the keys/values stored for layer stored_layer[l]
        out = layers * 2 * token_dim
        if hidden is None:
            super().__init__(V, V, out, None, dtype=torch.float32)
            return

        def mlp() -> nn.Module:
            return nn.Sequential(nn.Linear(token_dim, hidden), nn.Tanh(), nn.Linear(hidden, out))

        super().__init__(V, V, token_dim, mlp, dtype=torch.float32)

    def use_peft_decoder_layout(self) -> None:
        """On an encoder-decoder the prefix is the decoder's self-attention prefix, laid out as peft lays it
        (so checkpoints agree): peft repeats the stored prefix and reads it in steps of two layers, so
        decoder layer ``l`` gets the keys/values stored for layer ``2 l mod L``."""
        self.stored_layer = [(2 * layer) % self.layers for layer in range(self.layers)]

    def prefix(self) -> torch.Tensor:
        return self._key_values(self.encoded()[None])[:, :, 0]  # (layers, 2, H, V, hd)

    def prefix_batch(self, rows: int) -> torch.Tensor:
        """Every row's prefix computed as peft computes it (see :meth:`encoded_rows`): on one seed the
        MLP prefix trains to peft's parameters bit for bit."""
        return self._key_values(self.encoded_rows(rows))  # (layers, 2, rows, H, V, hd)

    def _key_values(self, flat: torch.Tensor) -> torch.Tensor:
        """``(B, V, layers * 2 * H * hd)`` -> ``(layers, 2, B, H, V, hd)``: stored layer l holds keys
        ``[l, 0]`` and values ``[l, 1]``; layer ``l`` reads stored layer ``stored_layer[l]``."""
        B, V = flat.shape[:2]
        kv = flat.view(B, V, self.layers * 2, self.heads, self.head_dim).permute(
            2, 0, 3, 1, 4
        )  # (2L, B, H, V, hd)
        kv = kv.reshape(self.layers, 2, B, self.heads, V, self.head_dim)
        return kv[self.stored_layer]

    @torch.no_grad()
    def init_from_activations(self, kv: torch.Tensor) -> None:
        """Set flat prefixes to keys/values ``(layers, 2, H, V, hd)`` (the inverse of :meth:`prefix`)."""
        if self.head is not None:
            raise ValueError("init_from_activations sets flat prefixes; this prefix has an MLP head")
        expected = (self.layers, 2, self.heads, self.num_virtual_tokens, self.head_dim)
        if tuple(kv.shape) != expected:
            raise ValueError(f"activations of shape {tuple(kv.shape)}, expected {expected}")
        flat = kv.permute(3, 0, 1, 2, 4).reshape(self.num_virtual_tokens, -1)  # (V, layers * 2 * H * hd)
        self.embedding.weight.copy_(flat.to(self.embedding.weight.dtype))
