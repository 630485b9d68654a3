"""Batching: pad lists of token ids into tensors.

Right padding (the default) leaves every position as it was. Left padding (for batched generation
with a causal LM) shifts each row's tokens right by its pad count; the collator adds that count to
``score_position`` / ``mask_position`` so they still point at the same token. With a left-padded
causal LM also ask for ``position_ids`` (``Collator(..., position_ids=True)``): models number
positions from 0 at the first column, so without them a left-padded row sees shifted positions.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch

POSITION_KEYS = ("score_position", "mask_position")
PADDING_SIDES = ("left", "right")


class Collator:
    """Callable turning a list of examples (dicts of id lists and ints) into a dict of tensors.

    Args:
        pad_token_id: fills ``input_ids`` (``tokenizer.pad_token_id``).
        padding_side: ``"right"`` or ``"left"``.
        label_pad_id: fills sequence ``labels`` (ignored by the loss).
        position_ids: also return ``position_ids`` counted over the non-pad tokens.

    Sequence ``labels`` aligned with ``input_ids`` (same length in every example: causal LM / sft)
    are padded on ``padding_side``; others (seq2seq targets) on the right. Int fields (class labels,
    positions) become a ``LongTensor`` of shape ``(B,)``.
    """

    def __init__(
        self,
        pad_token_id: int,
        padding_side: str = "right",
        label_pad_id: int = -100,
        position_ids: bool = False,
    ):
        if pad_token_id is None:
            raise ValueError("pad_token_id is None: set tokenizer.pad_token (e.g. to tokenizer.eos_token)")
        if padding_side not in PADDING_SIDES:
            raise ValueError(f"padding_side: got {padding_side!r}; allowed values: {list(PADDING_SIDES)}")
        self.pad_token_id = int(pad_token_id)
        self.padding_side = padding_side
        self.label_pad_id = label_pad_id
        self.position_ids = position_ids

    def _pad_value(self, key: str) -> int:
        return {"input_ids": self.pad_token_id, "labels": self.label_pad_id}.get(key, 0)

    def _side(self, key: str, examples: Sequence[dict[str, Any]]) -> str:
        if key != "labels" or all(len(e["labels"]) == len(e["input_ids"]) for e in examples):
            return self.padding_side
        return "right"

    def _pad(self, key: str, examples: Sequence[dict[str, Any]]) -> torch.Tensor:
        rows = [list(e[key]) for e in examples]
        width, value = max(len(r) for r in rows), self._pad_value(key)
        left = self._side(key, examples) == "left"
        padded = [[value] * (width - len(r)) + r if left else r + [value] * (width - len(r)) for r in rows]
        return torch.tensor(padded, dtype=torch.long)  # (B, T)

    def __call__(self, examples: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not examples:
            raise ValueError("cannot collate an empty list of examples")
        examples = [
            e if "attention_mask" in e else {**e, "attention_mask": [1] * len(e["input_ids"])}
            for e in examples
        ]
        batch = {}
        for key, first in examples[0].items():
            if isinstance(first, str):  # e.g. each row's task name: passed on as a list
                batch[key] = [e[key] for e in examples]
                continue
            is_seq = isinstance(first, (list, tuple))
            batch[key] = self._pad(key, examples) if is_seq else torch.tensor([e[key] for e in examples])
        if self.padding_side == "left":
            offsets = batch["input_ids"].shape[1] - torch.tensor(
                [len(e["input_ids"]) for e in examples]
            )  # (B,)
            for key in POSITION_KEYS:
                if key in batch:
                    batch[key] = batch[key] + offsets
        if self.position_ids:
            batch["position_ids"] = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)  # (B, T)
        return batch


def batches(
    examples: Sequence[Any], batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None
) -> Iterator[list[Any]]:
    """Yield lists of ``batch_size`` examples (the last may be shorter), shuffled with ``generator``."""
    if batch_size < 1:
        raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
    order = torch.randperm(len(examples), generator=generator).tolist() if shuffle else range(len(examples))
    for start in range(0, len(examples), batch_size):
        yield [examples[i] for i in order[start : start + batch_size]]
