"""Model names the application knows, resolved to what ``transformers`` can load.

The library hands names it is given (``tokenizer_name_or_path`` of a prompt-tuning config) to
:func:`resolve_name` before ``transformers`` sees them. It knows no names itself; the model catalogue
(:mod:`peftkit.models`: packaged models such as ``smollm2-135m``) registers its resolver when imported,
so the library never imports the application.
"""

from __future__ import annotations

from collections.abc import Callable

_RESOLVERS: list[Callable[[str], str]] = []


def register_name_resolver(resolve: Callable[[str], str]) -> None:
    """Add ``resolve`` (a name to a local folder or loadable id); the latest one registered wins."""
    if resolve not in _RESOLVERS:
        _RESOLVERS.append(resolve)


def resolve_name(name: str) -> str:
    """``name`` through the registered resolvers (unchanged when none is registered)."""
    return _RESOLVERS[-1](name) if _RESOLVERS else name
