"""Per-row routing: which adapter (and which task) each row of a batch runs with.

:class:`~peftkit.PeftModel` builds one :class:`RowContext` per forward and makes it current for the
duration of the call (:func:`routed`, a context variable: threads and nested models each see their
own); every adapter layer and the virtual-token stage read it with :func:`current_rows`. Nothing is
written into the layers, so there is no per-layer state to reset and no second path for tasks.

:func:`mix_rows` is the one mixed-batch template: the rows of each adapter are computed together
(inside the context narrowed to them, so a layer that reads row tasks sees its own rows' tasks) and
added to, or written over, those rows of the base output.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch

from .errors import AdapterError

BASE_ROW = "__base__"  # row label in a mixed batch meaning "no adapter"

Tasks = str | Sequence[str | None] | None  # one task for every row, one per row, or none given


def rows_for_batch(rows: Sequence, batch: int) -> list:
    """Per-row labels for a batch; beam search and ``num_return_sequences`` repeat each input row k
    times in a row (``repeat_interleave``), so the labels are repeated the same way."""
    if not rows or batch % len(rows):
        raise AdapterError(f"adapter_names has {len(rows)} entries but the batch has {batch} rows")
    k = batch // len(rows)
    return [r for r in rows for _ in range(k)]


@dataclass(frozen=True)
class RowContext:
    """One forward's routing. ``adapters``: each input row's adapter name (``BASE_ROW``: none), or
    None when every row runs the active adapters; ``tasks``: one task for all rows, one per row, or
    None. Both are given per input row and repeat like the rows (beams). ``batch``: the number of
    rows the forward runs (known when the model's input was seen), which a module fed something
    that is not batch-major (a position table) is told apart by."""

    adapters: tuple[str, ...] | None = None
    tasks: str | tuple[str | None, ...] | None = None
    batch: int | None = None

    @classmethod
    def of(cls, adapters: Sequence[str] | None = None, tasks: Tasks = None, batch: int | None = None):
        per_row = tasks if tasks is None or isinstance(tasks, str) else tuple(tasks)
        return cls(None if adapters is None else tuple(adapters), per_row, batch)

    @property
    def mixed(self) -> bool:
        return self.adapters is not None

    def adapter_rows(self, batch: int) -> list[str]:
        return rows_for_batch(self.adapters, batch)

    def task_rows(self, batch: int) -> list[str | None]:
        if self.tasks is None or isinstance(self.tasks, str):
            return [self.tasks] * batch
        return rows_for_batch(self.tasks, batch)

    def narrowed(self, index: Sequence[int], batch: int) -> RowContext:
        """The context of rows ``index`` of a ``batch``-row input, one entry per kept row."""
        adapters = None if self.adapters is None else tuple(self.adapter_rows(batch)[i] for i in index)
        tasks = self.tasks
        if tasks is not None and not isinstance(tasks, str):
            tasks = tuple(self.task_rows(batch)[i] for i in index)
        return RowContext(adapters, tasks, len(index))


_CURRENT: ContextVar[RowContext | None] = ContextVar("peftkit_rows", default=None)
_OUTSIDE = RowContext()  # outside any forward: every row on the active adapters


def current_rows() -> RowContext:
    """The routing of the forward being run (every row on the active adapters outside one)."""
    return _CURRENT.get() or _OUTSIDE


@contextmanager
def routed(rows: RowContext) -> Iterator[RowContext]:
    """Make ``rows`` the current routing inside the block."""
    token = _CURRENT.set(rows)
    try:
        yield rows
    finally:
        _CURRENT.reset(token)


def adapter_groups(rows: RowContext, batch: int, held: Collection[str]) -> Iterator[tuple[str, list[int]]]:
    """Each adapter of ``held`` that some rows use, with those rows (first use first)."""
    names = rows.adapter_rows(batch)
    for name in dict.fromkeys(names):
        if name != BASE_ROW and name in held:
            yield name, [i for i, r in enumerate(names) if r == name]


def mix_rows(
    out: torch.Tensor,
    held: Collection[str],
    compute: Callable[[str, torch.Tensor], torch.Tensor],
    add: bool = True,
    source: torch.Tensor | None = None,
) -> torch.Tensor:
    """The mixed-batch template: for every adapter some rows use, ``compute(name, index)`` gives those
    rows' values (run inside the routing narrowed to them), added to ``out`` (``add``) or written
    over them. ``out`` is updated in place only when autograd is off and it does not share memory with
    ``source`` (the layer's input: an identity-like base hands its input back)."""
    rows, batch = current_rows(), out.shape[0]
    aliased = source is not None and out.untyped_storage().data_ptr() == source.untyped_storage().data_ptr()
    if not add or torch.is_grad_enabled() or aliased:
        out = out.clone()
    for name, picked in adapter_groups(rows, batch, held):
        index = torch.tensor(picked, device=out.device)
        with routed(rows.narrowed(picked, batch)):
            value = compute(name, index).to(out.dtype)
        if add:
            out.index_add_(0, index, value)
        else:
            out[index] = value
    return out
