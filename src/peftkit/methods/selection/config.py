"""Rule-based selection: train a fixed subset of the base model's own parameters."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ...config import check_choice, check_positive_int, check_range
from ...errors import ConfigError
from ..sparse_delta import SparseDeltaConfig

RULES = ("last_k_layers", "smallest_magnitude")


def smallest_magnitude_mask(weight: torch.Tensor, density: float) -> torch.Tensor:
    """The ``density`` fraction of entries with the smallest ``|W0|`` (at least one), as a bool mask."""
    flat = weight.detach().abs().flatten()
    k = max(1, round(density * flat.numel()))
    idx = flat.topk(k, largest=False).indices  # (k,)
    return torch.zeros_like(flat, dtype=torch.bool).index_fill(0, idx, True).view(weight.shape)


@dataclass
class SelectionConfig(SparseDeltaConfig):
    """Train a fixed, rule-chosen part of the model's own weights (stored as a sparse diff).

    Args:
        rule: ``"last_k_layers"`` (every parameter of the last ``last_k`` transformer layers of the
            targeted modules) or ``"smallest_magnitude"`` (per parameter tensor, the ``density``
            fraction of entries with the smallest ``|W0|``: a fixed sparse mask chosen before training).
        last_k: how many final layers ``last_k_layers`` trains.
        density: fraction of each tensor ``smallest_magnitude`` trains, in (0, 1].
    """

    rule: str = "last_k_layers"
    last_k: int = 1
    density: float = 0.01

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("rule", self.rule, RULES)
        check_positive_int("last_k", self.last_k)
        check_range("density", self.density, 0.0, 1.0, hi_inclusive=True)
        if self.density <= 0:
            raise ConfigError("density", f"must be above 0, got {self.density!r}")

    def parameter_masks(self, module: nn.Module, module_name: str) -> dict[str, torch.Tensor]:
        if self.rule == "last_k_layers":
            return super().parameter_masks(module, module_name)
        return {p: smallest_magnitude_mask(t, self.density) for p, t in module.named_parameters()}
