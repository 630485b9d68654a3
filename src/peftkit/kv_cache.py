"""Where a model's forward takes and returns its key/value cache, whatever ``transformers`` calls it.

``transformers`` 5.0-5.2x name the argument (and the output field) ``past_key_values``; later 5.x
releases renamed both to ``cache`` and keep the old name only as a deprecated alias. Code that writes
into the cache (decoding, prefix tuning, P-tuning v2) goes through these helpers instead of naming
either spelling, and the decoding stepper checks by behaviour that the cache it passed was filled.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .signature import forward_params

NAMES = ("cache", "past_key_values")  # newest spelling first


def cache_argument(model: nn.Module) -> str | None:
    """The keyword ``model.forward`` takes its cache under, or ``None`` when it takes none. A task
    head whose forward passes ``**kwargs`` on to its backbone (``BertForTokenClassification``) is
    answered by the backbone (``model.base_model``)."""
    params = forward_params(model)
    name = next((name for name in NAMES if name in params), None)
    inner = getattr(model, "base_model", None)
    if name is None and isinstance(inner, nn.Module) and inner is not model:
        return cache_argument(inner)
    return name


def cache_key(kwargs: dict[str, Any]) -> str | None:
    """Which of the cache spellings ``kwargs`` holds a (non-None) cache under, if any."""
    return next((name for name in NAMES if kwargs.get(name) is not None), None)


def passed_cache(kwargs: dict[str, Any]) -> Any:
    """The cache a caller passed under either spelling (or ``None``)."""
    key = cache_key(kwargs)
    return kwargs[key] if key else None


def returned_cache(output: Any) -> Any:
    """The cache a model output carries under either spelling (or ``None``)."""
    for name in NAMES:
        cache = getattr(output, name, None)
        if cache is None and isinstance(output, dict):
            cache = output.get(name)
        if cache is not None:
            return cache
    return None


def filled_length(cache: Any) -> int:
    """How many positions a cache holds (0 for ``None`` or an object without the interface)."""
    get = getattr(cache, "get_seq_length", None)
    return int(get()) if callable(get) else 0
