"""What a task reads from each record (:class:`TaskSpec`) and its labels; shared by every encoder
(:mod:`peftkit.data.tasks`, :mod:`peftkit.data.cloze`, :mod:`peftkit.data.sft`)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..config import check_fields
from ..errors import ConfigError
from ._common import Row, get_field, row_name
from .errors import DataError

TASK_TYPES = ("classification", "cloze", "sft", "seq2seq")
MODEL_KINDS = ("causal", "masked")


@dataclass
class TaskSpec:
    """What a task reads from each record and how it is turned into a training example.

    Args:
        type: one of ``"classification"``, ``"cloze"``, ``"sft"``, ``"seq2seq"``.
        text_column, text_pair_column, label_column: classification / cloze inputs.
        prompt_column, response_column: sft inputs; or ``messages_column`` holding a chat
            (a list of ``{"role", "content"}``) whose last (assistant) message is the response.
        source_column, target_column: seq2seq inputs.
        template: cloze pattern containing ``{text}`` and ``{mask}``, e.g. ``"{text} It was {mask}."``.
        verbalizer: cloze label -> word, e.g. ``{0: "terrible", 1: "great"}``. Keys may be ints or
            strings; labels in the data are matched after ``str()``.
        labels: the label set, in index order. Classification infers it (sorted) from the data when
            ``None``; cloze defaults to the verbalizer's key order.
        max_length: token budget of one example (each side, for seq2seq).
        system_prompt: sft system message, used unless a chat already starts with one.
        model_kind: cloze only: ``"causal"`` scores the token after the prompt, ``"masked"`` scores
            the tokenizer's mask token.
        task_column: multi-task data: the column naming each record's task; examples then carry it
            as ``tasks`` and batches pass it to the model (task-conditioned adapters such as AdaPtLoRA).
    """

    type: str
    text_column: str = "text"
    text_pair_column: str | None = None
    label_column: str = "label"
    prompt_column: str = "prompt"
    response_column: str = "response"
    messages_column: str | None = None
    source_column: str = "source"
    target_column: str = "target"
    template: str | None = None
    verbalizer: dict[Any, str] | None = None
    labels: list[Any] | None = None
    max_length: int = 256
    system_prompt: str | None = None
    model_kind: str = "causal"
    task_column: str | None = None

    def __post_init__(self) -> None:
        check_fields(self)
        _check_choice("type", self.type, TASK_TYPES)
        _check_choice("model_kind", self.model_kind, MODEL_KINDS)
        if isinstance(self.max_length, bool) or not isinstance(self.max_length, int) or self.max_length < 1:
            raise ConfigError("max_length", f"expected a positive int, got {self.max_length!r}")
        if self.labels is not None:
            self.labels = _check_labels(self.labels)
            if self.type == "classification" and len(self.labels) < 2:
                raise ConfigError("labels", f"a classifier needs at least two labels, got {self.labels!r}")
        if self.type == "cloze":
            self._check_cloze()

    def _check_cloze(self) -> None:
        t = self.template
        if not isinstance(t, str) or t.count("{text}") != 1 or t.count("{mask}") != 1:
            raise ConfigError(
                "template",
                f"cloze needs {{text}} and {{mask}} once each, e.g. '{{text}} It was {{mask}}.'; got {t!r}",
            )
        if self.model_kind == "causal" and t.index("{text}") > t.index("{mask}"):
            raise ConfigError("template", "a causal LM reads only the text before {mask}: put {text} first")
        v = self.verbalizer
        if not isinstance(v, dict) or not v or not all(isinstance(w, str) and w.strip() for w in v.values()):
            raise ConfigError(
                "verbalizer", f"cloze needs a dict label -> non-empty word, got {self.verbalizer!r}"
            )
        words = {str(k) for k in self.verbalizer}
        missing = [label for label in self.labels or [] if str(label) not in words]
        if missing:
            raise ConfigError(
                "labels", f"{missing} have no verbalizer word; verbalizer keys: {sorted(words)}"
            )

    def label_list(self) -> list[Any] | None:
        """The label set in index order (``labels``, else the verbalizer keys for cloze)."""
        if self.labels is None and self.type == "cloze":
            return list(self.verbalizer or {})
        return self.labels

    def with_labels(self, records: Sequence[dict[str, Any]]) -> TaskSpec:
        """This spec, with ``labels`` inferred from ``records`` when unset (classification).

        Encode evaluation data with the spec returned here (or ``Encoded.labels``) so that label
        indices agree between splits.
        """
        if self.labels is not None or self.type != "classification":
            return self
        labels = (class_label(r, self.label_column, i) for i, r in enumerate(records))
        found = {str(label): label for label in labels}
        if len(found) < 2:
            raise DataError(
                f"column {self.label_column!r} holds a single class {list(found.values())} in {len(records)} "
                "rows: a classifier needs at least two (one label would train a 1-output regression head). "
                "If the other classes are only missing from this data, list every class in task.labels"
            )
        return dataclasses.replace(self, labels=sorted(found.values(), key=_natural_key))

    def required_columns(self) -> list[str]:
        """Columns every record needs (pass to ``read_records(required=...)``)."""
        task = [self.task_column] if self.task_column else []
        return self._input_columns() + task

    def _input_columns(self) -> list[str]:
        if self.type == "sft":
            return (
                [self.messages_column] if self.messages_column else [self.prompt_column, self.response_column]
            )
        if self.type == "seq2seq":
            return [self.source_column, self.target_column]
        pair = [self.text_pair_column] if self.text_pair_column else []
        return [self.text_column, *pair, self.label_column]


def _check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(name, f"got {value!r}; allowed values: {list(allowed)}")


def _check_labels(labels: Any) -> list[Any]:
    if not isinstance(labels, (list, tuple)) or not labels:
        raise ConfigError("labels", f"expected a non-empty list, got {labels!r}")
    names = [str(label) for label in labels]
    if len(set(names)) != len(names):
        raise ConfigError("labels", f"labels must be distinct after str(): {names}")
    return list(labels)


def _natural_key(value: Any) -> tuple[int, float, str]:
    """Sort numbers (and numeric strings) numerically, before other strings."""
    try:
        return (0, float(value), str(value))
    except (TypeError, ValueError):
        return (1, 0.0, str(value))


RowEncoder = Callable[[dict[str, Any], int], Row]  # (record, its index) -> one example


def label_index(spec: TaskSpec) -> dict[str, int]:
    """``str(label) -> index`` for the spec's label set."""
    return {str(label): i for i, label in enumerate(spec.label_list() or [])}


def class_label(record: dict[str, Any], column: str, row: int) -> Any:
    """``record``'s label: a string or a (finite) number. A NaN, list or mapping is no class, and turning
    it into one with ``str()`` would train on a class that does not exist."""
    label = get_field(record, column, row)
    if isinstance(label, (str, int)) or (isinstance(label, float) and math.isfinite(label)):
        return label
    raise DataError(
        f"{row_name(record, row)}: label {label!r} in column {column!r} is not a class label; labels are "
        "strings or numbers. Fix or drop that row"
    )


def lookup_label(index: dict[str, int], record: dict[str, Any], spec: TaskSpec, row: int) -> int:
    """The index of ``record``'s label, or a :class:`DataError` naming the row and the allowed labels."""
    label = class_label(record, spec.label_column, row)
    if str(label) not in index:
        raise DataError(f"{row_name(record, row)}: label {label!r} is not one of {spec.label_list()}")
    return index[str(label)]
