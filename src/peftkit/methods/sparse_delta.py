"""Sparse deltas, shared by BitFit, rule-based selection and diff pruning: adapter ``name`` changes
chosen entries of a wrapped module's parameters.

The wrapped module runs with ``W0 + delta`` for each chosen parameter
(:class:`~peftkit.methods.parameter_delta.ParameterDeltaLayer`, which full fine-tuning's layer
shares), where ``delta`` is zero outside a mask. What the delta is comes from the method's config
(:meth:`SparseDeltaConfig.make_delta`):

* :class:`FixedSparseDelta` (here): the mask is fixed when the adapter is made (BitFit, rule-based
  selection); only the selected entries exist as trainable values, so the trainable count is
  exactly the number of selected entries.
* learned masks (top-k scores, hard-concrete gates): :mod:`peftkit.methods.diff_pruning.layer`.

Either way the saved diff is sparse (flat ``indices`` + ``values`` per parameter) and merging adds
exactly the delta the model runs with outside training into the base weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..config import PeftConfig
from ..errors import AdapterError, CheckpointError, TargetError
from ..nn_types import trainable_dtype
from ..registry import LayerMethod
from ..targeting import iter_modules
from .parameter_delta import ParameterDeltaLayer, parameter_targets, tie_outside, wrap


def _key(path: str) -> str:
    return path.replace(".", "__")  # parameter names may not hold dots


@dataclass
class SparseDeltaConfig(PeftConfig):
    """Shared by methods that change chosen entries of the base parameters (a sparse delta).

    With ``target_modules=None`` every module holding parameters of its own is a candidate
    (except ``modules_to_save``); otherwise the shared targeting forms apply.
    """

    learned: ClassVar[bool] = False  # True: the mask is learned (top-k scores), else fixed at creation

    def parameter_masks(self, module: nn.Module, module_name: str) -> dict[str, torch.Tensor]:
        """Which entries of each of ``module``'s parameters this adapter may change (bool masks)."""
        return {p: torch.ones_like(t, dtype=torch.bool) for p, t in module.named_parameters()}

    def make_delta(self, params: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]) -> SparseDelta:
        """The trainable delta of one wrapped module (``masks``: its chosen parameters' entries)."""
        return FixedSparseDelta(params, masks)


class SparseDelta(nn.Module):
    """The delta of one adapter on one wrapped module, keyed by the base parameter's path."""

    shapes: dict[str, torch.Size]

    def delta(self, path: str) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def sparse(self, path: str) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover - abstract
        """``(indices (n,), values (n,))`` of the non-zero part of the delta (flat indices)."""
        raise NotImplementedError

    def load_sparse(self, path: str, indices: torch.Tensor, values: torch.Tensor) -> None:  # pragma: no cover
        raise NotImplementedError


class FixedSparseDelta(SparseDelta):
    """Trainable values at fixed flat indices: ``delta = scatter(indices, values)``."""

    def __init__(self, params: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]):
        super().__init__()
        self.shapes = {p: params[p].shape for p in masks}
        self.values = nn.ParameterDict()
        self.indices = nn.Module()  # one int64 buffer per parameter
        for path, mask in masks.items():
            idx = mask.flatten().nonzero().squeeze(1)  # (n,)
            self.indices.register_buffer(_key(path), idx)
            kw = {"dtype": trainable_dtype(params[path]), "device": params[path].device}
            self.values[_key(path)] = nn.Parameter(torch.zeros(idx.numel(), **kw))  # (n,)

    def delta(self, path: str) -> torch.Tensor:
        values, idx = self.values[_key(path)], getattr(self.indices, _key(path))
        flat = values.new_zeros(self.shapes[path].numel()).index_put((idx,), values)
        return flat.view(self.shapes[path])

    def sparse(self, path: str) -> tuple[torch.Tensor, torch.Tensor]:
        return getattr(self.indices, _key(path)), self.values[_key(path)].data

    def load_sparse(self, path: str, indices: torch.Tensor, values: torch.Tensor) -> None:
        old = self.values[_key(path)]
        self.indices.register_buffer(_key(path), indices.to(old.device, torch.int64))
        if values.shape == old.shape:
            with torch.no_grad():
                old.copy_(values.to(old.dtype))
            return
        self.values[_key(path)] = nn.Parameter(values.to(old), requires_grad=old.requires_grad)


class SparseDeltaLayer(ParameterDeltaLayer):
    """Wraps any module; adapter ``name`` runs it with ``W0 + delta`` for each chosen parameter."""

    adapter_containers = ("sparse_delta",)

    def __init__(self, base_layer: nn.Module):
        super().__init__(base_layer)
        self.sparse_delta = nn.ModuleDict()

    def add(self, name: str, config: SparseDeltaConfig, module_name: str) -> None:
        params = dict(self.base.named_parameters())
        masks = config.parameter_masks(self.base, module_name)  # {path: bool mask}
        self.sparse_delta[name] = config.make_delta(params, masks)

    def deltas(self, name: str) -> dict[str, torch.Tensor]:
        item = self.sparse_delta[name]
        return {path: item.delta(path) for path in item.shapes}

    # ---- saved form: flat indices + values per parameter ----------------------------------------
    def adapter_state_dict(self, name: str) -> dict[str, torch.Tensor]:
        if name not in self.sparse_delta:
            return {}
        item, out = self.sparse_delta[name], {}
        for path in item.shapes:
            idx, values = item.sparse(path)
            out[f"sparse_delta.{path}.indices"] = idx
            out[f"sparse_delta.{path}.values"] = values
        return out

    def load_adapter_state_dict(self, name: str, state: dict[str, torch.Tensor]) -> None:
        item = self.sparse_delta[name]
        missing = sorted(set(self.adapter_state_dict(name)) - set(state))
        if missing:
            raise AdapterError(f"adapter {name!r}: checkpoint lacks {missing[:4]}")
        for path, shape in item.shapes.items():
            idx, values = state[f"sparse_delta.{path}.indices"], state[f"sparse_delta.{path}.values"]
            if idx.shape != values.shape or idx.dim() != 1:
                raise CheckpointError(f"{path}: indices {tuple(idx.shape)} and values {tuple(values.shape)}")
            if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= shape.numel()):
                raise CheckpointError(
                    f"{path}: saved indices reach {int(idx.max())} but the parameter has {shape.numel()} "
                    "entries (different base model?)"
                )
            item.load_sparse(path, idx, values)


class SparseDeltaMethod(LayerMethod):
    """Wraps each targeted module in a :class:`SparseDeltaLayer`; subclasses narrow the targets."""

    layer_types = {nn.Module: SparseDeltaLayer}

    def inject(self, model: nn.Module, config: SparseDeltaConfig, adapter_name: str) -> list[str]:
        targets = self.targets(model, config)
        check_untied(model, targets, config, self.name)
        for path in targets:
            wrap(model, path, SparseDeltaLayer, config, adapter_name, self.name)
        return targets

    def targets(self, model: nn.Module, config: SparseDeltaConfig) -> list[str]:
        """Outermost modules with parameters, outside ``modules_to_save``, matching the targeting."""
        return parameter_targets(model, config, self.name)


def check_untied(model: nn.Module, paths: list[str], config: SparseDeltaConfig, method: str) -> None:
    """A chosen parameter tied to another module (GPT-2's wte and lm_head) would get two deltas, or
    change the other module on merge: both are errors naming the pair."""
    modules = dict(iter_modules(model))
    chosen: dict[int, str] = {}
    for path in paths:
        params = dict(modules[path].named_parameters())
        for name in config.parameter_masks(modules[path], path):
            where = f"{path}.{name}"
            if id(params[name]) in chosen:
                raise TargetError(
                    f"{method}: {where} is the same tensor as {chosen[id(params[name])]} (tied weights); "
                    "leave both modules out with exclude_modules"
                )
            chosen[id(params[name])] = where
    tie = tie_outside(model, paths, chosen)
    if tie is not None:
        raise TargetError(
            f"{method}: {tie[0]} is tied to {tie[1]}, which is not targeted; a delta "
            "would change both: leave both modules out with exclude_modules"
        )
