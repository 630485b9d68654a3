"""The running state every strategy shares: rows so far, which are finished, hook and streamer."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .config import DecodingConfig
from .hooks import LogitsHook
from .stepper import ModelStepper, StepOutput
from .stopping import StopRule

Streamer = Callable[[torch.Tensor, torch.Tensor], object]


class Decoding:
    """One decoding run over rows ``(N, L)``: prompts (left padded), then the chosen tokens.

    ``model_inputs`` (ids, mask) is what the model is first fed; ``prompt`` (ids, mask) is what the
    output rows start with: the same for a decoder-only model, the decoder start token for an
    encoder-decoder.
    """

    def __init__(
        self,
        stepper: ModelStepper,
        model_inputs: tuple[torch.Tensor, torch.Tensor],
        prompt: tuple[torch.Tensor, torch.Tensor],
        config: DecodingConfig,
        stop: StopRule,
        hook: LogitsHook | None = None,
        streamer: Streamer | None = None,
        generator: torch.Generator | None = None,
    ):
        self.stepper, self.config, self.stop = stepper, config, stop
        self.model_inputs = model_inputs
        self.input_ids, self.attention_mask = prompt
        self.hook, self.streamer, self.generator = hook, streamer, generator
        self.sequences = self.input_ids  # (N, L + t)
        self.valid = self.attention_mask.bool()  # (N, L + t): real tokens, for the penalties
        self.finished = torch.zeros(self.input_ids.shape[0], dtype=torch.bool, device=self.input_ids.device)
        self.step_scores: list[torch.Tensor] | None = None  # each step's scores, when they are asked for

    @property
    def new_tokens(self) -> int:
        return self.sequences.shape[1] - self.input_ids.shape[1]

    def prefill(self) -> StepOutput:
        """Feed the prompts to the model (and to the hook's models); logits for the first token."""
        decoder_prompt = self.input_ids if self.stepper.encoder_decoder else None
        out = self.stepper.prefill(*self.model_inputs, decoder_input_ids=decoder_prompt)
        if self.hook is not None and hasattr(self.hook, "start"):
            self.hook.start(*self.model_inputs)
        return out

    def logits(self, step: int, raw: torch.Tensor) -> torch.Tensor:
        return raw if self.hook is None else self.hook(step, self.sequences, raw)

    def record(self, scores: torch.Tensor) -> None:
        """Keep one step's processed scores ``(N, V)`` (``output_scores``)."""
        if self.step_scores is not None:
            self.step_scores.append(scores)

    def append(self, tokens: torch.Tensor) -> bool:
        """Add one token per row (finished rows get padding); True when decoding is over."""
        tokens = tokens.masked_fill(self.finished, self.config.pad_id)  # (N,)
        self.sequences = torch.cat([self.sequences, tokens[:, None]], dim=1)
        self.valid = torch.cat([self.valid, ~self.finished[:, None]], dim=1)
        self.finished = self.finished | self.stop.hits(self.sequences)
        if self.streamer is not None:
            self.streamer(tokens, self.finished)
        return bool(self.finished.all()) or self.new_tokens >= self.config.max_new_tokens
