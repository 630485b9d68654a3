"""Read training records from local jsonl / csv / tsv files, or from the Hugging Face hub.

Bad rows never pass silently: each one is recorded with its line number as it appears in the file
(1-based; the header is line 1 for csv/tsv) and either skipped (reported by
:meth:`ReadResult.summary`) or, with ``strict=True``, turned into a :class:`DataError`.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._common import Record
from .errors import DataError

FORMATS = ("jsonl", "csv", "tsv")
_SUFFIXES = {".jsonl": "jsonl", ".csv": "csv", ".tsv": "tsv"}
_SHOWN = 10  # lines listed by summary()
_STRICT_SHOWN = 5  # problems quoted by a strict-mode error

Problem = tuple[int, str]  # (line number in the file, reason)
Parsed = tuple[int, "dict[str, Any] | str"]  # (line, record or the reason it is bad)


@dataclass
class ReadResult:
    """The good records of a file and the (line, reason) of every row that was skipped."""

    path: Path
    records: list[dict[str, Any]]
    problems: list[Problem] = field(default_factory=list)

    def summary(self) -> str:
        """One line: how many records were read, and how many rows were skipped at which lines."""
        text = f"{self.path}: {len(self.records)} records"
        if not self.problems:
            return text
        lines = ", ".join(str(line) for line, _ in self.problems[:_SHOWN])
        more = ", ..." if len(self.problems) > _SHOWN else ""
        first = self.problems[0][1]
        return f"{text}; skipped {len(self.problems)} bad rows (lines {lines}{more}; first: {first})"


def read_records(
    path: str | os.PathLike,
    *,
    format: str | None = None,
    columns: dict[str, str] | None = None,
    delimiter: str | None = None,
    strict: bool = False,
    required: Sequence[str] | None = None,
) -> ReadResult:
    """Read a jsonl, csv or tsv file into a list of dicts.

    Args:
        path: the file.
        format: ``"jsonl"``, ``"csv"`` or ``"tsv"``; inferred from the suffix when ``None``.
        columns: renames source columns to the names the task expects, e.g. ``{"sentence": "text"}``.
            Every source column named here must exist. Other columns are kept under their own names.
        delimiter: field separator for csv/tsv (default ``","`` / tab). TSV is read without quote
            handling (``csv.QUOTE_NONE``), as GLUE files contain unbalanced quotes in text.
        strict: raise on the first bad rows instead of skipping them.
        required: fields (after renaming) that every row must have, non-empty. Defaults to the
            target names of ``columns``. ``TaskSpec.required_columns()`` gives a task's list.

    Raises:
        DataError: missing file, unknown format, a required column absent from the file, every row
            bad, or (``strict``) any bad row.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    fmt = _resolve_format(path, format)
    columns = dict(columns or {})
    required = list(columns.values()) if required is None else list(required)
    if fmt == "jsonl":
        records, problems = _read_jsonl(path, columns, required)
    else:
        records, problems = _collect(_read_delimited(path, fmt, columns, delimiter, required), required, path)
    result = ReadResult(path, records, problems)
    _check_result(result, strict)
    return result


def _resolve_format(path: Path, format: str | None) -> str:
    fmt = format.lower() if format else _SUFFIXES.get(path.suffix.lower())
    if fmt not in FORMATS:
        given = format if format else f"suffix {path.suffix!r}"
        raise DataError(f"{path}: unknown format ({given}); allowed formats: {list(FORMATS)} (pass format=)")
    return fmt


def _collect(
    parsed: Iterable[Parsed], required: Sequence[str], path: Path
) -> tuple[list[dict], list[Problem]]:
    """Split parsed rows into good records (each a :class:`Record` knowing its line) and (line, reason)
    problems."""
    records, problems = [], []
    for line, item in parsed:
        reason = item if isinstance(item, str) else _field_problem(item, required)
        if reason:
            problems.append((line, reason))
        else:
            records.append(Record(item, f"{path.name} line {line}"))
    return records, problems


def _field_problem(record: dict[str, Any], required: Sequence[str]) -> str | None:
    for name in required:
        if name not in record:
            return f"missing field {name!r}"
        if _is_empty(record[name]):
            return f"empty field {name!r}"
    return None


def _is_empty(value: Any) -> bool:
    if isinstance(value, str):
        return not value.strip()
    return value is None or (isinstance(value, (list, dict)) and not value)


def _check_result(result: ReadResult, strict: bool) -> None:
    if result.problems and (strict or not result.records):
        shown = "; ".join(f"line {line}: {why}" for line, why in result.problems[:_STRICT_SHOWN])
        head = "every row is bad" if not result.records else f"{len(result.problems)} bad rows"
        more = "; ..." if len(result.problems) > _STRICT_SHOWN else ""
        raise DataError(f"{result.path}: {head} ({shown}{more})")
    if not result.records:
        raise DataError(f"{result.path}: no records")


# --- jsonl ---------------------------------------------------------------------------------------


def _read_jsonl(path: Path, columns: dict[str, str], required: Sequence[str]) -> tuple[list, list]:
    seen: set[str] = set()

    def renamed() -> Iterator[Parsed]:
        for line, item in _parse_jsonl(path):
            if isinstance(item, dict):
                seen.update(item)
                item = {columns.get(k, k): v for k, v in item.items()}
            yield line, item

    records, problems = _collect(renamed(), required, path)
    if seen:  # a column absent from every object is a naming problem, not a row problem
        _check_columns(path, sorted(seen), columns, required)
    return records, problems


def _parse_jsonl(path: Path) -> Iterator[Parsed]:
    with path.open(encoding="utf-8-sig") as f:
        for line_no, line in enumerate(f, 1):
            yield line_no, _parse_json_line(line)


def _parse_json_line(line: str) -> dict[str, Any] | str:
    if not line.strip():
        return "empty row"
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        return f"invalid JSON ({e.msg} at column {e.colno})"
    return obj if isinstance(obj, dict) else f"expected a JSON object, got {type(obj).__name__}"


# --- csv / tsv -----------------------------------------------------------------------------------


def _read_delimited(
    path: Path, fmt: str, columns: dict[str, str], delimiter: str | None, required: Sequence[str]
) -> Iterator[Parsed]:
    delimiter = delimiter or ("\t" if fmt == "tsv" else ",")
    quoting = csv.QUOTE_NONE if fmt == "tsv" else csv.QUOTE_MINIMAL
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f, delimiter=delimiter, quoting=quoting)
        header = [h.strip() for h in next(reader, [])]
        if not any(header):
            raise DataError(f"{path}: no header line (expected column names on line 1)")
        _check_columns(path, header, columns, required)
        names = [columns.get(h, h) for h in header]
        last = reader.line_num
        try:
            for row in reader:
                line, last = last + 1, reader.line_num  # a quoted field may span lines
                yield line, _row_to_record(row, names)
        except csv.Error as e:
            raise DataError(f"{path}: line {reader.line_num}: cannot parse {fmt} ({e})") from e


def _row_to_record(row: list[str], names: list[str]) -> dict[str, str] | str:
    if not any(cell.strip() for cell in row):
        return "empty row"
    if len(row) != len(names):
        return f"expected {len(names)} columns, got {len(row)}"
    return dict(zip(names, row))


def _check_columns(path: Path, present: list[str], columns: dict[str, str], required: Sequence[str]) -> None:
    """Every renamed source column and every required column must exist in the file."""
    for source in columns:
        if source not in present:
            raise DataError(f"{path}: column {source!r} (in columns=) not found; columns present: {present}")
    renamed = [columns.get(c, c) for c in present]
    for name in required:
        if name not in renamed:
            raise DataError(
                f"{path}: required column {name!r} not found; columns present: {present}. "
                f"Map a column onto it with columns={{'<source>': {name!r}}}."
            )


# --- hub -----------------------------------------------------------------------------------------

_OFFLINE_VARS = ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")


def load_hub_dataset(name: str, split: str = "train", config_name: str | None = None) -> list[dict[str, Any]]:
    """Load a Hugging Face hub dataset split as a list of dicts (needs ``datasets`` and network).

    In offline mode a dataset already in the local cache still loads; anything else that cannot
    reach the hub becomes a :class:`DataError` that points at local files (:func:`read_records`).
    """
    try:
        import datasets
    except ImportError as e:
        raise DataError(
            "loading a hub dataset needs the `datasets` package: pip install datasets "
            "(or pass a local jsonl/csv/tsv file)"
        ) from e
    offline = [v for v in _OFFLINE_VARS if os.environ.get(v, "").lower() in ("1", "true", "yes", "on")]
    try:
        ds = datasets.load_dataset(name, config_name, split=split)
    except Exception as e:
        if offline or _is_connection_error(e):
            why = f"offline mode is set ({', '.join(offline)})" if offline else f"connection failed ({e})"
            raise DataError(
                f"cannot load hub dataset {name!r}: the hub is unreachable, {why}. "
                "Download the data while online, or pass a local jsonl/csv/tsv file to read_records()."
            ) from e
        raise
    return [Record(row, f"{name} ({split}) row {i}") for i, row in enumerate(ds)]


def _is_connection_error(exc: BaseException | None) -> bool:
    """True for a network failure anywhere in the exception chain (requests, httpx, hub offline)."""
    while exc is not None:
        kind = type(exc).__name__.lower()
        if isinstance(exc, ConnectionError) or "connect" in kind or "offline" in kind or "timeout" in kind:
            return True
        exc = exc.__cause__ or exc.__context__
    return False
