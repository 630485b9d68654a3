"""``diff_pruning``'s registration: every parameter of the targeted modules, learned mask
(top-k scores, or hard-concrete gates with their density penalty)."""

from __future__ import annotations

import torch
from torch import nn

from ...layer import adapter_layers
from ...registry import register_method
from ..sparse_delta import SparseDeltaLayer, SparseDeltaMethod
from .config import DiffPruningConfig
from .layer import HardConcreteDelta


@register_method("diff_pruning", config=DiffPruningConfig)
class DiffPruningMethod(SparseDeltaMethod):
    """Targets as :class:`~peftkit.methods.selection.SparseDeltaMethod`; the layer learns the mask."""

    def regularization_loss(
        self, model: nn.Module, config: DiffPruningConfig, adapter_name: str
    ) -> torch.Tensor | None:
        """Hard-concrete gates: ``l0_weight`` times each tensor's expected density above the target."""
        if config.mask != "hard_concrete" or config.l0_weight == 0:
            return None
        excess = [
            torch.relu(gates.expected_density(path) - config.density)
            for gates in hard_concrete_gates(model, adapter_name)
            for path in gates.shapes
        ]
        return config.l0_weight * torch.stack(excess).sum() if excess else None


def hard_concrete_gates(model: nn.Module, adapter_name: str) -> list[HardConcreteDelta]:
    """Every :class:`HardConcreteDelta` of adapter ``adapter_name`` in the model."""
    layers = [layer for _, layer in adapter_layers(model) if isinstance(layer, SparseDeltaLayer)]
    items = [layer.sparse_delta[adapter_name] for layer in layers if adapter_name in layer.sparse_delta]
    return [item for item in items if isinstance(item, HardConcreteDelta)]
