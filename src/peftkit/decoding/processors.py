"""Logit processing for one decoding step, in the order ``transformers`` applies it.

Penalties first (repetition, no-repeat n-gram, minimum length), then, when sampling, the
warpers: temperature, top-k, top-p (REFERENCE.md: "order: temperature, top-k, top-p, sample").
Every function takes ``scores (B, V)`` and returns new scores; ``tokens (B, T)`` is each row's
text so far and ``valid (B, T)`` marks which of its positions are real (left padding is not).
"""

from __future__ import annotations

import torch

from .config import DecodingConfig

NEG_INF = float("-inf")


def repetition_penalty(scores: torch.Tensor, tokens: torch.Tensor, valid: torch.Tensor, penalty: float):
    """CTRL's penalty: logits of seen tokens are divided by ``penalty`` (multiplied when negative)."""
    vocab = scores.shape[-1]
    ids = tokens.masked_fill(~valid, vocab).clamp(max=vocab)  # padding -> a spare column
    seen = torch.zeros(scores.shape[0], vocab + 1, dtype=torch.bool, device=scores.device)
    seen.scatter_(1, ids, True)
    penalised = torch.where(scores < 0, scores * penalty, scores / penalty)
    return torch.where(seen[:, :vocab], penalised, scores)


def banned_ngram_tokens(row: list[int], n: int) -> list[int]:
    """Tokens that would complete an n-gram already present in ``row``."""
    if len(row) < n:
        return []
    suffix = tuple(row[len(row) - n + 1 :])
    return [row[i + n - 1] for i in range(len(row) - n + 1) if tuple(row[i : i + n - 1]) == suffix]


def no_repeat_ngram(scores: torch.Tensor, tokens: torch.Tensor, valid: torch.Tensor, n: int):
    scores = scores.clone()
    for b in range(scores.shape[0]):
        banned = banned_ngram_tokens(tokens[b][valid[b]].tolist(), n)
        if banned:
            scores[b, banned] = NEG_INF
    return scores


def forbid(scores: torch.Tensor, token_ids: list[int]) -> torch.Tensor:
    scores = scores.clone()
    scores[:, token_ids] = NEG_INF
    return scores


def top_k_filter(scores: torch.Tensor, k: int) -> torch.Tensor:
    k = min(k, scores.shape[-1])
    kth = torch.topk(scores, k)[0][..., -1, None]  # (B, 1)
    return scores.masked_fill(scores < kth, NEG_INF)


def top_p_filter(scores: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probability reaches ``p`` (at least one)."""
    sorted_scores, order = torch.sort(scores, descending=False)
    cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)  # ascending
    drop_sorted = cumulative <= (1 - p)
    drop_sorted[..., -1:] = False
    drop = drop_sorted.scatter(1, order, drop_sorted)
    return scores.masked_fill(drop, NEG_INF)


def apply_penalties(
    scores: torch.Tensor, tokens: torch.Tensor, valid: torch.Tensor, new_tokens: int, config: DecodingConfig
) -> torch.Tensor:
    if config.repetition_penalty != 1.0:
        scores = repetition_penalty(scores, tokens, valid, config.repetition_penalty)
    if config.no_repeat_ngram_size:
        scores = no_repeat_ngram(scores, tokens, valid, config.no_repeat_ngram_size)
    if new_tokens < config.min_new_tokens and config.eos_token_id:
        scores = forbid(scores, config.eos_token_id)
    return scores


def apply_warpers(scores: torch.Tensor, config: DecodingConfig) -> torch.Tensor:
    if config.temperature != 1.0:
        scores = scores / config.temperature
    if config.top_k:
        scores = top_k_filter(scores, config.top_k)
    if config.top_p < 1.0:
        scores = top_p_filter(scores, config.top_p)
    return scores
