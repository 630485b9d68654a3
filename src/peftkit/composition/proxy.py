"""Proxy-tuning (Liu et al. 2024, "Tuning Language Models by Proxy"): steer a model at decoding time.

A model ``M`` is decoded from ``s_M + alpha * (s_M+ - s_M-)``, where ``M+`` (the expert) is a
small tuned model and ``M-`` (the anti-expert) the same small model untuned; the difference of
their logits carries what tuning taught the small model (sec. 2). The three models must share a
vocabulary. Raw logits are added, as in the paper; with log-softmax scores instead each term
moves by a per-row constant, so the next-token distribution (and greedy choice) is the same.
Each step, the expert and anti-expert are fed the same tokens as ``M`` with their own
KV caches (:class:`~peftkit.decoding.ModelLogitsHook`), so it works with every decoding strategy
(greedy, sampling, beam, contrastive); the hook sees raw logits, before penalties and warpers.

Two layouts:

* two models: ``M+`` a full tuned model and ``M-`` its untuned base (two copies in memory);
* one model in memory: ``M+`` and ``M-`` are one :class:`~peftkit.PeftModel` stepped twice, with
  its adapter on (``adapter_names=[name]``) and off (``"__base__"``).
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import check_finite
from ..decoding import ModelLogitsHook
from ..errors import ConfigError
from ..rows import BASE_ROW


def vocabulary_size(model: nn.Module) -> int:
    """Rows of the output head (the logits' size), else ``config.vocab_size``."""
    get_out = getattr(model, "get_output_embeddings", None)
    head = get_out() if callable(get_out) else None
    if head is not None and getattr(head, "weight", None) is not None:
        return int(head.weight.shape[0])
    size = getattr(getattr(model, "config", None), "vocab_size", None)
    if size is None:
        raise ConfigError("proxy", f"cannot tell the vocabulary size of {type(model).__name__}")
    return int(size)


def check_vocabularies(model: nn.Module, expert: nn.Module, antiexpert: nn.Module) -> None:
    sizes = {"model": vocabulary_size(model), "expert": vocabulary_size(expert)}
    sizes["anti-expert"] = vocabulary_size(antiexpert)
    if len(set(sizes.values())) > 1:
        listed = ", ".join(f"{k} {v}" for k, v in sizes.items())
        raise ConfigError(
            "proxy",
            f"vocabularies differ ({listed} tokens): proxy-tuning adds logits token by token, so the "
            "decoded model, the expert and the anti-expert must share one tokenizer and vocabulary",
        )


def proxy_combine(alpha: float):
    """``combine(own, [expert, anti]) = own + alpha * (expert - anti)``, all ``(N, V)``."""

    def combine(own: torch.Tensor, others: list[torch.Tensor]) -> torch.Tensor:
        expert, anti = others
        return own + alpha * (expert - anti)

    return combine


def proxy_tuning_hook(
    model: nn.Module,
    expert: nn.Module,
    antiexpert: nn.Module | None = None,
    alpha: float = 1.0,
    adapter_name: str | None = None,
) -> ModelLogitsHook:
    """The logits hook that proxy-tunes ``model``: pass it as ``generate(..., logits_hook=hook)``.

    With ``antiexpert=None``, ``expert`` must be a :class:`~peftkit.PeftModel`; it serves as both
    proxies, adapter ``adapter_name`` (default: its active adapter) on for ``M+`` and off for ``M-``.
    """
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool):
        raise ConfigError("alpha", f"must be a number, got {alpha!r}")
    check_finite("alpha", float(alpha))
    if antiexpert is not None:
        check_vocabularies(model, expert, antiexpert)
        return ModelLogitsHook([expert, antiexpert], proxy_combine(alpha))
    from ..model import PeftModel

    if not isinstance(expert, PeftModel):
        raise ConfigError(
            "antiexpert",
            "missing: give the untuned small model, or an expert PeftModel whose adapter is switched off "
            "for the anti-expert",
        )
    name = adapter_name or expert.active_adapter
    expert.check_known([name])
    check_vocabularies(model, expert, expert)
    rows = [{"adapter_names": [name]}, {"adapter_names": [BASE_ROW]}]  # any batch: one name per row
    return ModelLogitsHook([expert, expert], proxy_combine(alpha), rows)
