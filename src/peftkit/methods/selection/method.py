"""Registration of rule-based selection, and the injection every sparse-delta method shares."""

from __future__ import annotations

from torch import nn

from ...errors import TargetError
from ...registry import LayerMethod, register_method
from ...targeting import iter_modules, layer_index
from ..parameter_delta import parameter_targets, tie_outside, wrap
from .config import SelectionConfig, SparseDeltaConfig
from .layer import SparseDeltaLayer


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


@register_method("selection", config=SelectionConfig)
class SelectionMethod(SparseDeltaMethod):
    """``last_k_layers`` keeps targets inside the last ``last_k`` layers; ``smallest_magnitude`` all."""

    def targets(self, model: nn.Module, config: SelectionConfig) -> list[str]:
        paths = super().targets(model, config)
        if config.rule != "last_k_layers":
            return paths
        index = {p: layer_index(p, config.layers_pattern) for p in paths}
        layered = [i for i in index.values() if i is not None]
        if not layered:
            raise TargetError(
                "selection: rule last_k_layers found no module inside a numbered layer list "
                "(e.g. model.layers.3); set layers_pattern, or use rule smallest_magnitude"
            )
        first = max(layered) + 1 - config.last_k
        return [p for p in paths if index[p] is not None and index[p] >= first]
