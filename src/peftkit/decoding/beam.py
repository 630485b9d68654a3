"""Beam search (vectorised over the batch), scored as REFERENCE.md gives it.

A finished hypothesis scores ``sum log p / n ** length_penalty`` with ``n`` its number of new
tokens (the end token included). Each step keeps the ``K = max(2, 1 + #eos) * num_beams`` best
continuations over all beams, so that ``num_beams`` unfinished ones remain even when the best all
end; the top ``num_beams`` of those that end become finished hypotheses. The bookkeeping follows
``transformers``' beam search step for step, so both pick the same tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .processors import apply_penalties
from .state import Decoding

NEG = -1.0e9


def gather(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows ``index (B, k)`` of ``t (B, n, ...)`` along dim 1."""
    while index.dim() < t.dim():
        index = index.unsqueeze(-1)
    return torch.take_along_dim(t, index, dim=1)


@dataclass
class Beams:
    running: torch.Tensor  # (B, nb, T_max) tokens of the live beams
    running_scores: torch.Tensor  # (B, nb) sum of log p
    done: torch.Tensor  # (B, nb, T_max) finished hypotheses
    done_scores: torch.Tensor  # (B, nb) length-penalised scores
    done_flag: torch.Tensor  # (B, nb) slot holds a real hypothesis
    done_length: torch.Tensor  # (B, nb) new tokens of each finished hypothesis
    open_rows: torch.Tensor  # (B, 1) a running beam may still beat the finished ones

    @classmethod
    def start(cls, input_ids: torch.Tensor, nb: int, max_new: int, pad: int) -> Beams:
        rows, length = input_ids.shape
        batch = rows // nb
        running = input_ids.new_full((batch, nb, length + max_new), pad)
        running[:, :, :length] = input_ids.view(batch, nb, length)
        scores = torch.zeros(batch, nb, device=input_ids.device)
        scores[:, 1:] = NEG  # only the first beam's tokens count at the start: no duplicate beams
        return cls(
            running=running,
            running_scores=scores,
            done=running.clone(),
            done_scores=torch.full_like(scores, NEG),
            done_flag=torch.zeros_like(scores, dtype=torch.bool),
            done_length=torch.zeros_like(scores, dtype=torch.long),
            open_rows=torch.ones(batch, 1, dtype=torch.bool, device=input_ids.device),
        )


def beam_search(run: Decoding) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns ``(sequences (B * num_return, L + n), scores (B * num_return,))``."""
    cfg = run.config
    nb, prompt_len = cfg.num_beams, run.input_ids.shape[1]
    beams = Beams.start(run.input_ids, nb, cfg.max_new_tokens, cfg.pad_id)
    batch = beams.running.shape[0]
    keep = max(2, 1 + len(cfg.eos_token_id or [])) * nb
    out = run.prefill()
    for step in range(cfg.max_new_tokens):
        flat = beams.running[:, :, : prompt_len + step].reshape(batch * nb, -1)  # (B*nb, L+t)
        log_probs = run.logits(step, out.logits).log_softmax(dim=-1)
        valid = torch.cat(
            [run.attention_mask.bool(), flat.new_ones(flat.shape[0], step, dtype=torch.bool)], 1
        )
        log_probs = apply_penalties(log_probs, flat, valid, step, cfg)
        total = (log_probs.view(batch, nb, -1) + beams.running_scores[:, :, None]).view(batch, -1)
        cand_scores, cand_seqs, cand_parents = _top_continuations(beams, total, keep, prompt_len + step)
        ends = run.stop.hits(cand_seqs.view(batch * keep, -1)[:, : prompt_len + step + 1]).view(batch, keep)
        if step + 1 == cfg.max_new_tokens:
            ends = torch.ones_like(ends)  # out of budget: every continuation is final
        parents = _advance(beams, cand_scores, cand_seqs, cand_parents, ends)
        _finish(beams, cand_scores, cand_seqs, ends, step + 1, cfg)
        if not _keep_going(beams, ends, step + 1, cfg):
            break
        flat_parents = (parents + torch.arange(batch, device=parents.device)[:, None] * nb).view(-1)
        run.stepper.reorder(flat_parents)
        if run.hook is not None and hasattr(run.hook, "reorder"):
            run.hook.reorder(flat_parents)
        run.sequences = beams.running[:, :, : prompt_len + step + 1].reshape(batch * nb, -1)
        out = run.stepper.step(run.sequences[:, -1])
    return _best(beams, cfg.num_return_sequences, prompt_len)


def _top_continuations(beams: Beams, total: torch.Tensor, keep: int, cur: int):
    """The ``keep`` best (beam, token) pairs per row: scores and parent beams ``(B, K)``, sequences
    ``(B, K, T_max)``."""
    vocab = total.shape[1] // beams.running.shape[1]
    scores, index = torch.topk(total, k=keep)  # (B, K)
    parent, token = index // vocab, index % vocab
    seqs = gather(beams.running, parent).clone()  # (B, K, T_max)
    seqs[:, :, cur] = token
    return scores, seqs, parent


def _advance(beams: Beams, cand_scores, cand_seqs, cand_parents, ends) -> torch.Tensor:
    """The best ``num_beams`` continuations that did not end become the running beams."""
    nb = beams.running.shape[1]
    live = cand_scores + ends.float() * NEG
    pick = torch.topk(live, k=nb)[1]  # (B, nb)
    beams.running = gather(cand_seqs, pick)
    beams.running_scores = gather(live, pick)
    return gather(cand_parents, pick)  # (B, nb) parent beam of each new running beam


def _finish(beams: Beams, cand_scores, cand_seqs, ends, new_len: int, cfg) -> None:
    """Continuations among the top ``num_beams`` that ended join the finished hypotheses if good enough."""
    nb, keep = beams.running.shape[1], cand_scores.shape[1]
    top = torch.arange(keep, device=ends.device)[None, :] < nb
    ended = ends & top  # (B, K)
    scores = cand_scores / (new_len**cfg.length_penalty)
    full = beams.done_flag.all(dim=1, keepdim=True) & (cfg.early_stopping is True)
    scores = scores + full.float() * NEG + (~beams.open_rows).float() * NEG + (~ended).float() * NEG
    merged_scores = torch.cat([beams.done_scores, scores], dim=1)
    best = torch.topk(merged_scores, k=nb)[1]
    lengths = torch.full_like(cand_scores, new_len, dtype=torch.long)
    beams.done = gather(torch.cat([beams.done, cand_seqs], dim=1), best)
    beams.done_scores = gather(merged_scores, best)
    beams.done_flag = gather(torch.cat([beams.done_flag, ended], dim=1), best)
    beams.done_length = gather(torch.cat([beams.done_length, lengths], dim=1), best)


def _keep_going(beams: Beams, ends, new_len: int, cfg) -> bool:
    """Update which rows can still improve; False when the whole batch is done."""
    never = cfg.early_stopping == "never" and cfg.length_penalty > 0
    best_len = cfg.max_new_tokens if never else new_len  # the length a running beam is judged at
    best_running = beams.running_scores[:, :1] / (best_len**cfg.length_penalty)
    worst_done = torch.where(beams.done_flag, beams.done_scores.min(dim=1, keepdim=True)[0], NEG)
    beams.open_rows = beams.open_rows & (best_running > worst_done).any(dim=-1, keepdim=True)
    all_full = bool(beams.done_flag.all()) and cfg.early_stopping is True
    return bool(beams.open_rows.any()) and not all_full and not bool(ends.all())


def _best(beams: Beams, n: int, prompt_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    seqs = beams.done[:, :n].reshape(-1, beams.done.shape[-1])  # sorted best first
    scores = beams.done_scores[:, :n].reshape(-1)
    length = prompt_len + int(beams.done_length[:, :n].max())
    return seqs[:, :length], scores
