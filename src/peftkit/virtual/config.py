"""The fields every virtual-token method shares (peft's names)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..config import PeftConfig, check_positive_int
from ..errors import ConfigError


@dataclass
class PromptLearningConfig(PeftConfig):
    """Fields every virtual-token method shares (peft's names; ``None`` is read from the model).

    Args:
        num_virtual_tokens: number of virtual tokens (prompt length, prefix length).
        token_dim: the model's hidden size (prefix methods: key/value heads x head dim).
        num_transformer_submodules: 1, or 2 for encoder-decoders (peft stores both halves).
        num_attention_heads: attention heads (key/value heads for grouped-query attention).
        num_layers: transformer layers.
    """

    is_prompt_learning: ClassVar[bool] = True

    num_virtual_tokens: int = 20
    token_dim: int | None = None
    num_transformer_submodules: int | None = None
    num_attention_heads: int | None = None
    num_layers: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive_int("num_virtual_tokens", self.num_virtual_tokens)
        for name in ("token_dim", "num_transformer_submodules", "num_attention_heads", "num_layers"):
            if getattr(self, name) is not None:
                check_positive_int(name, getattr(self, name))
        for name in ("target_modules", "exclude_modules", "layers_to_transform"):
            if getattr(self, name) is not None:
                raise ConfigError(
                    name, f"{type(self).__name__} adds virtual tokens and targets no module; leave it unset"
                )
