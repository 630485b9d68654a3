"""``transformers.Trainer`` and TRL's ``SFTTrainer`` treat a peftkit :class:`~peftkit.PeftModel` as peft's.

Those trainers recognise adapter models by one check, ``isinstance(model, peft.PeftModel)`` (transformers'
``_is_peft_model``, accelerate's ``is_peft_model``, the classes whose ``save_pretrained`` transformers calls),
and only then save adapter-only checkpoints, reload the best checkpoint with ``load_adapter`` and resume from
one. peftkit extends that check to its own model, and to nothing else: each function is wrapped to answer
``True`` for a peftkit model and to ask the original otherwise; transformers' saving calls the model's own
``save_pretrained`` (peft's format, adapter only).

The wrapping happens when those modules are imported (an import hook: importing peftkit does not import
them) or at once for any already imported. :func:`register` is idempotent; :func:`unregister` undoes it.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

CHECKS = ("_is_peft_model", "is_peft_model")  # the functions trainers recognise PEFT models by
PREFIXES = ("transformers", "accelerate", "trl")  # the packages that hold or import them
# where they are defined: wrapped as these are imported, every later importer gets the wrapped ones
DEFINING = (
    "transformers.trainer_utils",
    "transformers.trainer",
    "accelerate.utils.modeling",
    "accelerate.utils",
)
TRAINER = "transformers.trainer"


def _is_ours(model: Any) -> bool:
    from .model import PeftModel

    inner = getattr(model, "module", model)  # DataParallel / DistributedDataParallel wrap it as .module
    return isinstance(model, PeftModel) or isinstance(inner, PeftModel)


def _wrap(original: Callable[[Any], bool]) -> Callable[[Any], bool]:
    def check(model: Any) -> bool:
        return _is_ours(model) or original(model)

    check.__wrapped__ = original  # type: ignore[attr-defined]
    check.__name__ = getattr(original, "__name__", "is_peft_model")
    check._peftkit = True  # type: ignore[attr-defined]
    return check


def _patch(module: ModuleType) -> None:
    """Wrap the PEFT checks ``module`` holds (its own or imported ones); transformers' trainer also gets
    peftkit's class among the classes whose ``save_pretrained`` it calls."""
    for name in CHECKS:
        fn = module.__dict__.get(name)
        if callable(fn) and not getattr(fn, "_peftkit", False):
            setattr(module, name, _wrap(fn))
    if module.__name__ == TRAINER and not module.__dict__.get("_peftkit_registered"):
        from .model import PeftModel

        theirs = module.__dict__.get("PeftModel")
        module.PeftModel = (theirs, PeftModel) if theirs is not None else PeftModel
        module._peftkit_original = (theirs, module.__dict__.get("is_peft_available"))
        module.is_peft_available = lambda: True  # peftkit stands in for peft when peft is not installed
        module._peftkit_registered = True


def _unpatch(module: ModuleType) -> None:
    for name in CHECKS:
        fn = module.__dict__.get(name)
        if getattr(fn, "_peftkit", False):
            setattr(module, name, fn.__wrapped__)
    if module.__dict__.get("_peftkit_registered"):
        theirs, available = module._peftkit_original
        if theirs is None:
            del module.PeftModel
        else:
            module.PeftModel = theirs
        module.is_peft_available = available
        del module._peftkit_registered, module._peftkit_original


def _ours(name: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in PREFIXES)


class _PatchingLoader(importlib.abc.Loader):
    """Runs the real loader, then wraps the module's PEFT checks."""

    def __init__(self, inner: importlib.abc.Loader):
        self.inner = inner

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.inner.exec_module(module)
        _patch(module)

    def __getattr__(self, name: str) -> Any:  # get_source, get_code, ...: the real loader's
        return getattr(self.inner, name)


class _Finder(importlib.abc.MetaPathFinder):
    """Finds the modules that define the checks as usual and gives them the patching loader."""

    def find_spec(self, fullname: str, path, target=None):
        if fullname not in DEFINING:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None and not isinstance(spec.loader, _PatchingLoader):
            spec.loader = _PatchingLoader(spec.loader)
        return spec


_FINDER = _Finder()


def register() -> None:
    """Make the trainers treat peftkit models as PEFT models (see the module docstring)."""
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)
    for name, module in list(sys.modules.items()):
        if module is not None and _ours(name):
            _patch(module)


def unregister() -> None:
    """Undo :func:`register`: the trainers' checks are theirs again."""
    if _FINDER in sys.meta_path:
        sys.meta_path.remove(_FINDER)
    for name, module in list(sys.modules.items()):
        if module is not None and _ours(name):
            _unpatch(module)
