"""Helpers shared by the task encoders: field access, tokenization and fitting text into a budget."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import DataError

Example = dict[str, list[int] | int]


@dataclass
class Row:
    """What encoding one record produced: an example, or the reason the record was dropped."""

    example: Example | None = None
    truncated: bool = False
    dropped: str | None = None


class Record(dict):
    """A record read from a file: a plain dict that also knows where it came from (``where``, e.g.
    ``"train.jsonl line 7"``), so an error found after shuffling and splitting names the file's line."""

    __slots__ = ("where",)

    def __init__(self, data: dict[str, Any], where: str):
        super().__init__(data)
        self.where = where


def row_name(record: dict[str, Any], index: int) -> str:
    """Where a record came from: its file and line when read from a file, else its index."""
    return getattr(record, "where", None) or f"row {index}"


def get_field(record: dict[str, Any], column: str, index: int) -> Any:
    """``record[column]``, or a :class:`DataError` naming the row, the column and the columns present."""
    value = record.get(column)
    if value is None:
        raise DataError(
            f"{row_name(record, index)}: no value for column {column!r}; columns present: {sorted(record)}. "
            "Rename columns with read_records(columns={...}) or set the TaskSpec *_column field."
        )
    return value


def token_ids(tokenizer: Any, text: str, special: bool) -> list[int]:
    """Token ids of ``text``; ``special`` adds the tokenizer's BOS/EOS/CLS... as it is configured to."""
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def eos_id(tokenizer: Any) -> int:
    """The tokenizer's EOS id; a tokenizer without one cannot mark where a response ends."""
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos_token; set tokenizer.eos_token before encoding")
    return int(tokenizer.eos_token_id)


def drop_last_tokens(tokenizer: Any, text: str, n: int) -> str:
    """``text`` without its last ``n`` tokens (cut at a token's character offset; words if no offsets)."""
    if getattr(tokenizer, "is_fast", False):
        offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        keep = len(offsets) - n
        shorter = text[: offsets[keep - 1][1]] if keep > 0 else ""
    else:
        words = text.split()
        shorter = " ".join(words[: max(0, len(words) - n)])
    return shorter if len(shorter) < len(text) else text[:-1]  # always make progress


def fit_text(
    render: Callable[[str], list[int]], text: str, max_length: int, tokenizer: Any
) -> tuple[list[int] | None, bool]:
    """Shorten ``text`` from its end until ``render(text)`` fits in ``max_length`` tokens.

    Returns the ids and whether ``text`` was cut; ``None`` ids when even an empty text does not fit
    (the template around it alone is too long).
    """
    ids, cut = render(text), False
    while len(ids) > max_length and text:
        text, cut = drop_last_tokens(tokenizer, text, len(ids) - max_length), True
        ids = render(text)
    return (ids if len(ids) <= max_length else None), cut
