"""The adapter-layer protocol every method's layer follows.

An :class:`AdapterLayer` wraps a frozen base module by composition (``base_layer`` stays
addressable, so base checkpoint keys are stable) and holds any number of named adapters in
containers keyed by adapter name (``nn.ModuleDict`` / ``nn.ParameterDict``) listed in
``adapter_containers``. From that one declaration the protocol derives, for every method:
which parameters belong to an adapter, its state dict in the ``peft`` key scheme (adapter name
stripped), enabling/disabling, deletion, per-row adapters in a mixed batch, and merge/unmerge
for methods whose maths allows it (``delta_weight`` returns a tensor).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar

import torch
from torch import nn

from .checkpoint import weight_digest
from .errors import AdapterError, ConfigError

BASE_ROW = "__base__"  # row label in a mixed batch meaning "no adapter"


class AdapterLayer(nn.Module):
    """Base class for a wrapped layer. Subclasses implement ``add`` and ``adapter_delta``."""

    adapter_containers: ClassVar[tuple[str, ...]] = ()
    base_attr: ClassVar[str] = "base_layer"

    def __init__(self, base_layer: nn.Module):
        super().__init__()
        setattr(self, self.base_attr, base_layer)
        self.base_digest = weight_digest(base_layer)  # the weight as it was before merges and PiSSA
        self.active: list[str] = []
        self.merged: list[str] = []
        self.disabled = False
        self.row_adapters: list[str] | None = None

    # ---- what the adapter is -------------------------------------------------------------
    @property
    def base(self) -> nn.Module:
        return getattr(self, self.base_attr)

    @property
    def weight(self) -> torch.Tensor:
        """The base layer's weight: model code that reads ``layer.weight`` keeps working."""
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return getattr(self.base, "bias", None)

    def adapter_names(self) -> list[str]:
        names: list[str] = []
        for attr in self.adapter_containers:
            names += [n for n in getattr(self, attr) if n not in names]
        return names

    def add(self, name: str, config, module_name: str) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def adapter_parameters(self, name: str) -> Iterator[nn.Parameter]:
        for attr in self.adapter_containers:
            container = getattr(self, attr)
            if name not in container:
                continue
            item = container[name]
            yield from item.parameters() if isinstance(item, nn.Module) else [item]

    def adapter_state_dict(self, name: str) -> dict[str, torch.Tensor]:
        """Tensors of one adapter, keys relative to this layer, adapter name stripped (peft scheme)."""
        out: dict[str, torch.Tensor] = {}
        for attr in self.adapter_containers:
            container = getattr(self, attr)
            if name not in container:
                continue
            item = container[name]
            if isinstance(item, nn.Module):
                out.update({f"{attr}.{k}": v for k, v in item.state_dict().items()})
            else:
                out[attr] = item.data
        return out

    def load_adapter_state_dict(self, name: str, state: dict[str, torch.Tensor]) -> None:
        """Inverse of :meth:`adapter_state_dict`; shape mismatches and missing keys raise."""
        own = self.adapter_state_dict(name)
        missing = sorted(set(own) - set(state))
        if missing:
            raise AdapterError(f"adapter {name!r}: checkpoint lacks {missing}")
        for key, target in own.items():
            value = state[key]
            if value.shape != target.shape:
                raise AdapterError(
                    f"adapter {name!r}: {key} has shape {tuple(value.shape)} in the checkpoint but "
                    f"{tuple(target.shape)} in the model (different base model or rank?)"
                )
            with torch.no_grad():
                target.copy_(value.to(target.dtype))

    def delete(self, name: str) -> None:
        if name in self.merged:
            raise AdapterError(f"adapter {name!r} is merged; call unmerge_adapter() before deleting it")
        for attr in self.adapter_containers:
            container = getattr(self, attr)
            if name in container:
                del container[name]
        self.active = [a for a in self.active if a != name]

    def set_active(self, names: list[str]) -> None:
        if self.merged:
            raise AdapterError(f"adapters {self.merged} are merged; call unmerge_adapter() before switching")
        self.active = [n for n in names if n in self.adapter_names()]

    # ---- merging ---------------------------------------------------------------------------
    def delta_weight(self, name: str) -> torch.Tensor | None:
        """The change this adapter makes to ``base.weight``, or None when it cannot be merged."""
        return None

    def merge(self, names: list[str] | None = None) -> None:
        """Add adapters into the base weight. Merging an already merged adapter does nothing."""
        for name in names if names is not None else self.active:
            if name in self.merged or name not in self.adapter_names():
                continue
            delta = self.delta_weight(name)
            if delta is None:
                raise AdapterError(f"{type(self).__name__} cannot merge adapter {name!r}")
            self._dequantize_base()
            with torch.no_grad():
                self.base.weight.add_(delta.to(self.base.weight.dtype))
            self.merged.append(name)

    def _dequantize_base(self) -> None:
        """A 4-bit base cannot take a delta: it becomes its dequantised full-precision copy (for good)."""
        from .quantization import dequantize_linear, is_quantized

        if is_quantized(self.base):
            setattr(self, self.base_attr, dequantize_linear(self.base))

    def unmerge(self) -> None:
        while self.merged:
            name = self.merged.pop()
            with torch.no_grad():
                self.base.weight.sub_(self.delta_weight(name).to(self.base.weight.dtype))

    # ---- forward -----------------------------------------------------------------------------
    def adapter_delta(self, name: str, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """What adapter ``name`` adds to the base output for input ``x``."""
        raise NotImplementedError  # pragma: no cover - abstract

    def forward(self, x: torch.Tensor, *args, **kwargs):
        out = self.base(x, *args, **kwargs)
        if self.disabled:
            if self.merged:
                raise AdapterError("adapters are merged into the base; unmerge_adapter() before disabling")
            return out
        if self.row_adapters is not None:
            return self._mixed_forward(out, x, *args, **kwargs)
        for name in self.active:
            if name not in self.merged:
                out = out + self.adapter_delta(name, x, *args, **kwargs).to(out.dtype)
        return out

    def _mixed_forward(self, out: torch.Tensor, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """Each row of the batch uses its own adapter (``row_adapters[i]``), or none."""
        rows = rows_for_batch(self.row_adapters, x.shape[0])
        shared = out.untyped_storage().data_ptr() == x.untyped_storage().data_ptr()  # e.g. eval dropout
        out = out.clone() if torch.is_grad_enabled() or shared else out  # in place: no autograd, no alias
        for name in dict.fromkeys(rows):
            if name == BASE_ROW or name not in self.adapter_names():
                continue
            idx = torch.tensor([i for i, r in enumerate(rows) if r == name], device=x.device)
            out.index_add_(0, idx, self.adapter_delta(name, x[idx], *args, **kwargs).to(out.dtype))
        return out


def check_size(field: str, value: int, limit: int, module_name: str, why: str) -> None:
    """A size read from a config (a rank, a width) must fit the module it adapts. Checked before anything
    is allocated, so a corrupt or hostile adapter_config.json cannot ask for gigabytes."""
    if value > limit:
        raise ConfigError(field, f"{value} is too large for {module_name}: {why}, so at most {limit}")


def check_rank(field: str, r: int, d_in: int, d_out: int, module_name: str) -> None:
    """A low-rank factorisation ``B A`` of a ``d_out x d_in`` layer: ``rank(B A) <= min(d_in, d_out)``.
    Up to twice that is accepted, as a PiSSA adapter is saved with rank ``2 r``."""
    full = min(d_in, d_out)
    why = f"rank(B A) <= min(d_in, d_out) = {full} (twice that is accepted: PiSSA saves rank 2r)"
    check_size(field, r, 2 * full, module_name, why)


def rows_for_batch(rows: list[str], batch: int) -> list[str]:
    """Per-row adapter names for a batch; beam search and ``num_return_sequences`` repeat each input
    row k times in a row (``repeat_interleave``), so the names are repeated the same way."""
    if batch % len(rows):
        raise AdapterError(f"adapter_names has {len(rows)} entries but the batch has {batch} rows")
    k = batch // len(rows)
    return [r for r in rows for _ in range(k)]


def adapter_layers(model: nn.Module) -> Iterator[tuple[str, AdapterLayer]]:
    """All adapter layers of a model with their module paths (not descending into them)."""
    for name, module in model.named_modules():
        if isinstance(module, AdapterLayer):
            yield name, module
