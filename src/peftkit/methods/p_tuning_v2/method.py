"""P-tuning v2's registration. Saved as peft's PREFIX_TUNING (the same tensors), tagged
``peftkit_method: p_tuning_v2`` so peftkit reads it back as P-tuning v2."""

from __future__ import annotations

from typing import Any

from torch import nn

from ...errors import AdapterError
from ...registry import register_method
from ..prefix_tuning.method import PrefixTuningMethod
from .config import PTuningV2Config
from .layer import DeepPrompt


@register_method("p_tuning_v2", config=PTuningV2Config)
class PTuningV2Method(PrefixTuningMethod):
    encoder_class = DeepPrompt

    def build(self, model: nn.Module, config: PTuningV2Config, shared=None) -> DeepPrompt:
        prompt = super().build(model, config)
        if config.share_prompts_with is not None:
            other = (shared or {}).get(config.share_prompts_with)
            if not isinstance(other, DeepPrompt) or other.num_virtual_tokens != prompt.num_virtual_tokens:
                raise AdapterError(
                    f"share_prompts_with={config.share_prompts_with!r}: no P-tuning v2 adapter of that name "
                    f"with {prompt.num_virtual_tokens} virtual tokens on this model"
                )
            prompt.share(other)
        return prompt

    def to_peft_dict(self, config: PTuningV2Config, model: nn.Module, targets: list[str]) -> dict[str, Any]:
        data = super().to_peft_dict(config, model, targets)
        data.pop("share_prompts_with")
        data["peft_type"] = "PREFIX_TUNING"
        return data
