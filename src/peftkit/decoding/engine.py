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
    times ``num_return_sequences``. ``scores`` holds the beams' length-penalised scores;
    ``step_scores`` (with ``output_scores=True``) each step's processed next-token scores ``(N, V)``,
    those the token was picked from (greedy, sampling), as ``transformers``' ``output_scores``."""

    sequences: torch.Tensor
    prompt_length: int
    scores: torch.Tensor | None = None
    step_scores: tuple[torch.Tensor, ...] | None = None

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


def _prompt(
    model: nn.Module, input_ids: torch.Tensor, decoder_input_ids: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """What the output rows start with: the prompt itself for a decoder-only model; for an encoder-decoder
    the decoder start token, followed by ``decoder_input_ids`` when given (the start token is put in front
    of them unless every row begins with it, as ``transformers`` does)."""
    if not is_encoder_decoder(model):
        if decoder_input_ids is not None:
            raise ConfigError("decoder_input_ids", "only an encoder-decoder model takes decoder_input_ids")
        return input_ids, None
    start = torch.full((input_ids.shape[0], 1), decoder_start_id(model), device=input_ids.device)
    if decoder_input_ids is not None:
        if decoder_input_ids.dim() != 2 or decoder_input_ids.shape[0] != input_ids.shape[0]:
            raise ConfigError("decoder_input_ids", "expected a (batch, length) tensor, one row per input row")
        given = decoder_input_ids.to(input_ids.device)
        start = given if bool((given[:, 0] == start[:, 0]).all()) else torch.cat([start, given], dim=1)
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
    decoder_input_ids: torch.Tensor | None = None,
    output_scores: bool = False,
    **options: Any,
) -> GenerationOutput:
    """Decode new tokens after left-padded prompts ``input_ids (B, L)``.

    ``config`` (or keyword ``options``, e.g. ``strategy="beam", num_beams=4``) picks the strategy;
    without ``config``, end and padding ids default to the model's ``generation_config``;
    ``adapter_names`` gives each row its own adapter of a :class:`~peftkit.PeftModel`;
    ``logits_hook`` rewrites each step's logits (see :mod:`peftkit.decoding.hooks`); ``streamer`` is
    called with ``(tokens (B,), finished (B,))`` after every step (not with beam search, whose
    tokens are not final until the end); ``tokenizer`` is needed for ``stop_strings``. An encoder-decoder's
    output rows start with ``decoder_input_ids`` when given; ``output_scores`` keeps each step's scores
    (greedy and sampling).
    """
    config = _resolve(model, config, options)
    if streamer is not None and config.strategy == "beam":
        raise ConfigError("streamer", "beam search cannot stream: its tokens are only final at the end")
    if output_scores and config.strategy not in ("greedy", "sample"):
        raise ConfigError(
            "output_scores", f"per-step scores are kept for greedy and sampling, not {config.strategy}"
        )
    attention_mask = _check_inputs(input_ids, attention_mask, not is_encoder_decoder(model))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            prompt = _prompt(model, input_ids, decoder_input_ids)
            return _run(
                model,
                (input_ids, attention_mask),
                prompt,
                config,
                tokenizer,
                logits_hook,
                streamer,
                adapter_names,
                output_scores,
            )
    finally:
        model.train(was_training)


def _run(
    model, inputs, prompt, config, tokenizer, hook, streamer, adapter_names, output_scores
) -> GenerationOutput:
    (input_ids, attention_mask), (prompt_ids, prompt_mask) = inputs, prompt
    if config.strategy == "beam":  # each input row becomes num_beams rows, side by side
        input_ids = input_ids.repeat_interleave(config.num_beams, dim=0)
        attention_mask = attention_mask.repeat_interleave(config.num_beams, dim=0)
        prompt_ids = prompt_ids.repeat_interleave(config.num_beams, dim=0)
        prompt_mask = None if prompt_mask is None else prompt_mask.repeat_interleave(config.num_beams, dim=0)
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
    run.step_scores = [] if output_scores else None
    if config.strategy == "beam":
        sequences, scores = beam_search(run)
        return GenerationOutput(sequences, prompt_ids.shape[1], scores)
    search = contrastive_search if config.strategy == "contrastive" else greedy_or_sample
    sequences = search(run)
    scores = tuple(run.step_scores) if run.step_scores is not None else None
    return GenerationOutput(sequences, prompt_ids.shape[1], step_scores=scores)
