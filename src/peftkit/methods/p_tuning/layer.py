"""The prompt encoder (peft's layout: ``embedding``, ``lstm_head``, ``mlp_head``) and templates."""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from ...errors import ConfigError
from ...virtual import ReparametrisedPrompt
from .config import PTuningConfig


class LstmMlp(nn.Module):
    """Bidirectional LSTM over the V pseudo tokens, then an MLP back to the model width."""

    def __init__(self, dim: int, hidden: int, layers: int, dropout: float):
        super().__init__()
        self.lstm_head = nn.LSTM(dim, hidden, layers, dropout=dropout, bidirectional=True, batch_first=True)
        self.mlp_head = nn.Sequential(
            nn.Linear(2 * hidden, 2 * hidden), nn.ReLU(), nn.Linear(2 * hidden, dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (V, d) -> (V, d)
        return self.mlp_head(self.lstm_head(x[None])[0][0])


def mlp(dim: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, dim)
    )


class PromptEncoder(ReparametrisedPrompt):
    """``V x num_transformer_submodules`` pseudo-token vectors through the encoder; flat once ejected
    (checkpoints, like peft's, hold the encoder's output)."""

    def __init__(self, config: PTuningConfig, token_dim: int, submodules: int, hidden: int | None):
        V = config.num_virtual_tokens

        def head() -> nn.Module:
            if config.encoder_reparameterization_type == "LSTM":
                return LstmMlp(token_dim, hidden, config.encoder_num_layers, config.encoder_dropout)
            return mlp(token_dim, hidden)

        make_head = head if hidden is not None else None
        super().__init__(V, V * submodules, token_dim, make_head, dtype=torch.float32)
        self.placeholder = config.placeholder_token_id

    def virtual_embeddings(self) -> torch.Tensor:
        return self.encoded()[: self.num_virtual_tokens]  # (V, d)

    def replaces_tokens(self) -> int | None:
        return self.placeholder


PIECE = re.compile(r"(\[P\]|\{\w+\})")


def render_template(tokenizer: Any, template: str, placeholder_token_id: int, **fields: str) -> list[int]:
    """Token ids of ``template``: each ``[P]`` becomes the placeholder id, ``{name}`` the field's text,
    ``{mask}`` the tokenizer's mask token; everything else (anchor tokens such as ``"?"``) is
    tokenized as written. Example: ``"[P][P] {text} [P] It was {mask}."``."""
    ids: list[int] = []
    for piece in (p for p in PIECE.split(template) if p):
        if piece == "[P]":
            ids.append(placeholder_token_id)
            continue
        if piece == "{mask}":
            if tokenizer.mask_token_id is None:
                raise ConfigError("template", "{mask} needs a tokenizer with a mask token")
            ids.append(tokenizer.mask_token_id)
            continue
        if piece.startswith("{") and piece.endswith("}"):
            name = piece[1:-1]
            if name not in fields:
                raise ConfigError("template", f"names field {{{name}}} but only {sorted(fields)} were given")
            piece = fields[name]
        ids += tokenizer(piece, add_special_tokens=False)["input_ids"]
    return ids
