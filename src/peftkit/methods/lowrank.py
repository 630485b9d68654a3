"""What LoRA, AdaLoRA and AdaPtLoRA share: a low-rank side path beside a frozen linear layer.

A :class:`LowRankLayer` wraps ``nn.Linear`` (4-bit ones included) or GPT-2's ``Conv1D`` (weight
stored transposed: ``fan_in_fan_out``) and keeps, per adapter, its input dropout and its scale;
a method adds its own factors (``lora_A``/``lora_B``, AdaLoRA's ``lora_E``, AdaPtLoRA's gates) and
says how they combine in ``adapter_delta`` and ``delta_weight``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..config import PeftConfig
from ..errors import ConfigError
from ..layer import AdapterLayer
from ..nn_types import is_conv1d, linear_dims

BIASES = ("none", "all", "lora_only")  # which base biases a low-rank adapter also trains (peft's ``bias``)


class LowRankLayer(AdapterLayer):
    """A linear base with per-adapter ``lora_dropout`` and ``scaling``."""

    def __init__(self, base_layer: nn.Module):
        super().__init__(base_layer)
        self.fan_in_fan_out = is_conv1d(base_layer)
        self.in_features, self.out_features = linear_dims(base_layer)
        self.lora_dropout = nn.ModuleDict()
        self.scaling: dict[str, float] = {}  # derived from the config: alpha / r (or its variants)

    def add_path(self, name: str, dropout: float, scaling: float) -> None:
        """The parts every low-rank adapter has: its input dropout and its scale."""
        self.lora_dropout[name] = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.scaling[name] = scaling

    def dropped(self, name: str, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``dropout(x)`` in the adapter's dtype: what the factors multiply."""
        return self.lora_dropout[name](x.to(dtype))

    def orient(self, delta: torch.Tensor) -> torch.Tensor:
        """A ``(d_out, d_in)`` update in the base weight's layout (transposed for Conv1D)."""
        return delta.T if self.fan_in_fan_out else delta

    def delete(self, name: str) -> None:
        super().delete(name)
        self.scaling.pop(name, None)
        if name in self.lora_dropout:
            del self.lora_dropout[name]


def trained_biases(model: nn.Module, bias: str, targets: list[str]) -> list[str]:
    """The base biases ``bias`` trains: ``"all"`` every bias of the model (a ``modules_to_save`` copy trains
    and saves as a whole), ``"lora_only"`` those of the adapted layers, ``"none"`` none."""
    if bias == "all":
        skip = (".lora_", ".modules_to_save.", ".original_module.")
        return [
            n
            for n, _ in model.named_parameters()
            if n.endswith(".bias") and not any(s in f".{n}" for s in skip)
        ]
    if bias == "lora_only":
        return [
            f"{t}.base_layer.bias"
            for t in targets
            if getattr(model.get_submodule(t).base, "bias", None) is not None
        ]
    return []


def check_one_bias(config: Any, existing: dict[str, PeftConfig], model_name: str) -> None:
    """peft trains the base's biases for one adapter at most: two would share (and fight over) them."""
    with_bias = [n for n, c in existing.items() if getattr(c, "bias", "none") != "none"]
    if with_bias and config.bias != "none":
        raise ConfigError(
            "bias",
            f"{model_name} supports only 1 adapter with bias ({with_bias[0]!r} has bias="
            f"{existing[with_bias[0]].bias!r}). When using multiple adapters, set bias to 'none' for all "
            "adapters except one.",
        )
