"""LoRA's registration: which layers it wraps, which biases it trains, and peft's config format."""

from __future__ import annotations

import math
import warnings
from typing import Any

from torch import nn
from transformers.pytorch_utils import Conv1D

from ...layer import adapter_layers
from ...nn_types import correct_fan_in_fan_out
from ...registry import LayerMethod, register_method
from ...replication import replicate_layers
from ...trainable_tokens import wrap_trainable_tokens
from .. import default_targets as defaults
from ..lowrank import check_one_bias, trained_biases
from .config import PISSA_NITER, LoraConfig, is_residual_init
from .layer import LoraEmbedding, LoraLinear


@register_method("lora", config=LoraConfig, peft_type="LORA")
class LoraMethod(LayerMethod):
    layer_types = {nn.Linear: LoraLinear, Conv1D: LoraLinear, nn.Embedding: LoraEmbedding}
    default_targets = defaults.LORA

    def inject(self, model: nn.Module, config: LoraConfig, adapter_name: str) -> list[str]:
        if config.layer_replication:
            replicate_layers(model, config.layer_replication)  # before targeting: each copy gets its LoRA
        targets = super().inject(model, config, adapter_name)
        for path in targets:
            layer = model.get_submodule(path)
            if isinstance(layer, LoraLinear):
                correct_fan_in_fan_out(config, layer.base)
        if config.trainable_token_indices is not None:
            wrap_trainable_tokens(model, config, adapter_name)
        return targets

    def extra_trainable(self, model: nn.Module, config: LoraConfig, targets: list[str]) -> list[str]:
        return trained_biases(model, config.bias, targets)

    def check_new_adapter(self, config: LoraConfig, existing: dict[str, Any]) -> None:
        check_one_bias(config, existing, "LoraModel")

    def to_peft_dict(self, config: LoraConfig, model: nn.Module, targets: list[str]) -> dict[str, Any]:
        data = super().to_peft_dict(config, model, targets)
        if config.residual_init:  # saved converted: rank 2r, same scale
            data.update(_residual_as_lora(config))
        data["init_lora_weights"] = (
            True if data["init_lora_weights"] == "kaiming" else data["init_lora_weights"]
        )
        layers = dict(adapter_layers(model))
        data["fan_in_fan_out"] = any(getattr(layers.get(t), "fan_in_fan_out", False) for t in targets)
        return data

    def translate_peft_fields(self, data: dict[str, Any]) -> dict[str, Any]:
        """peft's ``init_lora_weights``: True is ``"kaiming"``; PiSSA and OLoRA saved without conversion keep
        their init, which runs again on the base when the adapter is loaded (as peft does), so the base holds
        the same residual the adapter was trained on; loaded weights then replace the drawn ones."""
        init = data.get("init_lora_weights", True)
        if init in (True, None):
            return {"init_lora_weights": "kaiming"}
        if isinstance(init, str) and PISSA_NITER.fullmatch(init):
            warnings.warn(
                f"init_lora_weights={init!r}: a randomised SVD, run again on the base to load this adapter "
                "saved without conversion, gives a slightly different residual than the one it was trained "
                "on (peft reloads it the same way); save such adapters converted for exact reloading",
                stacklevel=3,
            )
        if init in (False, "gaussian") or is_residual_init(init):
            return {"init_lora_weights": init}
        warnings.warn(
            f"init_lora_weights={init!r} is not one of peftkit's inits; loading A and B as plain LoRA "
            "weights (exact only when that init left the base weights alone)",
            stacklevel=3,
        )
        return {"init_lora_weights": "kaiming"}


def _residual_as_lora(config: LoraConfig) -> dict[str, Any]:
    """A PiSSA/OLoRA adapter is exported as (A; A0), (B, -B0): twice the rank, alpha keeping the scale."""
    grow = math.sqrt(2) if config.use_rslora else 2
    return {
        "init_lora_weights": "kaiming",
        "r": 2 * config.r,
        "lora_alpha": config.lora_alpha * grow,
        "rank_pattern": {k: 2 * v for k, v in config.rank_pattern.items()},
        "alpha_pattern": {k: v * grow for k, v in config.alpha_pattern.items()},
    }
