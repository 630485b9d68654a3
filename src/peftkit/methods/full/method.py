"""Full fine-tuning's registration: which modules it wraps, and tied parameters adapted once."""

from __future__ import annotations

from torch import nn

from ...errors import TargetError
from ...layer import adapter_layers
from ...registry import LayerMethod, register_method
from ...targeting import iter_modules
from ..parameter_delta import parameter_targets, tie_outside, wrap
from .config import FullConfig
from .layer import FullLayer


@register_method("full", config=FullConfig)
class FullMethod(LayerMethod):
    """Wraps every targeted module in a :class:`FullLayer`; saved configs carry ``peftkit_method: full``."""

    layer_types = {nn.Module: FullLayer}

    def inject(self, model: nn.Module, config: FullConfig, adapter_name: str) -> list[str]:
        targets = self.targets(model, config)
        for path in targets:
            wrap(model, path, FullLayer, config, adapter_name, self.name)
        share_tied(model, adapter_name)
        return targets

    def targets(self, model: nn.Module, config: FullConfig) -> list[str]:
        """Outermost modules to adapt: each holds parameters and lies outside ``modules_to_save``."""
        paths = parameter_targets(model, config, self.name)
        check_ties_covered(model, paths, config.modules_to_save)
        return paths


def check_ties_covered(model: nn.Module, paths: list[str], modules_to_save: list[str] | None) -> None:
    """A targeted parameter tied to an untargeted module would change that module too on merge."""
    modules = dict(iter_modules(model))
    targeted = {id(p): f"{t}.{n}" for t in paths for n, p in modules[t].named_parameters()}
    tie = tie_outside(model, paths, targeted, modules_to_save)
    if tie is not None:
        raise TargetError(
            f"full: {tie[0]} is tied to {tie[1]}, which is not targeted; "
            "target both modules or neither (e.g. the input embedding with a tied output head)"
        )


def share_tied(model: nn.Module, adapter_name: str) -> None:
    """One delta per base parameter: a parameter reached through several wrapped modules (tied
    embeddings, a module used at two places) is adapted by its first layer and shared by the rest,
    so it trains, saves and merges once, as the tied weight itself would."""
    owners: dict[int, nn.Parameter] = {}
    for _, layer in adapter_layers(model):
        if not isinstance(layer, FullLayer) or adapter_name not in layer.full_delta:
            continue
        deltas = layer.deltas(adapter_name)
        for path, param in layer.base.named_parameters():
            if id(param) in owners:
                layer.share(adapter_name, path, owners[id(param)])
            else:
                owners[id(param)] = deltas[path]
