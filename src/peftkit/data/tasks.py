""":func:`encode`: records in, tokenized training examples out (the task spec: :mod:`peftkit.data.spec`).

Four task types, each a function from one record to one example:

- ``classification``: ``input_ids``, ``attention_mask``, ``labels`` (int index into ``spec.labels``).
- ``cloze``: PET-style prompt + verbalizer (Schick & Schütze, 2021, "Exploiting Cloze Questions for
  Few Shot Text Classification", §3); see :mod:`peftkit.data.cloze`.
- ``sft``: prompt + response with the loss on response tokens only; see :mod:`peftkit.data.sft`.
- ``seq2seq``: ``input_ids`` from the source, ``labels`` from the target (+ EOS).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ._common import Example, Row, eos_id, get_field, token_ids
from .cloze import cloze_row_encoder
from .errors import DataError
from .readers import ReadResult
from .sft import sft_row_encoder
from .spec import RowEncoder, TaskSpec, label_index, lookup_label

# --- results -------------------------------------------------------------------------------------


@dataclass
class EncodeStats:
    """Counts from one :func:`encode` call; lengths are of ``input_ids``."""

    count: int = 0
    truncated: int = 0
    mean_length: float = 0.0
    max_length: int = 0
    dropped: dict[str, int] = field(default_factory=dict)

    @property
    def num_dropped(self) -> int:
        return sum(self.dropped.values())

    def summary(self) -> str:
        text = (
            f"{self.count} examples, {self.truncated} truncated, "
            f"length mean {self.mean_length:.1f} max {self.max_length}"
        )
        if self.dropped:
            text += "; dropped " + ", ".join(f"{n} ({why})" for why, n in self.dropped.items())
        return text


@dataclass
class Encoded:
    """Tokenized examples (lists of ids, ready for :class:`~peftkit.data.Collator`) and their stats.

    ``labels`` is the label set used (index ``i`` <-> ``labels[i]``) for classification and cloze.
    """

    examples: list[Example]
    stats: EncodeStats
    labels: list[Any] | None = None


# --- encode --------------------------------------------------------------------------------------


def encode(records: Sequence[dict[str, Any]] | ReadResult, tokenizer: Any, spec: TaskSpec) -> Encoded:
    """Tokenize ``records`` for ``spec``'s task.

    Raises:
        DataError: a record lacks a column, has an unknown label, or no record could be encoded.
    """
    if isinstance(records, ReadResult):
        records = records.records
    spec = spec.with_labels(records)
    row_encoder = _builder(spec.type)(tokenizer, spec)
    examples, truncated, dropped = [], 0, Counter()
    for i, record in enumerate(records):
        row = row_encoder(record, i)
        if row.example is None:
            dropped[row.dropped or "unknown"] += 1
            continue
        if spec.task_column:
            row.example["tasks"] = str(get_field(record, spec.task_column, i))
        examples.append(row.example)
        truncated += row.truncated
    if not examples:
        raise DataError(f"no record could be encoded ({len(records)} given; dropped: {dict(dropped)})")
    return Encoded(examples, _stats(examples, truncated, dropped), spec.label_list())


def _builder(task_type: str) -> Callable[[Any, TaskSpec], RowEncoder]:
    builders = {
        "classification": _classification_row_encoder,
        "cloze": cloze_row_encoder,
        "sft": sft_row_encoder,
        "seq2seq": _seq2seq_row_encoder,
    }
    return builders[task_type]


def _stats(examples: list[Example], truncated: int, dropped: Counter) -> EncodeStats:
    lengths = [len(e["input_ids"]) for e in examples]
    return EncodeStats(len(examples), truncated, sum(lengths) / len(lengths), max(lengths), dict(dropped))


def _tokenize_truncated(tokenizer: Any, text: str, pair: str | None, max_length: int) -> tuple[Example, bool]:
    """Tokenize with special tokens; if over ``max_length``, again with truncation (and say so)."""
    enc = tokenizer(text, pair)
    cut = len(enc["input_ids"]) > max_length
    if cut:
        enc = tokenizer(text, pair, truncation=True, max_length=max_length)
    keys = ("input_ids", "attention_mask", "token_type_ids")
    return {k: list(enc[k]) for k in keys if k in enc}, cut


def _classification_row_encoder(tokenizer: Any, spec: TaskSpec) -> RowEncoder:
    index = label_index(spec)

    def encode_row(record: dict[str, Any], i: int) -> Row:
        label = lookup_label(index, record, spec, i)
        text = str(get_field(record, spec.text_column, i))
        pair = str(get_field(record, spec.text_pair_column, i)) if spec.text_pair_column else None
        example, cut = _tokenize_truncated(tokenizer, text, pair, spec.max_length)
        return Row({**example, "labels": label}, cut)

    return encode_row


def _seq2seq_row_encoder(tokenizer: Any, spec: TaskSpec) -> RowEncoder:
    eos = eos_id(tokenizer)

    def encode_row(record: dict[str, Any], i: int) -> Row:
        source = str(get_field(record, spec.source_column, i))
        example, cut_source = _tokenize_truncated(tokenizer, source, None, spec.max_length)
        labels = token_ids(tokenizer, str(get_field(record, spec.target_column, i)), special=False) + [eos]
        cut_target = len(labels) > spec.max_length
        if cut_target:
            labels = labels[: spec.max_length - 1] + [eos]  # a truncated target still ends with EOS
        return Row({**example, "labels": labels}, cut_source or cut_target)

    return encode_row
