"""Full fine-tuning's registration: which modules it wraps, and tied parameters adapted once."""

from __future__ import annotations

from torch import nn

from ...errors import TargetError
from ...layer import AdapterLayer, adapter_layers
from ...registry import LayerMethod, get_parent, register_method
from ...targeting import filter_targets, find_targets, iter_modules, name_matches
from .config import FullConfig
from .layer import FullLayer


@register_method("full", config=FullConfig)
class FullMethod(LayerMethod):
    """Wraps every targeted module in a :class:`FullLayer`; saved configs carry ``peftkit_method: full``."""

    layer_types = {nn.Module: FullLayer}

    def inject(self, model: nn.Module, config: FullConfig, adapter_name: str) -> list[str]:
        targets = self.targets(model, config)
        for path in targets:
            self._wrap(model, path, config, adapter_name)
        share_tied(model, adapter_name)
        return targets

    def targets(self, model: nn.Module, config: FullConfig) -> list[str]:
        """Outermost modules to adapt: each holds parameters and lies outside ``modules_to_save``."""
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
                f"full: no module with parameters left to adapt (target_modules={config.target_modules!r}, "
                f"exclude_modules={config.exclude_modules!r}, modules_to_save={saved!r})"
            )
        check_ties_covered(model, paths, saved)
        return paths

    def _wrap(self, model: nn.Module, path: str, config: FullConfig, adapter_name: str) -> None:
        parent, attr = get_parent(model, path)
        current = getattr(parent, attr)
        if isinstance(current, AdapterLayer) and not isinstance(current, FullLayer):
            raise TargetError(f"{path} already holds a {type(current).__name__}; full cannot join it")
        layer = current if isinstance(current, FullLayer) else FullLayer(current)
        layer.add(adapter_name, config, path)
        layer.train(layer.base.training)  # new sub-modules follow the model's train/eval mode
        setattr(parent, attr, layer)


def has_own_parameters(module: nn.Module) -> bool:
    return next(module.parameters(recurse=False), None) is not None


def has_parameters(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None


def in_modules_to_save(path: str, modules_to_save: list[str] | None) -> bool:
    """Is ``path`` (or a module containing it) in ``modules_to_save``? Those train as whole copies."""
    parts = path.split(".")
    return any(name_matches(".".join(parts[:i]), modules_to_save) for i in range(1, len(parts) + 1))


def outermost(paths: list[str]) -> list[str]:
    """Drop paths inside another path of the list: the outer module's deltas already cover them."""
    chosen = set(paths)
    return [p for p in paths if not any(q in chosen for q in _ancestors(p))]


def _ancestors(path: str) -> list[str]:
    parts = path.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def check_ties_covered(model: nn.Module, paths: list[str], modules_to_save: list[str] | None) -> None:
    """A targeted parameter tied to an untargeted module would change that module too on merge."""
    modules = dict(iter_modules(model))
    chosen = set(paths)
    targeted = {id(p): f"{t}.{n}" for t in paths for n, p in modules[t].named_parameters()}
    for path, module in modules.items():
        if path in chosen or any(a in chosen for a in _ancestors(path)):
            continue
        if in_modules_to_save(path, modules_to_save):
            continue
        for name, p in module.named_parameters(recurse=False):
            if id(p) in targeted:
                raise TargetError(
                    f"full: {targeted[id(p)]} is tied to {path}.{name}, which is not targeted; "
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
