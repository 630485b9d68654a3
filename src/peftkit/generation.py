"""Batched text generation for evaluation (left padding, greedy by default)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


@contextmanager
def padding_side(tokenizer, side: str) -> Iterator[None]:
    old = tokenizer.padding_side
    tokenizer.padding_side = side
    try:
        yield
    finally:
        tokenizer.padding_side = old


def generate_texts(
    model: nn.Module,
    tokenizer,
    prompts: list[str],
    max_new_tokens: int = 64,
    batch_size: int = 16,
    add_special_tokens: bool | None = None,
    **generate_kwargs,
) -> list[str]:
    """Complete each rendered prompt; returns only the new text (special tokens removed)."""
    if add_special_tokens is None:  # a chat template writes its own special tokens
        add_special_tokens = not getattr(tokenizer, "chat_template", None)
    kwargs = {
        "max_new_tokens": max_new_tokens,
        "do_sample": False,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        **generate_kwargs,
    }
    was_training = model.training
    model.eval()
    texts: list[str] = []
    with padding_side(tokenizer, "left"), torch.no_grad():
        for i in range(0, len(prompts), batch_size):
            enc = tokenizer(
                prompts[i : i + batch_size],
                return_tensors="pt",
                padding=True,
                add_special_tokens=add_special_tokens,
            )
            out = model.generate(**enc, **kwargs)  # (B, T_prompt + new)
            new = out[:, enc["input_ids"].shape[1] :]
            texts += tokenizer.batch_decode(new, skip_special_tokens=True)
    model.train(was_training)
    return texts
