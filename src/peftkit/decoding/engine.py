"""``generate``: peftkit's decoding loop for any causal or encoder-decoder language model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from .beam import beam_search
from .config import DecodingConfig
from .contrastive import contrastive_search
from .hooks import LogitsHook
from .search import greedy_or_sample
from .state import Decoding, Streamer
from .stepper import ModelStepper, decoder_start_id, is_encoder_decoder
from .stopping import StopRule


@dataclass
class GenerationOutput:
    """``sequences (N, L + n)``: each row's prompt (decoder start token for an encoder-decoder)
    followed by its new tokens, padded with ``pad_token_id`` after it ended. ``N`` is the batch
    times ``num_return_sequences``. ``scores`` holds the beams' length-penalised scores."""

    sequences: torch.Tensor
    prompt_length: int
    scores: torch.Tensor | None = None

    @property
    def new_tokens(self) -> torch.Tensor:
        return self.sequences[:, self.prompt_length :]


def _check_inputs(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, decoder_only: bool):
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        raise ConfigError("input_ids", "expected a (batch, length) tensor of token ids")
    if attention_mask is None:
        return torch.ones_like(input_ids)
    if attention_mask.shape != input_ids.shape:
        raise ConfigError(
            "attention_mask",
            f"shape {tuple(attention_mask.shape)} differs from input_ids {tuple(input_ids.shape)}",
        )
    if decoder_only and not bool(attention_mask[:, -1].bool().all()):
        raise ConfigError(
            "attention_mask",
            "a row is right-padded; decoding continues from each row's last token, so pad on the "
            "left (tokenizer.padding_side = 'left')",
        )
    return attention_mask


def _prompt(model: nn.Module, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if not is_encoder_decoder(model):
        return input_ids, None
    start = torch.full((input_ids.shape[0], 1), decoder_start_id(model), device=input_ids.device)
    return start, torch.ones_like(start)


def model_defaults(model: nn.Module) -> dict[str, Any]:
    """End and padding ids from the model's ``generation_config`` (what ``transformers`` uses)."""
    gen = getattr(model, "generation_config", None)
    out = {}
    for key in ("eos_token_id", "pad_token_id"):
        value = getattr(gen, key, None)
        if value is not None:
            out[key] = value
    return out


def _resolve(model: nn.Module, config: DecodingConfig | None, options: dict[str, Any]) -> DecodingConfig:
    if config is None:
        return DecodingConfig.from_kwargs(**{**model_defaults(model), **options})
    return config.replace(**options) if options else config


def generate(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    config: DecodingConfig | None = None,
    *,
    tokenizer=None,
    logits_hook: LogitsHook | None = None,
    streamer: Streamer | None = None,
    adapter_names: list[str] | None = None,
    **options: Any,
) -> GenerationOutput:
    """Decode new tokens after left-padded prompts ``input_ids (B, L)``.

    ``config`` (or keyword ``options``, e.g. ``strategy="beam", num_beams=4``) picks the strategy;
    without ``config``, end and padding ids default to the model's ``generation_config``;
    ``adapter_names`` gives each row its own adapter of a :class:`~peftkit.PeftModel`;
    ``logits_hook`` rewrites each step's logits (see :mod:`peftkit.decoding.hooks`); ``streamer`` is
    called with ``(tokens (B,), finished (B,))`` after every step (not with beam search, whose
    tokens are not final until the end); ``tokenizer`` is needed for ``stop_strings``.
    """
    config = _resolve(model, config, options)
    if streamer is not None and config.strategy == "beam":
        raise ConfigError("streamer", "beam search cannot stream: its tokens are only final at the end")
    attention_mask = _check_inputs(input_ids, attention_mask, not is_encoder_decoder(model))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return _run(
                model, input_ids, attention_mask, config, tokenizer, logits_hook, streamer, adapter_names
            )
    finally:
        model.train(was_training)


def _run(
    model, input_ids, attention_mask, config, tokenizer, hook, streamer, adapter_names
) -> GenerationOutput:
    if config.strategy == "beam":  # each input row becomes num_beams rows, side by side
        input_ids = input_ids.repeat_interleave(config.num_beams, dim=0)
        attention_mask = attention_mask.repeat_interleave(config.num_beams, dim=0)
    prompt_ids, prompt_mask = _prompt(model, input_ids)
    prompt_mask = attention_mask if prompt_mask is None else prompt_mask
    forward_kwargs = {} if adapter_names is None else {"adapter_names": list(adapter_names)}
    stepper = ModelStepper(model, want_hidden=config.strategy == "contrastive", **forward_kwargs)
    generator = None
    if config.seed is not None:
        generator = torch.Generator(device=input_ids.device).manual_seed(config.seed)
    run = Decoding(
        stepper,
        (input_ids, attention_mask),
        (prompt_ids, prompt_mask),
        config,
        StopRule(config, prompt_ids.shape[1], tokenizer),
        hook,
        streamer,
        generator,
    )
    if config.strategy == "beam":
        sequences, scores = beam_search(run)
        return GenerationOutput(sequences, prompt_ids.shape[1], scores)
    search = contrastive_search if config.strategy == "contrastive" else greedy_or_sample
    return GenerationOutput(search(run), prompt_ids.shape[1])
