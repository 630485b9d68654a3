"""The config every method shares: *where* an adapter goes (targeting) and what is saved with it.

Method configs subclass :class:`PeftConfig` and add their own typed fields; every config is
checked when it is built (``__post_init__``), so a bad value fails at once and names its field.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import re
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Union, get_args, get_origin, get_type_hints

from .errors import ConfigError
from .peft_types import PeftType

CONFIG_FILE = "adapter_config.json"

Targets = list[str] | set[str] | str | None  # a set (as peft keeps them) is read as a sorted list


# ---- checks every config shares -------------------------------------------------------------------
def fits(value: Any, hint: Any) -> bool:
    """Whether ``value`` has the annotated type ``hint``: scalars exactly (a bool is not a number, an int
    is a float), unions by any arm, the items of a ``list``/``set`` and the values of a ``dict`` too,
    ``Any`` always."""
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, types.UnionType):
        return any(fits(value, arg) for arg in args)
    if origin in (list, set):  # a tuple reads as a list
        return isinstance(value, (list, tuple) if origin is list else set) and all(
            fits(v, args[0]) for v in value
        )
    if origin is dict:
        return isinstance(value, dict) and all(fits(v, args[1]) for v in value.values())
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    if hint in (int, float) and isinstance(value, bool):
        return False
    if hint is float:
        return isinstance(value, (int, float))
    return not isinstance(hint, type) or isinstance(value, hint)


def type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def non_finite(value: Any, path: str = "") -> str | None:
    """The path (``""``, ``[2]``, ``['q_proj']``) of the first NaN or infinite number in ``value``."""
    if isinstance(value, float):
        return None if math.isfinite(value) else path
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        found = non_finite(item, f"{path}[{key!r}]")
        if found is not None:
            return found
    return None


def check_finite(name: str, value: Any) -> None:
    """NaN and infinity are never a setting: they train all-NaN adapters without a word."""
    where = non_finite(value)
    if where is not None:
        raise ConfigError(f"{name}{where}", f"must be a finite number, got {value!r}")


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def check_fields(config: Any) -> None:
    """The check every config dataclass runs first when built: each field holds a value of its annotated
    type (``epochs="1"`` names ``epochs``, not a ``TypeError`` from deep inside) and no number anywhere
    in it is NaN or infinite. Range checks stay with each config."""
    hints = _field_types(type(config))
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if not fits(value, hints[f.name]):
            raise ConfigError(f.name, f"expected {type_name(hints[f.name])}, got {value!r}")
        check_finite(f.name, value)


def check_regex(name: str, pattern: str) -> None:
    try:
        re.compile(pattern)
    except re.error as err:
        raise ConfigError(name, f"{pattern!r} is not a valid regular expression ({err})") from err


def check_targets(name: str, value: Targets) -> Targets:
    if isinstance(value, str):
        check_regex(name, value)
        return value
    if value is None:
        return value
    if isinstance(value, (list, tuple, set)) and all(isinstance(v, str) and v for v in value):
        return sorted(value) if isinstance(value, set) else list(value)
    raise ConfigError(name, f"expected a list of module names, a regex string or None, got {value!r}")


@dataclass
class PeftConfig:
    """Targeting and bookkeeping shared by all methods.

    Args:
        target_modules: module names (exact or suffix, e.g. ``["q_proj", "v_proj"]``), a regex
            matched against the full module name, or ``"all-linear"`` (every Linear but the output head).
        exclude_modules: modules to leave alone, in the same forms as ``target_modules``.
        layers_to_transform: only touch these layer indices (``model.layers.<i>.``).
        layers_pattern: the name of the layer list (``"layers"``, ``"h"``), when it is ambiguous.
        modules_to_save: extra modules (e.g. a new classification head) trained in full and saved.
        task_type: free-form task label kept for ``peft`` compatibility (``"CAUSAL_LM"``, ``"SEQ_CLS"``).
        inference_mode: when true, nothing is made trainable.
        base_model_name_or_path: the base model the adapter was trained on (saved, as peft does).
    """

    target_modules: Targets = None
    exclude_modules: Targets = None
    layers_to_transform: list[int] | int | None = None
    layers_pattern: str | None = None
    modules_to_save: list[str] | None = None
    task_type: str | None = None
    base_model_name_or_path: str | None = None
    inference_mode: bool = False

    method: ClassVar[str] = ""  # set by @register_method
    peft_type: ClassVar[PeftType | None] = None  # peft's name of the method (None: peftkit's own), ditto
    is_prompt_learning: ClassVar[bool] = False  # peft's flag: the method adds virtual tokens
    # the peak learning rate a run takes when ``train.lr`` is unset; a method that overrides it says
    # where its value was chosen (bench/tune_defaults.py: validation rows only, several seeds)
    default_lr: ClassVar[float] = 2e-4
    # the linear warm-up (fraction of all steps) when neither ``train.warmup_ratio`` nor
    # ``train.warmup_steps`` is set; same rule for overriding it
    default_warmup_ratio: ClassVar[float] = 0.0

    def __post_init__(self) -> None:
        check_fields(self)
        self.target_modules = check_targets("target_modules", self.target_modules)
        self.exclude_modules = check_targets("exclude_modules", self.exclude_modules)
        if isinstance(self.layers_to_transform, int):
            self.layers_to_transform = [self.layers_to_transform]
        if self.layers_to_transform is not None and not all(
            isinstance(i, int) and i >= 0 for i in self.layers_to_transform
        ):
            raise ConfigError(
                "layers_to_transform", f"expected non-negative ints, got {self.layers_to_transform!r}"
            )
        if self.modules_to_save is not None:
            mts = check_targets("modules_to_save", self.modules_to_save)
            self.modules_to_save = [mts] if isinstance(mts, str) else mts

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], ignore: tuple[str, ...] = ()) -> PeftConfig:
        """Build from a dict; an unknown key is an error that lists the known ones."""
        known = set(cls.field_names())
        unknown = sorted(k for k in data if k not in known and k not in ignore)
        if unknown:
            raise ConfigError(unknown[0], f"unknown field for {cls.__name__}; known fields: {sorted(known)}")
        return cls(**{k: v for k, v in data.items() if k in known})

    def replace(self, **changes: Any) -> PeftConfig:
        return dataclasses.replace(self, **changes)

    # ---- peft's config files -----------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | Path, subfolder: str | None = None, **kwargs: Any) -> PeftConfig:
        """The config saved in ``path/adapter_config.json`` (by peftkit or peft), of the class its method
        gives (``PeftConfig.from_pretrained`` reads any method's; ``LoraConfig.from_pretrained`` a LoRA
        one). Only local folders: keyword arguments (peft's hub options) are refused by name."""
        if kwargs:
            raise ConfigError(
                sorted(kwargs)[0],
                "peftkit reads adapter configs from local folders; hub options are not taken",
            )
        folder = Path(path) / subfolder if subfolder else Path(path)
        config = SAVED_CONFIGS.read(folder)
        if not isinstance(config, cls):
            raise ConfigError(
                "peft_type",
                f"{folder} holds a {type(config).__name__}, not a {cls.__name__}; read it with that",
            )
        return config

    def save_pretrained(self, save_directory: str | Path, **kwargs: Any) -> None:
        """Write ``adapter_config.json`` as peft does (with ``peft_type``); ``kwargs`` (peft's hub options)
        are refused by name."""
        if kwargs:
            raise ConfigError(sorted(kwargs)[0], "peftkit saves configs locally; hub options are not taken")
        from .io import atomic_write_json

        atomic_write_json(Path(save_directory) / CONFIG_FILE, SAVED_CONFIGS.write(self))


@dataclass
class SavedConfigIO:
    """How a config is read from and written to ``adapter_config.json``: the method registry knows each
    method's peft fields and installs both (this module is below it and cannot import it)."""

    read: Callable[[Path], PeftConfig] = lambda folder: _not_installed()
    write: Callable[[PeftConfig], dict[str, Any]] = lambda config: _not_installed()


def _not_installed() -> Any:
    raise RuntimeError("import peftkit first: the method registry reads and writes saved configs")


SAVED_CONFIGS = SavedConfigIO()


def check_choice(name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(name, f"must be one of {list(allowed)}, got {value!r}")


def check_range(name: str, value: float, lo: float, hi: float, hi_inclusive: bool = False) -> None:
    ok = lo <= value <= hi if hi_inclusive else lo <= value < hi
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not ok:
        bracket = "]" if hi_inclusive else ")"
        raise ConfigError(name, f"must be a number in [{lo}, {hi}{bracket}, got {value!r}")


def check_positive(name: str, value: float) -> None:
    """A number (its type already checked by :func:`check_fields`) above zero."""
    if value <= 0:
        raise ConfigError(name, f"must be a positive number, got {value!r}")


def check_positive_int(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(name, f"must be a positive integer, got {value!r}")


__all__ = [
    "PeftConfig",
    "check_choice",
    "check_fields",
    "check_finite",
    "check_positive",
    "check_positive_int",
    "check_range",
    "check_regex",
    "check_targets",
    "field",
]


def check_size(field: str, value: int, limit: int, module_name: str, why: str) -> None:
    """A size read from a config (a rank, a width) must fit the module it adapts. Checked before anything
    is allocated, so a corrupt or hostile adapter_config.json cannot ask for gigabytes."""
    if value > limit:
        raise ConfigError(field, f"{value} is too large for {module_name}: {why}, so at most {limit}")


def check_rank(field: str, r: int, d_in: int, d_out: int, module_name: str) -> None:
    """A low-rank factorisation ``B A`` of a ``d_out x d_in`` layer. Its rank is at most
    ``min(d_in, d_out)``, but peft accepts larger ``r`` (the extra rank adds nothing: its tests use r=8
    on 2-wide layers), and a PiSSA adapter is saved with rank ``2 r``; so up to ``d_in + d_out`` is
    accepted, where ``B`` and ``A`` hold at most ``(d_in + d_out)^2`` numbers. Beyond, only memory grows
    (a corrupt or hostile ``"r": 2000000`` would ask for gigabytes)."""
    why = f"B A has rank at most min(d_in, d_out) = {min(d_in, d_out)}; up to d_in + d_out is accepted"
    check_size(field, r, d_in + d_out, module_name, why)


def field_docs(cls: type) -> dict[str, str]:
    """Each field's description from the ``Args:`` sections of ``cls``'s docstring and its bases' (the
    class's own win): what ``--help`` shows. An entry ``a / b: text`` describes both fields."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        docs.update(_args_section(klass.__dict__.get("__doc__") or ""))
    return docs


def _args_section(doc: str) -> dict[str, str]:
    lines = inspect.cleandoc(doc).splitlines()
    start = next((i + 1 for i, line in enumerate(lines) if line.strip() == "Args:"), len(lines))
    entries: dict[str, list[str]] = {}
    names: list[str] = []
    for line in lines[start:]:
        if not line.strip() or not line.startswith(" "):
            break  # the section ends at a blank or unindented line
        head, sep, text = line.strip().partition(": ")
        entry = re.fullmatch(r"[A-Za-z_]\w*(\s*/\s*[A-Za-z_]\w*)*", head)
        if sep and entry and line.startswith("    ") and not line.startswith("     "):
            names = [n.strip() for n in head.split("/")]
            for name in names:
                entries[name] = [text]
        elif names:
            for name in names:
                entries[name].append(line.strip())
    return {name: " ".join(parts).replace("``", "") for name, parts in entries.items()}
