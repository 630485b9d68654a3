"""Where adapters go: module matching shared by every method, kept apart from the maths.

``target_modules`` may be a list (each entry an exact module name or a dotted suffix), a regex
string (full match against the module name), or ``"all-linear"``. ``exclude_modules`` takes the
same forms. ``layers_to_transform`` keeps modules whose layer index (``<layers>.<i>.``) is listed.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator

from torch import nn

from . import nn_types
from .config import PeftConfig, Targets
from .errors import TargetError
from .layer import AdapterLayer
from .nn_types import linear_types

LAYER_LIST_NAMES = ("layers", "layer", "h", "block", "blocks", "encoder.layer", "decoder.layers")


def iter_modules(model: nn.Module, prefix: str = "") -> Iterator[tuple[str, nn.Module]]:
    """Named modules, an adapter layer standing for the module it wraps (not descended into)."""
    for name, child in model.named_children():
        path = f"{prefix}.{name}" if prefix else name
        if isinstance(child, AdapterLayer):
            yield path, child.base
            continue
        yield path, child
        yield from iter_modules(child, path)


def name_matches(name: str, targets: Targets) -> bool:
    """Does module ``name`` match ``targets`` (list of names/suffixes or a full-match regex)?"""
    if targets is None:
        return False
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith("." + t) for t in targets)


def layer_index(name: str, layers_pattern: str | None = None) -> int | None:
    """The transformer-layer index in a module path, e.g. 3 for ``model.layers.3.mlp.up_proj``."""
    pattern = re.escape(layers_pattern) if layers_pattern else r"[^.]+"
    found = re.search(rf"(?:^|\.)({pattern})\.(\d+)(?:\.|$)", name)
    return int(found.group(2)) if found else None


def output_head_names(model: nn.Module) -> set[str]:
    """The output head's paths, an adapter layer standing for the module it wraps."""
    return nn_types.output_head_names(model, iter_modules(model))


def _candidates(model: nn.Module, config: PeftConfig) -> list[tuple[str, nn.Module]]:
    mods = [(n, m) for n, m in iter_modules(model) if n]
    if config.target_modules == "all-linear":
        heads = output_head_names(model)
        return [(n, m) for n, m in mods if isinstance(m, linear_types()) and n not in heads]
    return [(n, m) for n, m in mods if name_matches(n, config.target_modules)]


def filter_targets(config: PeftConfig, found: list[tuple[str, nn.Module]]) -> list[tuple[str, nn.Module]]:
    found = [(n, m) for n, m in found if not name_matches(n, config.exclude_modules)]
    if config.layers_to_transform is not None:
        keep = set(config.layers_to_transform)
        found = [(n, m) for n, m in found if layer_index(n, config.layers_pattern) in keep]
    return found


def candidate_names(model: nn.Module, supported: tuple[type, ...]) -> list[str]:
    """Distinct last name components of modules a method could wrap, for error messages."""
    names = {n.split(".")[-1] for n, m in iter_modules(model) if isinstance(m, supported)}
    return sorted(names, key=lambda s: (s.isdigit(), s))


def find_targets(
    model: nn.Module, config: PeftConfig, supported: tuple[type, ...], method: str
) -> list[tuple[str, nn.Module]]:
    """Modules to wrap, as (path, module). Raises :class:`TargetError` when nothing fits."""
    if config.target_modules is None:
        raise TargetError(
            f"Please specify `target_modules` in `peft_config`: {method} has no default for this model "
            f"(target_modules is not set). Pick from {candidate_names(model, supported)}, or 'all-linear'."
        )
    found = filter_targets(config, _candidates(model, config))
    if not found:
        raise TargetError(
            f"{method}: target_modules={config.target_modules!r} "
            f"(exclude_modules={config.exclude_modules!r}, "
            f"layers_to_transform={config.layers_to_transform!r}) matched no module. "
            f"Candidate module names: {candidate_names(model, supported)}"
        )
    bad = [(n, type(m).__name__) for n, m in found if not isinstance(m, supported)]
    if bad:
        kinds = sorted({t.__name__ for t in supported})
        raise TargetError(f"{method} cannot wrap {bad[:5]}: it supports {kinds}. Narrow target_modules.")
    _report_unmatched(model, config)
    return found


def _report_unmatched(model: nn.Module, config: PeftConfig) -> None:
    if not isinstance(config.target_modules, list):
        return
    names = [n for n, _ in iter_modules(model) if n]
    unmatched = [t for t in config.target_modules if not any(name_matches(n, [t]) for n in names)]
    if unmatched:
        warnings.warn(f"target_modules entries {unmatched} match no module of this model", stacklevel=3)
