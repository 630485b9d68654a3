"""The registration base of virtual-token methods, and peft's task-type table they save."""

from __future__ import annotations

from typing import Any, ClassVar

from torch import nn

from ..config import PeftConfig
from ..registry import Method
from .adapter import InputAdapter
from .config import PromptLearningConfig
from .dims import check_sizes, model_dims


class InputMethod(Method):
    """A method that adds an :class:`InputAdapter` instead of wrapping layers."""

    key_prefix: ClassVar[str] = "base_model."  # peft's prefix for prompt-learning models' extra tensors

    def inject(self, model: nn.Module, config: PeftConfig, adapter_name: str) -> list[str]:
        return []

    def virtual_tokens(
        self, model: nn.Module, config: PeftConfig, others: dict[str, nn.Module]
    ) -> InputAdapter:
        check_sizes(model, config)
        return self.build(model, config, others)

    def build(self, model: nn.Module, config: PromptLearningConfig, shared=None) -> InputAdapter:
        raise NotImplementedError  # pragma: no cover - abstract

    def resolved(self, model: nn.Module, config: PromptLearningConfig) -> dict[str, int]:
        """peft's derived config fields, read from the model where unset."""
        dims = model_dims(model)
        return {
            "token_dim": config.token_dim or dims.hidden,
            "num_transformer_submodules": config.num_transformer_submodules
            or (2 if dims.encoder_decoder else 1),
            "num_attention_heads": config.num_attention_heads or dims.heads,
            "num_layers": config.num_layers or dims.layers,
        }

    def to_peft_dict(self, config: PeftConfig, model: nn.Module, targets: list[str]) -> dict[str, Any]:
        data = super().to_peft_dict(config, model, targets)
        for name in ("target_modules", "exclude_modules", "layers_to_transform", "layers_pattern"):
            data.pop(name, None)  # prompt-learning configs in peft have no targeting fields
        data.update(self.resolved(model, config))
        data["task_type"] = config.task_type or peft_task_type(model)
        return data


TASK_SUFFIXES = {
    "ForCausalLM": "CAUSAL_LM",
    "ForSequenceClassification": "SEQ_CLS",
    "ForTokenClassification": "TOKEN_CLS",
    "ForQuestionAnswering": "QUESTION_ANS",
    "ForConditionalGeneration": "SEQ_2_SEQ_LM",
    "ForSeq2SeqLM": "SEQ_2_SEQ_LM",
}


def peft_task_type(model: nn.Module) -> str:
    """peft needs ``task_type`` to apply a prompt-learning checkpoint at all (without it, it runs the
    bare base); read it from the model class when the config leaves it unset."""
    name = type(model).__name__
    return next(
        (task for suffix, task in TASK_SUFFIXES.items() if name.endswith(suffix)), "FEATURE_EXTRACTION"
    )


# ---- the hook ------------------------------------------------------------------------------------
