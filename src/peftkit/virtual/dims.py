"""What a virtual-token method needs to know about its base model, read from the model's config."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from ..config import check_size
from ..errors import TargetError


@dataclass(frozen=True)
class ModelDims:
    """What a virtual-token method needs to know about its base, read from the model config."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    encoder_decoder: bool


def model_dims(model: nn.Module) -> ModelDims:
    config = getattr(model, "config", None)
    if config is None or not hasattr(model, "get_input_embeddings"):
        raise TargetError(
            f"{type(model).__name__} has no transformers config and input embeddings; virtual-token "
            "methods need a transformers model"
        )
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = _first(text, "hidden_size", "n_embd", "d_model")
    heads = _first(text, "num_attention_heads", "n_head", "num_heads")
    head_dim = getattr(text, "head_dim", None) or getattr(text, "d_kv", None) or hidden // heads
    return ModelDims(
        hidden=hidden,
        layers=_first(text, "num_hidden_layers", "n_layer", "num_layers"),
        heads=heads,
        kv_heads=getattr(text, "num_key_value_heads", None) or heads,
        head_dim=head_dim,
        encoder_decoder=bool(getattr(config, "is_encoder_decoder", False)),
    )


def _first(config: Any, *names: str) -> int:
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    raise TargetError(f"the model config has none of {list(names)}; set it in the adapter config")


def check_sizes(model: nn.Module, config: Any) -> None:
    """The sizes a config may give (a loaded adapter_config.json among them) fit the model, checked
    before anything is allocated: the virtual tokens fit its context, the dimensions are at most its own."""
    dims, name = model_dims(model), type(model).__name__
    text = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    positions = getattr(text, "max_position_embeddings", None)
    if isinstance(positions, int):
        why = f"its context holds max_position_embeddings = {positions} positions"
        check_size("num_virtual_tokens", config.num_virtual_tokens, positions, name, why)
    own = {"token_dim": dims.hidden, "num_layers": dims.layers, "num_attention_heads": dims.heads}
    for field, limit in {**own, "num_transformer_submodules": 2}.items():
        if getattr(config, field, None) is not None:  # a method without the field has nothing to check
            check_size(field, getattr(config, field), limit, name, f"the model's own is {limit}")
