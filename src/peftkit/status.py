"""peft's ``get_layer_status`` / ``get_model_status``: what each adapter layer holds and the model's adapter
state in one place (enabled, active, merged, trainable), with ``"irregular"`` where layers disagree."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from torch import nn

from .layer import AdapterLayer
from .modules_to_save import ModulesToSaveWrapper
from .registry import LayerMethod, get_method, list_methods

Irregular = Literal["irregular"]
TUNER_NAMES = {"LORA": "LoraModel", "ADALORA": "AdaLoraModel", "IA3": "IA3Model"}  # peft's tuner classes


@dataclass
class TunerLayerStatus:
    name: str
    module_type: str
    enabled: bool
    active_adapters: list[str]
    merged_adapters: list[str]
    requires_grad: dict[str, bool | Irregular]
    available_adapters: list[str]
    devices: dict[str, list[str]]


@dataclass
class TunerModelStatus:
    base_model_type: str
    adapter_model_type: str
    peft_types: dict[str, str]
    trainable_params: int
    total_params: int
    num_adapter_layers: int
    enabled: bool | Irregular
    active_adapters: list[str] | Irregular
    merged_adapters: list[str] | Irregular
    requires_grad: dict[str, bool | Irregular]
    available_adapters: list[str]
    devices: dict[str, list[str]] = field(default_factory=dict)


def _method_name(layer: AdapterLayer) -> str:
    for name in list_methods():
        method = get_method(name)
        if isinstance(method, LayerMethod) and type(layer) in method.layer_types.values():
            return name
    return type(layer).__name__


def _one(values: list[Any]) -> Any:
    """The value every layer agrees on, else ``"irregular"``."""
    return values[0] if all(v == values[0] for v in values) else "irregular"


def _layer_status(name: str, layer: AdapterLayer) -> TunerLayerStatus:
    adapters = sorted(layer.adapter_names())
    grads: dict[str, bool | Irregular] = {}
    devices: dict[str, list[str]] = {}
    for adapter in adapters:
        params = list(layer.adapter_parameters(adapter))
        grads[adapter] = _one([p.requires_grad for p in params]) if params else False
        devices[adapter] = sorted({p.device.type for p in params})
    return TunerLayerStatus(
        name=name,
        module_type=f"{_method_name(layer)}.{type(layer.base).__name__}",
        enabled=not layer.disabled,
        active_adapters=list(layer.active),
        merged_adapters=list(layer.merged),
        requires_grad=grads,
        available_adapters=adapters,
        devices=devices,
    )


def get_layer_status(model: nn.Module) -> list[TunerLayerStatus]:
    """One status per adapter layer of a PeftModel (named as peft names them: ``model.<module path>``)."""
    return [
        _layer_status(f"model.{path}", layer)
        for path, layer in model.layers()
        if not isinstance(layer, ModulesToSaveWrapper)
    ]


def _merge_grads(layers: list[TunerLayerStatus]) -> dict[str, bool | Irregular]:
    out: dict[str, bool | Irregular] = {}
    for status in layers:
        for adapter, value in status.requires_grad.items():
            out[adapter] = value if out.get(adapter, value) == value else "irregular"
    return out


def get_model_status(model: nn.Module) -> TunerModelStatus:
    """The model's adapter state, summed over its layers (``"irregular"`` where they disagree)."""
    layers = get_layer_status(model)
    trainable, total = model.get_nb_trainable_parameters()
    peft_types = {name: config.peft_type or config.method for name, config in model.peft_config.items()}
    kinds = {str(getattr(t, "value", t)) for t in peft_types.values()}
    tuner = TUNER_NAMES.get(next(iter(kinds)), "TunerModel") if len(kinds) == 1 else "TunerModel"
    devices: dict[str, set[str]] = {}
    for status in layers:
        for adapter, kinds_ in status.devices.items():
            devices.setdefault(adapter, set()).update(kinds_)
    return TunerModelStatus(
        base_model_type=type(model.get_base_model()).__name__,
        adapter_model_type=tuner,
        peft_types=peft_types,
        trainable_params=trainable,
        total_params=total,
        num_adapter_layers=len(layers),
        enabled=_one([s.enabled for s in layers]) if layers else model.base_model.layers_enabled,
        active_adapters=_one([s.active_adapters for s in layers]) if layers else model.active_adapters,
        merged_adapters=_one([s.merged_adapters for s in layers]) if layers else [],
        requires_grad=_merge_grads(layers),
        available_adapters=sorted(model.peft_config),
        devices={k: sorted(v) for k, v in devices.items()},
    )
