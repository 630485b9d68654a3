"""(IA)^3's registration: the layers it wraps, peft's per-architecture defaults and peft's config format."""

from __future__ import annotations

from torch import nn
from transformers.pytorch_utils import Conv1D

from ...errors import ConfigError
from ...nn_types import correct_fan_in_fan_out
from ...registry import LayerMethod, default_for, register_method
from .. import default_targets as defaults
from .config import IA3Config
from .layer import IA3Linear


@register_method("ia3", config=IA3Config, peft_type="IA3")
class IA3Method(LayerMethod):
    layer_types = {nn.Linear: IA3Linear, Conv1D: IA3Linear}
    default_targets = defaults.IA3

    def fill_defaults(self, model: nn.Module, config: IA3Config) -> None:
        """Targets and feed-forward modules from peft's tables; with targets but no feed-forward modules on
        an architecture peft does not know, the config must say which (``[]``: none)."""
        super().fill_defaults(model, config)
        if config.target_modules is None or config.feedforward_modules is not None:
            return
        config.feedforward_modules = default_for(defaults.IA3_FEEDFORWARD, model)
        if config.feedforward_modules is None:
            raise ConfigError(
                "feedforward_modules",
                "Please specify `feedforward_modules` in `peft_config`: which targeted modules are "
                "feed-forward layers (their input is rescaled) on this model ([] for none)",
            )

    def inject(self, model: nn.Module, config: IA3Config, adapter_name: str) -> list[str]:
        targets = super().inject(model, config, adapter_name)
        for path in targets:
            correct_fan_in_fan_out(config, model.get_submodule(path).base)
        return targets
