"""``metrics.jsonl``: one JSON object per line, appended so that a crash or a full disk never
leaves an unreadable file.

Each row is appended whole (write, flush, fsync); a failed append is cut back to the file's
previous length, so a later row never lands after half a line. A trailing partial line (the
process was killed inside ``write``) is skipped on reading, with a warning, and trimmed when a run
resumes; the file is never rewritten in place (a new file replaces it).
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

from ..io import atomic_write_text


def append_row(path: Path, row: dict[str, Any]) -> None:
    """Append ``row`` as one line and make it durable before returning."""
    line = (json.dumps(row) + "\n").encode("utf-8")
    with open(path, "ab") as f:
        end = f.tell()
        try:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        except OSError as err:
            _cut_back(f, end)
            raise OSError(
                err.errno,
                f"{path}: could not append a metrics row ({err.strerror or err}); the file keeps its "
                "complete rows. Free space, then continue with --resume",
            ) from err


def _cut_back(f, end: int) -> None:
    """Best effort: drop whatever part of a failed row reached the file."""
    with contextlib.suppress(OSError):  # the next read skips a trailing partial line anyway
        f.truncate(end)


def read_rows(path: Path) -> tuple[list[dict[str, Any]], bool]:
    """The rows of ``path`` and whether a trailing partial line was skipped (with a warning).

    A bad line anywhere but at the end is an error naming the file and line: it was not left by
    a crash while appending.
    """
    if not path.exists():
        return [], False
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.split("\n")
    tail = lines.pop()  # "" when the file ends with a newline, else an unterminated last line
    rows = [_parse(path, n, line) for n, line in enumerate(lines, 1) if line.strip()]
    if tail.strip():
        warnings.warn(
            f"{path}: skipped a partial last line (line {len(lines) + 1}, {len(tail)} characters): the "
            "run stopped while writing it",
            stacklevel=2,
        )
        return rows, True
    return rows, False


def _parse(path: Path, lineno: int, line: str) -> dict[str, Any]:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{lineno} is not valid JSON ({err}); fix or remove that line") from err
    if not isinstance(row, dict) or "step" not in row:
        raise ValueError(f"{path}:{lineno}: each line must be a JSON object with a 'step'")
    return row


def write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """Replace ``path`` with exactly ``rows`` (a new file renamed over the old one)."""
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
