"""Prefix tuning's registration: the prefix's shape comes from the model config (grouped-query
attention: ``num_key_value_heads``); it reaches attention through the model's cache."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ...errors import AdapterError, ConfigError, TargetError
from ...kv_cache import cache_argument
from ...registry import register_method
from ...virtual import InputMethod, model_dims
from .config import PrefixTuningConfig
from .layer import PrefixEncoder

DEFAULT_HIDDEN = 512


@register_method("prefix_tuning", config=PrefixTuningConfig, peft_type="PREFIX_TUNING")
class PrefixTuningMethod(InputMethod):
    encoder_class: type[PrefixEncoder] = PrefixEncoder

    def build(self, model: nn.Module, config: PrefixTuningConfig, shared=None) -> PrefixEncoder:
        check_no_checkpointing(model, "PREFIX_TUNING")
        if model_dims(model).encoder_decoder and config.prefix_init != "RANDOM":
            raise ConfigError(
                "prefix_init", f"{config.prefix_init!r} reads a decoder-only model's cache; use 'RANDOM' here"
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
        ).to(model.get_input_embeddings().weight.device)
        if model_dims(model).encoder_decoder:
            encoder.use_peft_decoder_layout()
        if config.prefix_init == "SAMPLE_VOCAB" and not config.inference_mode:
            encoder.init_from_activations(real_activations(model, config.num_virtual_tokens))
        return encoder

    def resolved(self, model: nn.Module, config: PrefixTuningConfig) -> dict[str, int]:
        """Keys/values have ``kv_heads * head_dim`` channels (peft: token_dim = that under GQA); on an
        encoder-decoder the prefix is the decoder's, one per decoder layer."""
        dims, out = model_dims(model), super().resolved(model, config)
        if dims.encoder_decoder and config.num_layers is None:
            out["num_layers"] = getattr(model.config, "num_decoder_layers", None) or dims.layers
        out["num_attention_heads"] = config.num_attention_heads or dims.kv_heads
        if config.token_dim is None:
            out["token_dim"] = out["num_attention_heads"] * dims.head_dim
        return out

    def to_peft_dict(
        self, config: PrefixTuningConfig, model: nn.Module, targets: list[str]
    ) -> dict[str, Any]:
        data = super().to_peft_dict(config, model, targets)
        data.pop("prefix_init", None)  # only how training began: the saved prefix carries it
        if config.prefix_projection:
            data["encoder_hidden_size"] = config.encoder_hidden_size or DEFAULT_HIDDEN
        return data


def check_no_checkpointing(model: nn.Module, what: str) -> None:
    """A prefix reaches attention through the cache, which gradient checkpointing switches off while
    training: refused up front (as peft), not a shape error in the first step."""
    if any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules()):
        raise ConfigError(
            "gradient_checkpointing",
            f"{what} does not work with gradient checkpointing. The prefix goes through the KV cache, which "
            "checkpointed training switches off; call model.gradient_checkpointing_disable() first",
        )


@torch.no_grad()
def real_activations(model: nn.Module, V: int, seed: int = 0) -> torch.Tensor:
    """The frozen model's keys and values ``(layers, 2, kv_heads, V, head_dim)`` for ``V`` random
    vocabulary tokens, read from its cache after one forward pass (eval mode, no dropout)."""
    from transformers import DynamicCache

    vocab = model.get_input_embeddings().weight.shape[0]
    ids = torch.randint(0, vocab, (1, V), generator=torch.Generator().manual_seed(seed))
    cache, was_training = DynamicCache(config=model.config), model.training
    model.eval()
    try:
        model(
            input_ids=ids.to(model.get_input_embeddings().weight.device),
            use_cache=True,
            **{cache_argument(model) or "past_key_values": cache},
        )
    finally:
        model.train(was_training)
    layers = [torch.stack([layer.keys[0], layer.values[0]]) for layer in cache.layers]  # (2, H, V, hd)
    if not layers:
        raise TargetError(f"{type(model).__name__} wrote nothing to its cache; use prefix_init='RANDOM'")
    return torch.stack(layers).float()


def eject(model, adapter_name: str = "default") -> None:
    """Bake a prefix's MLP reparametrisation into flat prefixes for inference (outputs unchanged)."""
    encoder = dict(model.prompt_encoder).get(adapter_name)
    if not isinstance(encoder, PrefixEncoder):
        raise AdapterError(f"adapter {adapter_name!r} is not a prefix-tuning adapter")
    encoder.eject()
    model.peft_config[adapter_name] = model.peft_config[adapter_name].replace(prefix_projection=False)
    model.set_adapter(model.active_adapters)
