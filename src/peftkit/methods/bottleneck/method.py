"""Bottleneck adapters' registration: the placement's architecture slots are where they go."""

from __future__ import annotations

from torch import nn

from ...errors import TargetError
from ...layer import AdapterLayer
from ...registry import Method, get_parent, register_method
from ...slots import slot_modules
from .config import BottleneckConfig
from .layer import BottleneckLayer


@register_method("bottleneck", config=BottleneckConfig)
class BottleneckMethod(Method):
    """Wraps the module in each of the placement's slots (every layer, or ``layers_to_transform``)."""

    def inject(self, model: nn.Module, config: BottleneckConfig, adapter_name: str) -> list[str]:
        sites = [
            path for slot in config.slots for path, _ in slot_modules(model, slot, config.layers_to_transform)
        ]
        if not sites:
            raise TargetError(
                f"bottleneck: layers_to_transform={config.layers_to_transform} selects no layer of this model"
            )
        taps = (
            dict(zip(sites, [p for p, _ in slot_modules(model, "ffn_input", config.layers_to_transform)]))
            if config.placement == "parallel"
            else {}
        )
        for path in sites:
            layer = wrap_site(model, path)
            layer.add(adapter_name, config, path)
            if path in taps:
                layer.tap(adapter_name, model.get_submodule(taps[path]))
            layer.train(layer.base.training)  # new sub-modules follow the model's train/eval mode
        return sites


def wrap_site(model: nn.Module, path: str) -> BottleneckLayer:
    """The :class:`BottleneckLayer` at ``path``, wrapping the module there on first use."""
    parent, attr = get_parent(model, path)
    current = getattr(parent, attr)
    if isinstance(current, BottleneckLayer):
        return current
    if isinstance(current, AdapterLayer):
        raise TargetError(
            f"{path} already holds a {type(current).__name__}; bottleneck adapters cannot join it "
            "(remove that adapter, or keep the other method off this slot's module)"
        )
    layer = BottleneckLayer(current)
    setattr(parent, attr, layer)
    return layer
