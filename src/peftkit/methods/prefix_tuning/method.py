"""Prefix tuning's registration: the prefix's shape comes from the model config (grouped-query
attention: ``num_key_value_heads``); it reaches attention through the model's cache."""

from __future__ import annotations

from typing import Any

from torch import nn

from ...errors import AdapterError, ConfigError, TargetError
from ...input_adapter import InputMethod, model_dims
from ...registry import register_method
from .config import PrefixTuningConfig
from .layer import PrefixEncoder

DEFAULT_HIDDEN = 512


@register_method("prefix_tuning", config=PrefixTuningConfig, peft_type="PREFIX_TUNING")
class PrefixTuningMethod(InputMethod):
    encoder_class: type[PrefixEncoder] = PrefixEncoder

    def build(self, model: nn.Module, config: PrefixTuningConfig, shared=None) -> PrefixEncoder:
        if model_dims(model).encoder_decoder:
            raise TargetError(
                f"{self.name} on encoder-decoder models is not supported by peftkit; use prompt_tuning"
            )
        dims = self.resolved(model, config)
        if dims["token_dim"] % dims["num_attention_heads"]:
            raise ConfigError(
                "token_dim",
                f"{dims['token_dim']} is not a multiple of num_attention_heads={dims['num_attention_heads']}",
            )
        hidden = None
        if config.prefix_projection and not config.inference_mode:  # a loaded checkpoint is flat
            hidden = config.encoder_hidden_size or DEFAULT_HIDDEN
        encoder = self.encoder_class(
            config.num_virtual_tokens,
            dims["num_layers"],
            dims["num_attention_heads"],
            dims["token_dim"],
            hidden,
        )
        return encoder.to(model.get_input_embeddings().weight.device)

    def resolved(self, model: nn.Module, config: PrefixTuningConfig) -> dict[str, int]:
        """Keys/values have ``kv_heads * head_dim`` channels (peft: token_dim = that under GQA)."""
        dims, out = model_dims(model), super().resolved(model, config)
        out["num_attention_heads"] = config.num_attention_heads or dims.kv_heads
        if config.token_dim is None:
            out["token_dim"] = out["num_attention_heads"] * dims.head_dim
        return out

    def to_peft_dict(
        self, config: PrefixTuningConfig, model: nn.Module, targets: list[str]
    ) -> dict[str, Any]:
        data = super().to_peft_dict(config, model, targets)
        if config.prefix_projection:
            data["encoder_hidden_size"] = config.encoder_hidden_size or DEFAULT_HIDDEN
        return data


def eject(model, adapter_name: str = "default") -> None:
    """Bake a prefix's MLP reparametrisation into flat prefixes for inference (outputs unchanged)."""
    encoder = dict(model.input_adapters).get(adapter_name)
    if not isinstance(encoder, PrefixEncoder):
        raise AdapterError(f"adapter {adapter_name!r} is not a prefix-tuning adapter")
    encoder.eject()
    model.peft_config[adapter_name] = model.peft_config[adapter_name].replace(prefix_projection=False)
    model.set_adapter(model.active_adapters)
