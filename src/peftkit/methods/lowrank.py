"""What LoRA, AdaLoRA and AdaPtLoRA share: a low-rank side path beside a frozen linear layer.

A :class:`LowRankLayer` wraps ``nn.Linear`` (4-bit ones included) or GPT-2's ``Conv1D`` (weight
stored transposed: ``fan_in_fan_out``) and keeps, per adapter, its input dropout and its scale;
a method adds its own factors (``lora_A``/``lora_B``, AdaLoRA's ``lora_E``, AdaPtLoRA's gates) and
says how they combine in ``adapter_delta`` and ``delta_weight``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..layer import AdapterLayer
from ..nn_types import is_conv1d, linear_dims


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
