"""The adapter-layer protocol every method's layer follows.

An :class:`AdapterLayer` wraps a frozen base module by composition (``base_layer`` stays
addressable, so base checkpoint keys are stable) and holds any number of named adapters in
containers keyed by adapter name (``nn.ModuleDict`` / ``nn.ParameterDict``) listed in
``adapter_containers``. From that one declaration the protocol derives, for every method:
which parameters belong to an adapter, its state dict in the ``peft`` key scheme (adapter name
stripped), enabling/disabling, deletion, per-row adapters in a mixed batch (:func:`peftkit.rows.mix_rows`
with the routing :class:`~peftkit.PeftModel` makes current), and merge/unmerge for methods whose maths
allows it (``delta_weight``, and ``delta_bias``, return tensors; a method whose merge is not a sum, such
as DoRA's rescaling or IA3's product, overrides ``merge_one``/``unmerge_one``, and ``adapted`` /
``mixed_forward`` when its output is not ``base(x)`` plus deltas). :func:`attach` puts a layer class at a
module path (wrapping the module, or joining the layer of that class already there) for every method.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar

import torch
from torch import nn

from .checkpoint import weight_digest
from .errors import AdapterError, TargetError
from .nn_types import module_device, replace_parameters, trainable_dtype
from .rows import current_rows, mix_rows


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

    def join(self, name: str, config, module_name: str) -> None:
        """Add adapter ``name``; its new modules follow the base's train/eval mode."""
        self.add(name, config, module_name)
        self.train(self.base.training)

    def new_tensor_kwargs(self) -> dict:
        """``device`` and ``dtype`` for a new adapter tensor on this base (fp32 on a bf16/4-bit base)."""
        return {"device": module_device(self.base), "dtype": trainable_dtype(self.base)}

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

    def to_meta(self, name: str) -> None:
        """Put adapter ``name``'s tensors on the meta device (no memory, no values): ``low_cpu_mem_usage``,
        for an adapter whose weights are about to be loaded (:meth:`materialize` first)."""
        self._replace_tensors(name, lambda t: torch.empty_like(t, device="meta"))

    def materialize(self, name: str) -> None:
        """Give adapter ``name``'s meta tensors storage on the base's device (values to be loaded)."""
        device = module_device(self.base)
        self._replace_tensors(name, lambda t: torch.empty_like(t, device=device) if t.is_meta else t)

    def _replace_tensors(self, name: str, make) -> None:
        for attr in self.adapter_containers:
            container = getattr(self, attr)
            if name not in container:
                continue
            item = container[name]
            if isinstance(item, nn.Module):
                replace_parameters(item, make)
            else:
                container[name] = nn.Parameter(make(item.data), requires_grad=item.requires_grad)

    def load_adapter_state_dict(self, name: str, state: dict[str, torch.Tensor]) -> None:
        """Inverse of :meth:`adapter_state_dict`; shape mismatches and missing keys raise."""
        own = self.adapter_state_dict(name)
        missing = sorted(set(own) - set(state))
        if missing:
            raise AdapterError(f"adapter {name!r}: checkpoint lacks {missing}")
        for key, target in own.items():
            copy_saved(target, state[key], f"adapter {name!r}: {key}", "different base model or rank?")

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

    def delta_bias(self, name: str) -> torch.Tensor | None:
        """The change this adapter makes to ``base.bias`` (LoRA's ``lora_bias``), or None: none."""
        return None

    def merge(self, names: list[str] | None = None) -> None:
        """Add adapters into the base weight. Merging an already merged adapter does nothing."""
        for name in names if names is not None else self.active:
            if name in self.merged or name not in self.adapter_names():
                continue
            self.merge_one(name)
            self.merged.append(name)

    def merge_one(self, name: str) -> None:
        """Fold one adapter into the base: ``W += delta_weight``, ``b += delta_bias``. A method whose
        merge is not additive (DoRA's rescaling, IA3's product) overrides this and :meth:`unmerge_one`."""
        delta, bias = self.delta_weight(name), self.delta_bias(name)
        if delta is None:
            raise AdapterError(f"{type(self).__name__} cannot merge adapter {name!r}")
        if bias is not None and self.bias is None:
            raise AdapterError(
                f"adapter {name!r} trains a bias (lora_bias=True) but {type(self.base).__name__} has none "
                "to merge it into; keep the adapter unmerged"
            )
        self._dequantize_base()
        with torch.no_grad():
            self.base.weight.add_(delta.to(self.base.weight.dtype))
            if bias is not None:
                self.base.bias.add_(bias.to(self.base.bias.dtype))

    def _dequantize_base(self) -> None:
        """A 4-bit base cannot take a delta: it becomes its dequantised full-precision copy (for good)."""
        from .quantization import dequantize_linear, is_quantized

        if is_quantized(self.base):
            setattr(self, self.base_attr, dequantize_linear(self.base))

    def unmerge(self) -> None:
        while self.merged:
            self.unmerge_one(self.merged[-1])  # the last merged first; a refusal leaves it listed
            self.merged.pop()

    def unmerge_one(self, name: str) -> None:
        """Take one merged adapter back out of the base (the last merged first)."""
        bias = self.delta_bias(name)
        with torch.no_grad():
            self.base.weight.sub_(self.delta_weight(name).to(self.base.weight.dtype))
            if bias is not None:
                self.base.bias.sub_(bias.to(self.base.bias.dtype))

    # ---- forward -----------------------------------------------------------------------------
    def check_mixable(self) -> None:
        """Rows of a batch cannot take their own adapters from a layer whose base holds merged ones."""
        if self.merged:
            raise AdapterError(
                "Cannot pass `adapter_names` when there are merged adapters: a mixed-adapter batch needs "
                "unmerged adapters; call unmerge_adapter() first"
            )

    def adapter_delta(self, name: str, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """What adapter ``name`` adds to the base output for input ``x``."""
        raise NotImplementedError  # pragma: no cover - abstract

    def forward(self, x: torch.Tensor, *args, **kwargs):
        if self.disabled:
            if self.merged:
                raise AdapterError("adapters are merged into the base; unmerge_adapter() before disabling")
            return self.base(x, *args, **kwargs)
        if current_rows().mixed:
            self.check_mixable()
            return self.mixed_forward(x, *args, **kwargs)
        return self.adapted(x, [n for n in self.active if n not in self.merged], *args, **kwargs)

    def adapted(self, x: torch.Tensor, names: list[str], *args, **kwargs) -> torch.Tensor:
        """The output with adapters ``names`` applied to every row: ``base(x) + sum of their deltas``."""
        out = self.base(x, *args, **kwargs)
        for name in names:
            out = out + self.adapter_delta(name, x, *args, **kwargs).to(out.dtype)
        return out

    def mixed_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """Each row with its own adapter (the current routing): the base output plus, for the rows of each
        adapter, that adapter's delta (:func:`~peftkit.rows.mix_rows`)."""

        def delta(name: str, rows: torch.Tensor) -> torch.Tensor:
            return self.adapter_delta(name, x[rows], *args, **kwargs)

        return mix_rows(self.base(x, *args, **kwargs), self.adapter_names(), delta, source=x)


def adapter_layers(model: nn.Module) -> Iterator[tuple[str, AdapterLayer]]:
    """All adapter layers of a model with their module paths (not descending into them)."""
    for name, module in model.named_modules():
        if isinstance(module, AdapterLayer):
            yield name, module


def get_parent(model: nn.Module, path: str) -> tuple[nn.Module, str]:
    parent_path, _, attr = path.rpartition(".")
    return (model.get_submodule(parent_path) if parent_path else model), attr


def attach(model: nn.Module, path: str, layer_cls: type[AdapterLayer], method: str) -> AdapterLayer:
    """The ``layer_cls`` layer at ``path``: the one already there (its adapters are joined), or a new
    one wrapping the module there. A layer of another method at ``path`` is an error."""
    parent, attr = get_parent(model, path)
    current = getattr(parent, attr)
    if isinstance(current, layer_cls):
        return current
    if isinstance(current, AdapterLayer):
        raise TargetError(
            f"{path} already holds a {type(current).__name__}; {method} cannot join it (remove that "
            "adapter, or keep this method off the module with exclude_modules)"
        )
    layer = layer_cls(current)
    setattr(parent, attr, layer)
    return layer


def copy_saved(
    target: torch.Tensor, value: torch.Tensor, what: str, hint: str, error: type[Exception] = AdapterError
) -> None:
    """Copy a checkpoint's tensor into the adapter's own, refusing another shape (``what``: which tensor;
    ``hint``: the likely cause)."""
    if value.shape != target.shape:
        raise error(
            f"{what} has shape {tuple(value.shape)} in the checkpoint but {tuple(target.shape)} here ({hint})"
        )
    with torch.no_grad():
        target.copy_(value.to(target.dtype))
