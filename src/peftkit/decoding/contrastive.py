"""Contrastive search (Su et al., 2022): likely tokens that do not repeat what was said.

At each step the ``top_k`` most likely candidates are fed to the model in one batch; candidate
``v`` scores ``(1 - a) * p(v) - a * max_j cos(h_v, h_j)`` where ``h_v`` is its last-layer hidden
state and ``h_j`` those of every earlier real token (prompt included). ``a = penalty_alpha``;
``a = 0`` is greedy decoding.
"""

from __future__ import annotations

import torch

from .processors import apply_penalties
from .state import Decoding


def degeneration_penalty(context: torch.Tensor, mask: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """``max_j cos(h_v, h_j)`` over real context positions.

    ``context (B, T, H)``, ``mask (B, T)`` bool, ``candidates (B, k, H)`` -> ``(B, k)``.
    """
    ctx = context / context.norm(dim=-1, keepdim=True)
    cand = candidates / candidates.norm(dim=-1, keepdim=True)
    cosine = torch.einsum("bkh,bth->bkt", cand, ctx)  # (B, k, T)
    cosine = cosine.masked_fill(~mask[:, None, :], torch.finfo(cosine.dtype).min)
    return cosine.max(dim=-1).values


def choose(probs: torch.Tensor, penalty: torch.Tensor, alpha: float) -> torch.Tensor:
    """Index ``(B,)`` of the best candidate by ``(1 - a) p - a * penalty`` (both ``(B, k)``)."""
    return ((1.0 - alpha) * probs - alpha * penalty).argmax(dim=-1)


def contrastive_search(run: Decoding) -> torch.Tensor:
    cfg, k = run.config, run.config.top_k
    out = run.prefill()
    context, context_mask = out.hidden, run.attention_mask.bool()  # (B, L, H), (B, L)
    logits = out.logits
    rows = torch.arange(run.input_ids.shape[0], device=run.input_ids.device)
    for step in range(cfg.max_new_tokens):
        scores = apply_penalties(run.logits(step, logits), run.sequences, run.valid, step, cfg)
        top_probs, top_ids = scores.softmax(dim=-1).topk(k, dim=-1)  # (B, k)
        run.stepper.reorder(rows.repeat_interleave(k))  # each row's cache once per candidate
        cand = run.stepper.step(top_ids.reshape(-1))  # logits (B*k, V), hidden (B*k, 1, H)
        hidden = cand.hidden.view(len(rows), k, -1)  # (B, k, H)
        best = choose(top_probs, degeneration_penalty(context, context_mask, hidden), cfg.penalty_alpha)
        chosen = rows * k + best  # (B,) flat index of each row's pick
        run.stepper.reorder(chosen)
        logits = cand.logits[chosen]
        context = torch.cat([context, hidden[rows, best][:, None]], dim=1)
        context_mask = torch.cat([context_mask, context_mask.new_ones(len(rows), 1)], dim=1)
        if run.append(top_ids[rows, best]):
            break
    return run.sequences
