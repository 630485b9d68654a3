"""Batched text generation from strings (left padding), on peftkit's decoding engine."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from .decoding import DecodingConfig, cut_at_stop_string, generate
from .decoding.state import Streamer


@contextmanager
def padding_side(tokenizer, side: str) -> Iterator[None]:
    old = tokenizer.padding_side
    tokenizer.padding_side = side
    try:
        yield
    finally:
        tokenizer.padding_side = old


def decoding_config(tokenizer, max_new_tokens: int, **options) -> DecodingConfig:
    """Greedy by default; end and padding ids from the tokenizer unless given."""
    options.setdefault("eos_token_id", tokenizer.eos_token_id)
    options.setdefault("pad_token_id", tokenizer.pad_token_id)
    return DecodingConfig.from_kwargs(max_new_tokens=max_new_tokens, **options)


def generate_texts(
    model: nn.Module,
    tokenizer,
    prompts: list[str],
    max_new_tokens: int = 64,
    batch_size: int = 16,
    add_special_tokens: bool | None = None,
    streamer: Streamer | None = None,
    **options,
) -> list[str]:
    """Complete each rendered prompt; returns only the new text (special tokens removed, cut
    before the first stop string). ``options`` are :class:`DecodingConfig` fields; ``streamer`` is
    called after every decoding step of each batch (see :func:`peftkit.decoding.generate`)."""
    if add_special_tokens is None:  # a chat template writes its own special tokens
        add_special_tokens = not getattr(tokenizer, "chat_template", None)
    config = decoding_config(tokenizer, max_new_tokens, **options)
    texts: list[str] = []
    with padding_side(tokenizer, "left"), torch.no_grad():
        for i in range(0, len(prompts), batch_size):
            enc = tokenizer(
                prompts[i : i + batch_size],
                return_tensors="pt",
                padding=True,
                add_special_tokens=add_special_tokens,
            )
            out = generate(
                model, enc["input_ids"], enc["attention_mask"], config, tokenizer=tokenizer, streamer=streamer
            )
            texts += tokenizer.batch_decode(out.new_tokens, skip_special_tokens=True)
    return [cut_at_stop_string(t, config.stop_strings) for t in texts]
