"""AdapterFusion's registration: a fusion joins every site that holds all the adapters it fuses."""

from __future__ import annotations

from torch import nn

from ...errors import TargetError
from ...layer import adapter_layers
from ...registry import Method, register_method
from ...targeting import layer_index
from ..bottleneck.layer import BottleneckLayer
from .config import FusionConfig
from .layer import FusionAttention


@register_method("fusion", config=FusionConfig)
class FusionMethod(Method):
    """Adds a :class:`FusionAttention` to each :class:`BottleneckLayer` holding every fused adapter."""

    def inject(self, model: nn.Module, config: FusionConfig, adapter_name: str) -> list[str]:
        sites = fusion_sites(model, config)
        for _, layer in sites:
            kw = layer.new_tensor_kwargs()
            layer.add_fusion(adapter_name, FusionAttention(layer.hidden, config, **kw))
            layer.train(layer.base.training)
        return [path for path, _ in sites]


def fusion_sites(model: nn.Module, config: FusionConfig) -> list[tuple[str, BottleneckLayer]]:
    """Bottleneck sites holding all of ``config.adapter_names`` (in ``layers_to_transform``)."""
    layers = [(p, m) for p, m in adapter_layers(model) if isinstance(m, BottleneckLayer)]
    held = {name for _, m in layers for name in m.bottleneck}
    absent = [a for a in config.adapter_names if a not in held]
    if absent:
        raise TargetError(
            f"fusion: adapters {absent} are not bottleneck adapters of this model (it has {sorted(held)}); "
            "add or load them first, e.g. model.load_adapter(path, adapter_name=...)"
        )
    keep = config.layers_to_transform
    sites = [
        (p, m)
        for p, m in layers
        if all(a in m.bottleneck for a in config.adapter_names) and (keep is None or layer_index(p) in keep)
    ]
    if not sites:
        raise TargetError(
            f"fusion: no site holds all of {config.adapter_names} (layers_to_transform={keep}); "
            "fuse adapters that share a placement"
        )
    return sites
