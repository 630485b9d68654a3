"""Bottleneck adapters' registration: the placement's architecture slots are where they go."""

from __future__ import annotations

from torch import nn

from ...errors import TargetError
from ...layer import attach
from ...registry import Method, register_method
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
            layer = attach(model, path, BottleneckLayer, "bottleneck")
            layer.join(adapter_name, config, path)
            if path in taps:
                layer.tap(adapter_name, model.get_submodule(taps[path]))
        return sites
