"""Method registry: one decorator registers a method with its config class and its injection.

    @register_method("lora", config=LoraConfig, peft_type="LORA")
    class LoraMethod(LayerMethod):
        layer_types = {nn.Linear: LoraLinear, ...}

Adding a method never means editing a central list.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from torch import nn

from .checkpoint import read_config
from .config import SAVED_CONFIGS, PeftConfig, Targets
from .errors import ConfigError, TargetError
from .figures import Heatmap
from .layer import AdapterLayer, attach
from .peft_types import PeftType
from .targeting import find_targets

# keys peft writes into adapter_config.json that carry no meaning for peftkit's maths
PEFT_BOOKKEEPING = {
    "peft_type",
    "peft_version",
    "auto_mapping",
    "revision",
    "megatron_core",
    "megatron_config",
    "qalora_group_size",
    "fan_in_fan_out",
    "inference_mode",
    "base_model_name_or_path",
    "task_type",
}


class Method:
    """How a method is injected into a model; subclasses are registered with :func:`register_method`."""

    name: ClassVar[str] = ""
    config_class: ClassVar[type[PeftConfig]] = PeftConfig
    peft_type: ClassVar[str | None] = None
    key_prefix: ClassVar[str] = "base_model.model."  # peft's prefix of tensor keys in a checkpoint
    # model_type -> target_modules used when a config names none (peft's per-architecture tables)
    default_targets: ClassVar[dict[str, Targets]] = {}

    def inject(self, model: nn.Module, config: PeftConfig, adapter_name: str) -> list[str]:
        """Add adapter ``adapter_name`` to ``model`` in place; return the targeted module paths."""
        raise NotImplementedError  # pragma: no cover - abstract

    def extra_trainable(self, model: nn.Module, config: PeftConfig, targets: list[str]) -> list[str]:
        """Names of base-model parameters this config also trains and saves (e.g. biases)."""
        return []

    def virtual_tokens(
        self, model: nn.Module, config: PeftConfig, others: dict[str, nn.Module]
    ) -> nn.Module | None:
        """Virtual-token methods return their :class:`~peftkit.virtual.InputAdapter`, which the model's
        virtual-token stage runs (:mod:`peftkit.virtual`); ``others`` are the model's existing ones, by
        adapter name."""
        return None

    def check_new_adapter(self, config: PeftConfig, existing: dict[str, PeftConfig]) -> None:
        """Refuse ``config`` beside the model's ``existing`` adapters when the method cannot take both
        (peft's rules: one LoRA adapter with trained biases, one trainable AdaLoRA adapter)."""

    # ---- training hooks: PeftModel calls them for each active, trainable adapter of the method ---
    def before_training(
        self, model: nn.Module, config: PeftConfig, adapter_name: str, total_steps: int
    ) -> None:
        """Called once when a trainer starts, with the number of optimizer steps it will take."""

    def regularization_loss(self, model: nn.Module, config: PeftConfig, adapter_name: str) -> Any:
        """An extra term added to the training loss (a tensor), or None."""
        return None

    def after_optimizer_step(
        self, model: nn.Module, config: PeftConfig, adapter_name: str, step: int
    ) -> None:
        """Called after optimizer step ``step`` (0-based), before gradients are cleared."""

    def start_schedule(self, model: nn.Module, config: PeftConfig, adapter_name: str) -> None:
        """Called before each step a loop outside peftkit's trainer takes (peft's ``update_and_allocate``):
        start what :meth:`before_training` starts, from the config alone, unless it has started."""

    def forward_loss(self, model: nn.Module, config: PeftConfig, adapter_name: str) -> Any:
        """A term peft's model of this method adds to the forward's loss (a tensor), or None."""
        return None

    def figures(self, model: nn.Module, config: PeftConfig, adapter_name: str) -> list[Heatmap]:
        """Figures describing the trained adapter, as data (the application draws them)."""
        return []

    # ---- peft's adapter_config.json -----------------------------------------------------------
    def peft_fields(self, config: PeftConfig) -> dict[str, Any]:
        """The config as peft writes it, without a model to read derived fields from
        (``PeftConfig.save_pretrained``); peftkit's own methods name themselves in ``peftkit_method``."""
        data = config.to_dict()
        data["peft_type"] = self.peft_type
        if self.peft_type is None:
            data["peftkit_method"] = self.name
        return data

    def to_peft_dict(self, config: PeftConfig, model: nn.Module, targets: list[str]) -> dict[str, Any]:
        """The config as saved beside an adapter on ``model`` (fields read from the model filled in)."""
        return self.peft_fields(config)

    def config_from_dict(self, data: dict[str, Any]) -> PeftConfig:
        """Read ours or peft's adapter_config.json. A peft feature peftkit lacks is an error, not ignored."""
        known = set(self.config_class.field_names())
        fields = {k: v for k, v in data.items() if k in known}
        for key, value in data.items():
            if key in known or key in PEFT_BOOKKEEPING or key.startswith("peftkit_"):
                continue
            if value not in (None, False, {}, [], "", 0):
                raise ConfigError(
                    key, f"{self.name}: peft option {key}={value!r} is not supported by peftkit"
                )
        fields.update(self.translate_peft_fields(data))
        fields.setdefault("task_type", data.get("task_type"))
        fields.setdefault("base_model_name_or_path", data.get("base_model_name_or_path"))
        return self.config_class(**fields)

    def translate_peft_fields(self, data: dict[str, Any]) -> dict[str, Any]:
        """Hook for fields whose values differ between peft and peftkit."""
        return {}

    def fill_defaults(self, model: nn.Module, config: PeftConfig) -> None:
        """A config without ``target_modules`` gets this method's default for the model's architecture
        (``config.model_type``), written into the config as peft does; none known: left unset (refused
        by the targeting, which lists the candidates)."""
        if config.target_modules is None:
            config.target_modules = default_for(self.default_targets, model)


def default_for(table: dict[str, Any], model: nn.Module) -> Any:
    """``table``'s entry for the model's ``config.model_type`` (a copy), or None."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    value = table.get(model_type)
    return list(value) if isinstance(value, list) else value


class LayerMethod(Method):
    """A method that wraps targeted layers in :class:`AdapterLayer` subclasses."""

    layer_types: ClassVar[dict[type, type[AdapterLayer]]] = {}

    def layer_class(self, module: nn.Module) -> type[AdapterLayer]:
        for base_type, layer_cls in self.layer_types.items():
            if isinstance(module, base_type):
                return layer_cls
        raise TargetError(f"{self.name} cannot wrap {type(module).__name__}")

    def inject(self, model: nn.Module, config: PeftConfig, adapter_name: str) -> list[str]:
        self.fill_defaults(model, config)
        targets = find_targets(model, config, tuple(self.layer_types), self.name)
        for path, module in targets:
            attach(model, path, self.layer_class(module), self.name).join(adapter_name, config, path)
        return [p for p, _ in targets]


_METHODS: dict[str, Method] = {}


def register_method(name: str, config: type[PeftConfig], peft_type: str | None = None):
    """Class decorator: register ``cls`` (a :class:`Method`) under ``name`` with its config class."""

    def decorate(cls: type[Method]) -> type[Method]:
        if name in _METHODS:
            raise ValueError(f"method {name!r} is already registered by {type(_METHODS[name]).__name__}")
        cls.name, cls.config_class, cls.peft_type = name, config, peft_type
        config.method = name
        config.peft_type = PeftType(peft_type) if peft_type else None
        _METHODS[name] = cls()
        return cls

    return decorate


def list_methods() -> list[str]:
    """Names of every registered method."""
    return sorted(_METHODS)


def get_method(name_or_config: str | PeftConfig) -> Method:
    name = name_or_config if isinstance(name_or_config, str) else name_or_config.method
    if name not in _METHODS:
        raise ValueError(f"unknown method {name!r}; registered methods: {list_methods()}")
    return _METHODS[name]


def method_for_saved_config(data: dict[str, Any]) -> Method:
    """The method that reads a saved adapter_config.json (ours or peft's)."""
    if data.get("peftkit_method"):
        return get_method(data["peftkit_method"])
    peft_type = data.get("peft_type")
    for method in _METHODS.values():
        if method.peft_type and method.peft_type == peft_type:
            return method
    raise ValueError(
        f"adapter_config.json names peft_type={peft_type!r}, which no peftkit method reads; "
        f"peftkit reads {sorted(m.peft_type for m in _METHODS.values() if m.peft_type)}"
    )


def read_saved_config(folder: Path) -> PeftConfig:
    """The config in ``folder/adapter_config.json``, saved by peftkit or peft."""
    data = read_config(folder)
    return method_for_saved_config(data).config_from_dict(data)


def peft_config_dict(config: PeftConfig) -> dict[str, Any]:
    return get_method(config).peft_fields(config)


SAVED_CONFIGS.read, SAVED_CONFIGS.write = read_saved_config, peft_config_dict


def get_peft_config(config_dict: dict[str, Any]) -> PeftConfig:
    """peft's ``get_peft_config``: a config from a dict naming its ``peft_type`` (or peftkit's ``method``)."""
    return config_from_dict(config_dict)


def config_from_dict(data: dict[str, Any]) -> PeftConfig:
    """A config from ``{"method": "lora", ...fields}`` or from a saved adapter_config.json."""
    data = dict(data)
    if "method" in data:
        method = get_method(data.pop("method"))
        return method.config_class.from_dict(data)
    if "peft_type" in data or "peftkit_method" in data:
        return method_for_saved_config(data).config_from_dict(data)
    raise ConfigError("method", f"missing: say which method the config is for, one of {list_methods()}")


def config_from_file(path: str) -> PeftConfig:
    """Read a method config from YAML or JSON (an ``adapter_config.json`` works too)."""
    import json
    from pathlib import Path

    import yaml

    from .io import parse_yaml

    p = Path(path)
    if p.is_dir():
        p = p / "adapter_config.json"
    if not p.is_file():
        raise ConfigError("config", f"{path} does not exist")
    text = p.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if p.suffix == ".json" else parse_yaml(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise ConfigError("config", f"{path} cannot be parsed: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError("config", f"{path} must hold a mapping of fields, got {type(data).__name__}")
    return config_from_dict(data)
