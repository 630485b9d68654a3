"""Registration of rule-based selection, and the injection every sparse-delta method shares."""

from __future__ import annotations

from torch import nn

from ...errors import TargetError
from ...layer import AdapterLayer
from ...registry import LayerMethod, get_parent, register_method
from ...targeting import filter_targets, find_targets, iter_modules, layer_index
from ..full.method import has_own_parameters, has_parameters, in_modules_to_save, outermost
from .config import SelectionConfig, SparseDeltaConfig
from .layer import SparseDeltaLayer


class SparseDeltaMethod(LayerMethod):
    """Wraps each targeted module in a :class:`SparseDeltaLayer`; subclasses narrow the targets."""

    layer_types = {nn.Module: SparseDeltaLayer}

    def inject(self, model: nn.Module, config: SparseDeltaConfig, adapter_name: str) -> list[str]:
        targets = self.targets(model, config)
        check_untied(model, targets, config, self.name)
        for path in targets:
            parent, attr = get_parent(model, path)
            current = getattr(parent, attr)
            if isinstance(current, AdapterLayer) and not isinstance(current, SparseDeltaLayer):
                raise TargetError(
                    f"{path} already holds a {type(current).__name__}; {self.name} cannot join it"
                )
            layer = current if isinstance(current, SparseDeltaLayer) else SparseDeltaLayer(current)
            layer.add(adapter_name, config, path)
            layer.train(layer.base.training)
            setattr(parent, attr, layer)
        return targets

    def targets(self, model: nn.Module, config: SparseDeltaConfig) -> list[str]:
        """Outermost modules with parameters, outside ``modules_to_save``, matching the targeting."""
        if config.target_modules is None:
            found = [(n, m) for n, m in iter_modules(model) if n and has_own_parameters(m)]
            found = filter_targets(config, found)
        else:
            found = find_targets(model, config, (nn.Module,), self.name)
        saved = config.modules_to_save
        found = [(n, m) for n, m in found if not in_modules_to_save(n, saved) and has_parameters(m)]
        paths = outermost([n for n, _ in found])
        if not paths:
            raise TargetError(
                f"{self.name}: no module with parameters to adapt (target_modules={config.target_modules!r}, "
                f"exclude_modules={config.exclude_modules!r}, modules_to_save={saved!r})"
            )
        return paths


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
    targeted = set(paths)
    for path, module in modules.items():
        if path in targeted or any(path.startswith(t + ".") for t in targeted):
            continue
        for name, p in module.named_parameters(recurse=False):
            if id(p) in chosen:
                raise TargetError(
                    f"{method}: {chosen[id(p)]} is tied to {path}.{name}, which is not targeted; a delta "
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
