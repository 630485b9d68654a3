"""Prompt tuning's registration: builds the prompt, initialised at random, from vocabulary or text."""

from __future__ import annotations

import torch
from torch import nn

from ...errors import ConfigError
from ...names import resolve_name
from ...registry import register_method
from ...virtual import InputMethod
from .config import PromptTuningConfig
from .layer import PromptEmbedding


@register_method("prompt_tuning", config=PromptTuningConfig, peft_type="PROMPT_TUNING")
class PromptTuningMethod(InputMethod):
    def build(self, model: nn.Module, config: PromptTuningConfig, shared=None) -> PromptEmbedding:
        dims = self.resolved(model, config)
        prompt = PromptEmbedding(config, dims["token_dim"], dims["num_transformer_submodules"])
        prompt.to(model.get_input_embeddings().weight.device)
        if config.inference_mode:  # weights come from a checkpoint
            return prompt
        words = model.get_input_embeddings()
        if config.prompt_tuning_init == "SAMPLE_VOCAB":
            ids = torch.randint(0, words.weight.shape[0], (prompt.embedding.weight.shape[0],)).tolist()
            prompt.init_from_tokens(words, ids)
        elif config.prompt_tuning_init == "TEXT":
            prompt.init_from_tokens(words, text_token_ids(config))
        return prompt


def text_token_ids(config: PromptTuningConfig) -> list[int]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        resolve_name(config.tokenizer_name_or_path), **(config.tokenizer_kwargs or {})
    )
    ids = tokenizer(config.prompt_tuning_init_text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ConfigError("prompt_tuning_init_text", "tokenizes to no tokens; give a non-empty text")
    return ids
