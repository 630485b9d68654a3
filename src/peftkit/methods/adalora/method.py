"""AdaLoRA's registration: layers, the trainer hooks (regulariser, budget, rank map) and peft's format."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from ...errors import ConfigError
from ...figures import Heatmap
from ...registry import LayerMethod, register_method
from .. import default_targets as defaults
from ..lowrank import check_one_bias, trained_biases
from .allocation import (
    allocate,
    budget_for,
    orthogonal_penalty,
    rank_map,
    schedule_started,
    start_schedule,
)
from .config import AdaLoraConfig
from .layer import AdaLoraLinear

# peft's AdaLoraConfig inherits LoraConfig: fields AdaLoRA ignores, with the values it accepts
PEFT_LORA_FIELDS = {"r": None, "init_lora_weights": (True,), "use_rslora": (False,)}


@register_method("adalora", config=AdaLoraConfig, peft_type="ADALORA")
class AdaLoraMethod(LayerMethod):
    layer_types = {nn.Linear: AdaLoraLinear, Conv1D: AdaLoraLinear}
    default_targets = defaults.ADALORA

    def extra_trainable(self, model: nn.Module, config: AdaLoraConfig, targets: list[str]) -> list[str]:
        return trained_biases(model, config.bias, targets)

    def check_new_adapter(self, config: AdaLoraConfig, existing: dict[str, Any]) -> None:
        check_one_bias(config, existing, "AdaLoraModel")

    def before_training(
        self, model: nn.Module, config: AdaLoraConfig, adapter_name: str, total_steps: int
    ) -> None:
        if config.total_step is None:
            config.check_schedule(total_steps)
        elif config.total_step != total_steps:
            warnings.warn(
                f"adalora: total_step={config.total_step} but the trainer takes {total_steps} steps; "
                "the budget follows total_step",
                stacklevel=2,
            )
        start_schedule(model, config, adapter_name, config.total_step or total_steps)
        config.total_step = config.total_step or total_steps
        budget_for(model, config, adapter_name)  # fails early on an adapter that cannot be allocated

    def regularization_loss(
        self, model: nn.Module, config: AdaLoraConfig, adapter_name: str
    ) -> torch.Tensor | None:
        if config.orth_reg_weight == 0:
            return None
        penalty = orthogonal_penalty(model, adapter_name, config.orth_reg_form)
        return None if penalty is None else config.orth_reg_weight * penalty

    def after_optimizer_step(
        self, model: nn.Module, config: AdaLoraConfig, adapter_name: str, step: int
    ) -> None:
        allocate(model, config, adapter_name, step)

    def start_schedule(self, model: nn.Module, config: AdaLoraConfig, adapter_name: str) -> None:
        """peft's loop (``update_and_allocate``): the budget runs over the config's ``total_step``."""
        if config.total_step is None:
            raise ConfigError(
                "total_step",
                "AdaLoRA needs total_step (the number of optimizer steps) outside peftkit's trainer",
            )
        if not schedule_started(model, adapter_name):
            self.before_training(model, config, adapter_name, config.total_step)

    def forward_loss(self, model: nn.Module, config: AdaLoraConfig, adapter_name: str) -> torch.Tensor | None:
        """peft's form of the orthogonality penalty, which its AdaLoRA model adds to the forward's loss:
        ``orth_reg_weight`` times the mean over every ``P`` and ``Q`` of ``||P^T P - I||_F`` (not squared),
        whatever ``orth_reg_form`` says: that form is the term peftkit's trainer adds
        (:meth:`regularization_loss`), which switches this one off."""
        if config.orth_reg_weight == 0:
            return None
        penalty = orthogonal_penalty(model, adapter_name, "peft")
        return None if penalty is None else config.orth_reg_weight * penalty

    def figures(self, model: nn.Module, config: AdaLoraConfig, adapter_name: str) -> list[Heatmap]:
        rows, cols, grid = rank_map(model, adapter_name)
        title = f"AdaLoRA ranks ({adapter_name}): init_r={config.init_r}, target_r={config.target_r}"
        labels = [f"layer {r}" if r.isdigit() else r for r in rows]
        return [Heatmap(grid, labels, cols, title, f"ranks_{adapter_name}")]

    # ---- peft's adapter_config.json -----------------------------------------------------------
    def to_peft_dict(self, config: AdaLoraConfig, model: nn.Module, targets: list[str]) -> dict[str, Any]:
        data = super().to_peft_dict(config, model, targets)
        data.update(r=8, init_lora_weights=True, use_rslora=False, use_dora=False, lora_bias=False)
        data.pop("orth_reg_form", None)  # how training regularised: peft's config has no such field
        data["fan_in_fan_out"] = any(isinstance(model.get_submodule(t).base, Conv1D) for t in targets)
        if config.rank_pattern and all(all(kept) for kept in config.rank_pattern.values()):
            data["rank_pattern"] = None  # nothing pruned: tensors are saved at init_r
        return data

    def config_from_dict(self, data: dict[str, Any]) -> AdaLoraConfig:
        data = dict(data)
        for key, accepted in PEFT_LORA_FIELDS.items():
            if key in data and accepted is not None and data[key] not in accepted:
                raise ConfigError(
                    key, f"adalora: peft option {key}={data[key]!r} is not supported by peftkit"
                )
            data.pop(key, None)
        return super().config_from_dict(data)
