"""P-tuning's registration."""

from __future__ import annotations

from torch import nn

from ...registry import register_method
from ...virtual import InputMethod
from .config import PTuningConfig
from .layer import PromptEncoder


@register_method("p_tuning", config=PTuningConfig, peft_type="P_TUNING")
class PTuningMethod(InputMethod):
    def build(self, model: nn.Module, config: PTuningConfig, shared=None) -> PromptEncoder:
        dims = self.resolved(model, config)
        hidden = None if config.inference_mode else (config.encoder_hidden_size or dims["token_dim"])
        encoder = PromptEncoder(config, dims["token_dim"], dims["num_transformer_submodules"], hidden)
        return encoder.to(model.get_input_embeddings().weight.device)

    def to_peft_dict(self, config, model, targets):
        data = super().to_peft_dict(config, model, targets)
        data["encoder_hidden_size"] = config.encoder_hidden_size or data["token_dim"]
        if data.get("placeholder_token_id") is None:  # peftkit's template mode; peft prepends
            data.pop("placeholder_token_id", None)
        return data
