"""Greedy decoding and sampling: one token per row per step."""

from __future__ import annotations

import torch

from .config import DecodingConfig
from .processors import apply_penalties, apply_warpers
from .state import Decoding


def pick(scores: torch.Tensor, config: DecodingConfig, generator: torch.Generator | None) -> torch.Tensor:
    """``(B,)`` next tokens: argmax, or a draw after temperature, top-k and top-p."""
    if config.strategy == "greedy":
        return scores.argmax(dim=-1)
    probs = apply_warpers(scores, config).softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)


def greedy_or_sample(run: Decoding) -> torch.Tensor:
    out = run.prefill()
    for step in range(run.config.max_new_tokens):
        scores = run.logits(step, out.logits)
        scores = apply_penalties(scores, run.sequences, run.valid, step, run.config)
        if run.step_scores is not None:  # what the token is picked from, as transformers reports it
            run.record(apply_warpers(scores, run.config) if run.config.strategy == "sample" else scores)
        tokens = pick(scores, run.config, run.generator)
        if run.append(tokens):
            break
        out = run.stepper.step(run.sequences[:, -1])
    return run.sequences
