"""What a model's ``forward`` takes, read from its signature once per class (or per instance, for a
wrapper such as :class:`~peftkit.PeftModel` that exposes its base model's signature)."""

from __future__ import annotations

import inspect

from torch import nn

_PARAMS: dict[type, frozenset[str]] = {}


def forward_params(model: nn.Module) -> frozenset[str]:
    """The names ``model.forward`` takes explicitly (``**kwargs`` not counted)."""
    if "forward" in vars(model):
        return _read(model)
    cls = type(model)
    if cls not in _PARAMS:
        _PARAMS[cls] = _read(model)
    return _PARAMS[cls]


def accepts(model: nn.Module, name: str) -> bool:
    """Does ``model.forward`` take argument ``name`` (explicitly)?"""
    return name in forward_params(model)


def _read(model: nn.Module) -> frozenset[str]:
    try:
        params = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):  # pragma: no cover - builtins
        return frozenset()
    return frozenset(p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL))
