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
from dataclasses import dataclass, field

import torch

from .errors import AdapterError

BASE_ROW = "__base__"  # row label in a mixed batch meaning "no adapter"

Tasks = str | Sequence[str | None] | None  # one task for every row, one per row, or none given


def rows_for_batch(rows: Sequence, batch: int) -> list:
    """Per-row labels for a batch; beam search and ``num_return_sequences`` repeat each input row k
    times in a row (``repeat_interleave``), so the labels are repeated the same way."""
    if not rows or batch % len(rows):
        raise AdapterError(
            "Length of `adapter_names` should be the same as the number of inputs, but got "
            f"{len(rows)} and {batch} respectively (adapter_names has {len(rows)} entries but the batch has "
            f"{batch} rows)"
        )
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
    # what every adapted layer of the forward asks again (groups, index tensors): computed once
    _memo: dict = field(default_factory=dict, compare=False, repr=False)

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

    def groups(self, batch: int) -> tuple[tuple[str, tuple[int, ...]], ...]:
        """Each adapter name the rows use (``BASE_ROW`` included), with its rows, first use first."""
        key = ("groups", batch)
        if key not in self._memo:
            names = self.adapter_rows(batch)
            self._memo[key] = tuple(
                (name, tuple(i for i, r in enumerate(names) if r == name)) for name in dict.fromkeys(names)
            )
        return self._memo[key]

    def index(self, rows: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """``rows`` as an index tensor on ``device`` (made once per forward)."""
        key = ("index", rows, device)
        if key not in self._memo:
            self._memo[key] = torch.tensor(rows, device=device)
        return self._memo[key]

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


def adapter_groups(rows: RowContext, batch: int, held: Collection[str]) -> list[tuple[str, tuple[int, ...]]]:
    """Each adapter of ``held`` that some rows use, with those rows (first use first)."""
    return [(name, picked) for name, picked in rows.groups(batch) if name != BASE_ROW and name in held]


def mix_rows(
    out: torch.Tensor,
    held: Collection[str],
    compute: Callable[[str, torch.Tensor | slice], torch.Tensor],
    add: bool = True,
    source: torch.Tensor | None = None,
) -> torch.Tensor:
    """The mixed-batch template: for every adapter some rows use, ``compute(name, index)`` gives those
    rows' values (run inside the routing narrowed to them), added to ``out`` (``add``) or written
    over them. When one adapter serves every row, ``index`` is ``slice(None)`` (no gather, no scatter).
    ``out`` is updated in place only when autograd is off and it does not share memory with
    ``source`` (the layer's input: an identity-like base hands its input back)."""
    rows, batch = current_rows(), out.shape[0]
    groups = adapter_groups(rows, batch, held)
    aliased = source is not None and out.untyped_storage().data_ptr() == source.untyped_storage().data_ptr()
    in_place = add and not torch.is_grad_enabled() and not aliased
    if len(groups) == 1 and len(groups[0][1]) == batch:  # every row runs the same adapter
        value = compute(groups[0][0], slice(None)).to(out.dtype)
        return (out.add_(value) if in_place else out + value) if add else value
    out = out if in_place else out.clone()
    for name, picked in groups:
        index = rows.index(picked, out.device)
        with routed(rows.narrowed(picked, batch)):
            value = compute(name, index).to(out.dtype)
        if add:
            out.index_add_(0, index, value)
        else:
            out[index] = value
    return out
