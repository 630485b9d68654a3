"""Cloze (PET) classification: a template turns the text into a question a language model answers
with one word per label (Schick & Schütze, 2021, "Exploiting Cloze Questions for Few Shot Text
Classification and Natural Language Inference", §3).

- ``model_kind="masked"``: ``{mask}`` becomes the tokenizer's mask token; the label words are scored
  at that position (``mask_position``).
- ``model_kind="causal"``: the prompt is the template up to ``{mask}`` (the rest is dropped); the
  label words are scored as the *next* token, i.e. from the logits at the last prompt token
  (``score_position``).

Every example carries ``score_position``, the index whose logits are read (masked examples also
carry ``mask_position``, the same index). Positions are counted in the unpadded example;
:class:`~peftkit.data.Collator` shifts them by the pad count for left padding. Works zero-shot or
trained, with or without adapters: :func:`cloze_logits` just calls the model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ._common import Row, fit_text, get_field, token_ids
from .spec import RowEncoder, TaskSpec, label_index, lookup_label

_MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")


def _prefix_and_suffix(spec: TaskSpec) -> tuple[str, str]:
    """The template split at ``{mask}``."""
    before, after = (spec.template or "").split("{mask}")
    return before, after


def _mask_id(tokenizer: Any) -> int:
    if tokenizer.mask_token_id is None:
        raise ConfigError("model_kind", "'masked' needs a tokenizer with a mask_token; use 'causal'")
    return int(tokenizer.mask_token_id)


def _word_ids(tokenizer: Any, reference: str, word: str) -> list[int]:
    """Tokens of ``word`` as it follows ``reference`` after a space (``" great"``, not ``"great"``)."""
    head = token_ids(tokenizer, reference, special=False)
    full = token_ids(tokenizer, f"{reference} {word.strip()}", special=False)
    if full[: len(head)] == head and len(full) > len(head):
        return full[len(head) :]
    return token_ids(tokenizer, " " + word.strip(), special=False)


def verbalizer_token_ids(tokenizer: Any, spec: TaskSpec) -> list[int]:
    """One token id per label, in the order of ``spec.label_list()``.

    Each word is tokenized after the template's text before ``{mask}`` and a space, so tokenizers
    that mark a leading space (BPE ``Ġ``, SentencePiece ``▁``) give the in-sentence token. A masked
    LM needs single-token words; a causal LM scores a word's first token.

    Raises:
        ValueError: a word is several tokens (masked), or two labels share a token.
    """
    words = {str(k): w for k, w in (spec.verbalizer or {}).items()}
    reference = _prefix_and_suffix(spec)[0].replace("{text}", "").strip() or "."
    ids: dict[int, str] = {}
    for label in spec.label_list() or []:
        word = words[str(label)]
        pieces = _word_ids(tokenizer, reference, word)
        if not pieces:
            raise ConfigError("verbalizer", f"{word!r} tokenizes to nothing")
        if spec.model_kind == "masked" and len(pieces) != 1:
            raise ConfigError(
                "verbalizer", f"{word!r} is {len(pieces)} tokens; a masked LM predicts one token"
            )
        if pieces[0] in ids:
            raise ConfigError(
                "verbalizer", f"{word!r} and {ids[pieces[0]]!r} start with the same token {pieces[0]}"
            )
        ids[pieces[0]] = word
    return list(ids)


def cloze_row_encoder(tokenizer: Any, spec: TaskSpec) -> RowEncoder:
    """One record -> ``input_ids``, ``attention_mask``, ``score_position`` (+ ``mask_position``), ``labels``.

    Too long a text is cut at its end, keeping the template around it.
    """

    verbalizer_token_ids(tokenizer, spec)  # fail early on a bad verbalizer
    index = label_index(spec)
    render = (
        _masked_renderer(tokenizer, spec)
        if spec.model_kind == "masked"
        else _causal_renderer(tokenizer, spec)
    )

    def encode_row(record: dict[str, Any], i: int) -> Row:
        label = lookup_label(index, record, spec, i)
        ids, cut = fit_text(render, str(get_field(record, spec.text_column, i)), spec.max_length, tokenizer)
        if ids is None:
            return Row(dropped="template alone is longer than max_length")
        position = _score_position(tokenizer, spec, ids)
        if position is None:
            return Row(dropped="mask token not found exactly once")
        example = {
            "input_ids": ids,
            "attention_mask": [1] * len(ids),
            "score_position": position,
            "labels": label,
        }
        if spec.model_kind == "masked":
            example["mask_position"] = position
        return Row(example, cut)

    return encode_row


def _causal_renderer(tokenizer: Any, spec: TaskSpec) -> Callable[[str], list[int]]:
    """text -> ids of the template up to ``{mask}`` (trailing space dropped; BOS etc. added)."""
    before = _prefix_and_suffix(spec)[0]
    return lambda text: token_ids(tokenizer, before.replace("{text}", text).rstrip(), special=True)


def _masked_renderer(tokenizer: Any, spec: TaskSpec) -> Callable[[str], list[int]]:
    """text -> ids of the whole template, ``{mask}`` replaced by the tokenizer's mask token."""
    before, after = _prefix_and_suffix(spec)
    _mask_id(tokenizer)  # fail early without a mask token
    mask = tokenizer.mask_token
    return lambda text: token_ids(
        tokenizer, before.replace("{text}", text) + mask + after.replace("{text}", text), True
    )


def _score_position(tokenizer: Any, spec: TaskSpec, ids: list[int]) -> int | None:
    if spec.model_kind == "causal":
        return len(ids) - 1
    hits = [j for j, t in enumerate(ids) if t == _mask_id(tokenizer)]
    return hits[0] if len(hits) == 1 else None


def cloze_logits(
    model: nn.Module, batch: dict[str, torch.Tensor], label_token_ids: Sequence[int]
) -> torch.Tensor:
    """Label-word logits ``(B, num_labels)`` at each row's ``score_position``.

    Passes ``input_ids``, ``attention_mask`` (and ``token_type_ids`` / ``position_ids`` when the
    batch has them) to ``model`` and reads ``logits[b, score_position[b], label_token_ids]``.
    """
    out = model(**{k: batch[k] for k in _MODEL_INPUTS if k in batch})
    logits = out if isinstance(out, torch.Tensor) else out.logits  # (B, T, V)
    rows = torch.arange(logits.shape[0], device=logits.device)  # (B,)
    at = logits[rows, batch["score_position"].to(logits.device)]  # (B, V)
    return at[:, torch.as_tensor(list(label_token_ids), device=logits.device)]  # (B, L)


def cloze_loss(
    model: nn.Module, batch: dict[str, torch.Tensor], label_token_ids: Sequence[int]
) -> torch.Tensor:
    """Cross-entropy over the label words' logits (PET's classification loss, §3.1)."""
    logits = cloze_logits(model, batch, label_token_ids)  # (B, L)
    return F.cross_entropy(logits.float(), batch["labels"].to(logits.device))
