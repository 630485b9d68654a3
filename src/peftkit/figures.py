"""What a method shows of a trained adapter (AdaLoRA's rank map, AdaPtLoRA's gates), as data.

Methods describe their figures (:meth:`peftkit.registry.Method.figures`); drawing them is the
application's business (:func:`peftkit.plotting.write_figures`), so the library needs no plotting.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Heatmap:
    """A grid of numbers with its row and column labels, drawn as ``<name>.png``."""

    grid: list[list[float]]
    rows: list[str]
    cols: list[str]
    title: str
    name: str  # the file stem, e.g. "ranks_default"
