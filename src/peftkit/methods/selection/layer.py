"""Sparse deltas: adapter ``name`` changes chosen entries of a wrapped module's parameters.

The wrapped module runs with ``W0 + delta`` for each chosen parameter
(:class:`~peftkit.methods.parameter_delta.ParameterDeltaLayer`, which full fine-tuning's layer
shares), where ``delta`` is zero outside a mask. Two kinds of delta, one per kind of selection:

* :class:`FixedSparseDelta`: the mask is fixed when the adapter is made (BitFit, rule-based
  selection); only the selected entries exist as trainable values, so the trainable count is
  exactly the number of selected entries.
* :class:`TopKDelta`: the mask is learned, the top-k entries of a score tensor per parameter
  (straight-through top-k, see :mod:`peftkit.methods.diff_pruning`).

Either way the saved diff is sparse (flat ``indices`` + ``values`` per parameter) and merging adds
exactly ``M * D`` into the base weights.
"""

from __future__ import annotations

import torch
from torch import nn

from ...errors import AdapterError, CheckpointError
from ..parameter_delta import ParameterDeltaLayer, delta_dtype


def _key(path: str) -> str:
    return path.replace(".", "__")  # parameter names may not hold dots


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
            kw = {"dtype": delta_dtype(params[path]), "device": params[path].device}
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


class TopKDelta(SparseDelta):
    """A dense trainable ``D`` and score ``S`` per parameter; the delta is ``topk_mask(S) * D``.

    The top-k mask has no gradient of its own; the straight-through estimator gives ``S`` the
    gradient ``M`` would get, ``dL/dS = dL/dE * D``, and ``D`` the dense gradient ``dL/dE``, so
    entries outside the mask keep learning and can enter it when their score overtakes.
    """

    def __init__(self, params: dict[str, torch.Tensor], density: float, score_scale: float = 1e-3):
        super().__init__()
        self.shapes = {p: t.shape for p, t in params.items()}
        self.keep = {p: max(1, round(density * t.numel())) for p, t in params.items()}
        self.dense, self.scores = nn.ParameterDict(), nn.ParameterDict()
        for path, p in params.items():
            kw = {"dtype": delta_dtype(p), "device": p.device}
            self.dense[_key(path)] = nn.Parameter(torch.zeros(p.shape, **kw))
            self.scores[_key(path)] = nn.Parameter(torch.rand(p.shape, **kw) * score_scale)

    def mask(self, path: str) -> torch.Tensor:
        scores = self.scores[_key(path)].detach().flatten()
        idx = scores.topk(self.keep[path]).indices  # (k,)
        return torch.zeros_like(scores).index_fill(0, idx, 1.0).view(self.shapes[path])

    def delta(self, path: str) -> torch.Tensor:
        D, S, M = self.dense[_key(path)], self.scores[_key(path)], self.mask(path)
        value = M * D
        if not torch.is_grad_enabled():
            return value
        # value M*D; gradient 1 to D (dense) and D to S (straight-through for the hard mask)
        return value.detach() + (D - D.detach()) + (S - S.detach()) * D.detach()

    def sparse(self, path: str) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.mask(path).flatten().nonzero().squeeze(1)  # (k,)
        return idx, self.dense[_key(path)].data.flatten()[idx]

    def load_sparse(self, path: str, indices: torch.Tensor, values: torch.Tensor) -> None:
        """A saved diff becomes scores 1 on its entries, 0 elsewhere: the top-k mask is exactly them."""
        D, S = self.dense[_key(path)], self.scores[_key(path)]
        idx = indices.to(D.device, torch.int64)
        with torch.no_grad():
            D.zero_().view(-1).index_copy_(0, idx, values.to(D))
            S.zero_().view(-1).index_fill_(0, idx, 1.0)
        self.keep[path] = idx.numel()


class SparseDeltaLayer(ParameterDeltaLayer):
    """Wraps any module; adapter ``name`` runs it with ``W0 + delta`` for each chosen parameter."""

    adapter_containers = ("sparse_delta",)

    def __init__(self, base_layer: nn.Module):
        super().__init__(base_layer)
        self.sparse_delta = nn.ModuleDict()

    def add(self, name: str, config, module_name: str) -> None:
        params = dict(self.base.named_parameters())
        masks = config.parameter_masks(self.base, module_name)  # {path: bool mask}
        if config.learned:
            self.sparse_delta[name] = TopKDelta({p: params[p] for p in masks}, config.density)
        else:
            self.sparse_delta[name] = FixedSparseDelta(params, masks)

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
