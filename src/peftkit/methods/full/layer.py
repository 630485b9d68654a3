"""The full fine-tuning layer: the wrapped module runs with ``W0 + D`` for each of its parameters.

``D`` (one per parameter, per adapter, zero at init) is the trainable part; the module's own
forward is reused through :func:`torch.func.functional_call` (the forward, merging and mixed
batches of :class:`~peftkit.methods.parameter_delta.ParameterDeltaLayer`, which the selection
methods' layer shares), so any module can be wrapped and ``dL/dD = dL/dW`` exactly as in plain
fine-tuning.

A base parameter shared by several wrapped modules (GPT-2's ``wte`` and ``lm_head``, T5's
``shared`` and ``embed_tokens``) gets one delta, owned by the first layer and *shared* by the
others (:meth:`FullLayer.share`): it trains, saves and merges once, as the tied weight would.

Limits: model code that reads a wrapped module's parameters without calling the module sees
``W0`` alone. In a mixed batch, rows are split along the first input's leading dimension (a
leading 1, as for position ids shared by all rows, is broadcast); a module fed a table that is
not batch-major (T5's relative position bias) raises, unless its leading size happens to equal
the batch size or 1, in which case it is split as if it were one row per example.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from ...nn_types import trainable_dtype
from ..parameter_delta import ParameterDeltaLayer


class DeltaTree(nn.Module):
    """Zero deltas laid out like a module's parameters: same dotted names, same shapes.

    The state-dict keys are then the module's own (``weight``, ``bias``, ``projection.weight``).
    """

    @classmethod
    def zeros_like(cls, module: nn.Module) -> DeltaTree:
        tree = cls()
        for path, p in module.named_parameters():  # tied names inside the module appear once
            owner, leaf = tree.node(path, create=True)
            owner.register_parameter(leaf, nn.Parameter(torch.zeros_like(p, dtype=trainable_dtype(p))))
        return tree

    def node(self, path: str, create: bool = False) -> tuple[nn.Module, str]:
        """The sub-module holding ``path``'s parameter and the parameter's own name."""
        owner: nn.Module = self
        *parents, leaf = path.split(".")
        for part in parents:
            if part not in owner._modules and create:
                owner.add_module(part, DeltaTree())
            owner = owner._modules[part]
        return owner, leaf


class FullLayer(ParameterDeltaLayer):
    """Wraps any module; adapter ``name`` replaces each parameter ``W0`` by ``W0 + D``."""

    adapter_containers = ("full_delta",)

    def __init__(self, base_layer: nn.Module):
        super().__init__(base_layer)
        self.full_delta = nn.ModuleDict()
        self.shared: dict[str, set[str]] = {}  # adapter -> parameter paths whose delta another layer owns

    def add(self, name: str, config: Any = None, module_name: str = "") -> None:
        self.full_delta[name] = DeltaTree.zeros_like(self.base)
        self.shared[name] = set()

    # ---- the deltas ------------------------------------------------------------------------------
    def deltas(self, name: str) -> dict[str, nn.Parameter]:
        """Every delta adapter ``name`` applies here, keyed by the base parameter's path."""
        return dict(self.full_delta[name].named_parameters())

    def folded_deltas(self, name: str) -> dict[str, nn.Parameter]:
        return self.owned(name)

    def owned(self, name: str) -> dict[str, nn.Parameter]:
        """The deltas this layer owns (trains, saves, merges); shared ones belong to another layer."""
        return {k: v for k, v in self.deltas(name).items() if k not in self.shared[name]}

    def share(self, name: str, path: str, delta: nn.Parameter) -> None:
        """Use another layer's ``delta`` for parameter ``path`` (the two base parameters are one)."""
        owner, leaf = self.full_delta[name].node(path)
        setattr(owner, leaf, delta)
        self.shared[name].add(path)

    def adapter_parameters(self, name: str) -> Iterator[nn.Parameter]:
        yield from self.owned(name).values() if name in self.full_delta else ()

    def adapter_state_dict(self, name: str) -> dict[str, torch.Tensor]:
        if name not in self.full_delta:
            return {}
        return {f"full_delta.{k}": v.data for k, v in self.owned(name).items()}

    def delete(self, name: str) -> None:
        super().delete(name)
        self.shared.pop(name, None)
