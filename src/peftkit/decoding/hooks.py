"""Per-step logits hooks and streaming callbacks.

A logits hook is called at every step with the raw next-token logits, before penalties and
warpers, and returns the logits to decode from::

    def hook(step: int, sequences: torch.Tensor, logits: torch.Tensor) -> torch.Tensor: ...

``sequences (N, T)`` holds each row's prompt (left padded) and the tokens chosen so far; ``N`` is
the batch times ``num_beams`` in beam search. A hook object may also define ``start(input_ids,
attention_mask)`` (called once with the prompts, already repeated for beams) and
``reorder(index)`` (called whenever rows are re-selected, e.g. beams); :class:`ModelLogitsHook`
uses both to step other models in lock-step with the decoded one (proxy-tuning, ensembles).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Protocol

import torch
from torch import nn

from ..errors import ConfigError
from .stepper import ModelStepper

Combine = Callable[[torch.Tensor, list[torch.Tensor]], torch.Tensor]


class LogitsHook(Protocol):
    def __call__(self, step: int, sequences: torch.Tensor, logits: torch.Tensor) -> torch.Tensor: ...


class ModelLogitsHook:
    """Steps ``models`` alongside the decoded model and combines logits: ``combine(own, [theirs])``.

    Every model must share the decoded model's vocabulary (checked on the first step). Each
    keeps its own KV cache, fed the same tokens, reordered with the beams.
    """

    def __init__(
        self, models: Sequence[nn.Module], combine: Combine, forward_kwargs: Sequence[dict] | None = None
    ):
        if not models:
            raise ConfigError("models", "ModelLogitsHook needs at least one other model")
        kwargs = forward_kwargs or [{} for _ in models]
        self.steppers = [ModelStepper(m, **kw) for m, kw in zip(models, kwargs, strict=True)]
        self.combine = combine
        self._logits: list[torch.Tensor] = []

    def start(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
        self._logits = [s.prefill(input_ids, attention_mask).logits for s in self.steppers]

    def reorder(self, index: torch.Tensor) -> None:
        for s in self.steppers:
            s.reorder(index)

    def __call__(self, step: int, sequences: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        if step > 0:
            self._logits = [s.step(sequences[:, -1]).logits for s in self.steppers]
        for i, other in enumerate(self._logits):
            if other.shape[-1] != logits.shape[-1]:
                raise ConfigError(
                    "models",
                    f"model {i} has a vocabulary of {other.shape[-1]} tokens, the decoded model "
                    f"{logits.shape[-1]}: logits can only be combined over the same vocabulary",
                )
        return self.combine(logits, self._logits)


class TextStreamer:
    """Streams the text of row 0 as tokens arrive: ``generate(..., streamer=TextStreamer(tok))``."""

    def __init__(self, tokenizer, write: Callable[[str], object] = sys.stdout.write, row: int = 0):
        self.tokenizer, self.write, self.row = tokenizer, write, row
        self.tokens: list[int] = []
        self.shown = ""
        self.done = False

    def __call__(self, tokens: torch.Tensor, finished: torch.Tensor) -> None:
        if self.done:
            return
        self.tokens.append(int(tokens[self.row]))
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
            self.write(text[len(self.shown) :])
            self.shown = text
        self.done = bool(finished[self.row])

    def end(self) -> None:
        self.write("\n")
