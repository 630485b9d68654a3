"""LoRA's registration: which layers it wraps, which biases it trains, and peft's config format."""

from __future__ import annotations

import math
import warnings
from typing import Any

from torch import nn
from transformers.pytorch_utils import Conv1D

from ...default_targets import LORA as DEFAULT_TARGETS
from ...layer import adapter_layers
from ...registry import LayerMethod, register_method
from ..lowrank import check_one_bias, trained_biases
from .config import LoraConfig
from .layer import LoraEmbedding, LoraLinear


@register_method("lora", config=LoraConfig, peft_type="LORA")
class LoraMethod(LayerMethod):
    default_targets = DEFAULT_TARGETS
    layer_types = {nn.Linear: LoraLinear, Conv1D: LoraLinear, nn.Embedding: LoraEmbedding}

    def extra_trainable(self, model: nn.Module, config: LoraConfig, targets: list[str]) -> list[str]:
        return trained_biases(model, config.bias, targets)

    def check_new_adapter(self, config: LoraConfig, existing: dict[str, Any]) -> None:
        check_one_bias(config, existing, "LoraModel")

    def to_peft_dict(self, config: LoraConfig, model: nn.Module, targets: list[str]) -> dict[str, Any]:
        data = super().to_peft_dict(config, model, targets)
        if config.init_lora_weights == "pissa":  # saved converted: rank 2r, same scale
            data.update(_pissa_as_lora(config))
        data["init_lora_weights"] = (
            True if data["init_lora_weights"] == "kaiming" else data["init_lora_weights"]
        )
        layers = dict(adapter_layers(model))
        data["fan_in_fan_out"] = any(getattr(layers.get(t), "fan_in_fan_out", False) for t in targets)
        data.update(use_dora=False, lora_bias=False)
        return data

    def translate_peft_fields(self, data: dict[str, Any]) -> dict[str, Any]:
        init = data.get("init_lora_weights", True)
        if init in (True, False, None):  # False (random B) only matters before weights are loaded
            return {"init_lora_weights": "kaiming"}
        if init == "gaussian":
            return {"init_lora_weights": "gaussian"}
        warnings.warn(
            f"init_lora_weights={init!r}: this adapter was saved without conversion and expects the residual "
            "base model saved with it; loading its A and B as plain LoRA weights",
            stacklevel=3,
        )
        return {"init_lora_weights": "kaiming"}


def _pissa_as_lora(config: LoraConfig) -> dict[str, Any]:
    """A PiSSA adapter is exported as (A; A0), (B, -B0): twice the rank, with alpha keeping the scale."""
    grow = math.sqrt(2) if config.use_rslora else 2
    return {
        "init_lora_weights": "kaiming",
        "r": 2 * config.r,
        "lora_alpha": config.lora_alpha * grow,
        "rank_pattern": {k: 2 * v for k, v in config.rank_pattern.items()},
        "alpha_pattern": {k: v * grow for k, v in config.alpha_pattern.items()},
    }
