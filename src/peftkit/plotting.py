"""Figures for training runs: loss and eval-metric curves from ``metrics.jsonl``, and heatmaps
(rank maps, fusion weights).

matplotlib is imported only when a figure is drawn, and only its object-oriented API with the
Agg canvas is used, so the caller's pyplot backend and state are left alone. Files are written
atomically (temporary file, then rename).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .io import atomic_write

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

LOSS_KEYS = ("train_loss", "eval_loss")
EVAL_PREFIX = "eval_"


def new_figure(nrows: int = 1, ncols: int = 1, sharex: bool = False, **kwargs: Any) -> tuple[Figure, Any]:
    """A figure on an Agg canvas and its ``(nrows, ncols)`` array of axes, without touching pyplot."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError("plotting needs matplotlib: pip install matplotlib") from err
    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, sharex=sharex, squeeze=False)


def save_png(fig: Figure, out_png: str | Path) -> Path:
    out = Path(out_png)
    atomic_write(out, lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))
    return out


def read_metrics(metrics_path: str | Path) -> list[dict[str, Any]]:
    """Records of a ``metrics.jsonl`` (one JSON object per line, each with a ``step``); a partial
    last line (a run killed while writing it) is skipped with a warning."""
    from .training.metrics import read_rows

    return read_rows(Path(metrics_path))[0]


def series(records: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of the records carrying a finite number under ``key``."""
    points = [(r["step"], r[key]) for r in records if is_number(r.get(key))]
    return [s for s, _ in points], [v for _, v in points]


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def metric_keys(records: list[dict[str, Any]]) -> list[str]:
    """Eval metric keys (``eval_*`` other than ``eval_loss``) in first-seen order."""
    keys = dict.fromkeys(k for r in records for k in r if k.startswith(EVAL_PREFIX) and k not in LOSS_KEYS)
    return [k for k in keys if series(records, k)[0]]


def metrics_figure(records: list[dict[str, Any]]) -> Figure:
    """Losses vs step on the first axes; eval metrics vs step on a second one when there are any."""
    losses = [k for k in LOSS_KEYS if series(records, k)[0]]
    metrics = metric_keys(records)
    if not losses and not metrics:
        raise ValueError(f"nothing to plot: no {LOSS_KEYS[0]}, {LOSS_KEYS[1]} or eval_* numbers")
    panels = [(keys, label) for keys, label in ((losses, "loss"), (metrics, "eval metric")) if keys]
    fig, axes = new_figure(len(panels), 1, sharex=True, figsize=(7, 3.2 * len(panels)))
    for ax, (keys, ylabel) in zip(axes[:, 0], panels):
        draw_series(ax, records, keys, ylabel)
    axes[-1, 0].set_xlabel("step")
    return fig


def draw_series(ax: Axes, records: list[dict[str, Any]], keys: list[str], ylabel: str) -> None:
    for key in keys:
        steps, values = series(records, key)
        ax.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3, label=key)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")


def plot_metrics(metrics_path: str | Path, out_png: str | Path) -> Path:
    """Draw train/eval loss and the eval metrics of a ``metrics.jsonl`` against step into a PNG."""
    return save_png(metrics_figure(read_metrics(metrics_path)), out_png)


def plot_heatmap(
    matrix: Any,
    row_labels: list[str],
    col_labels: list[str],
    title: str,
    out_png: str | Path,
) -> Path:
    """A labelled heatmap of a 2-D array (nested lists, numpy array or tensor) with a colour bar;
    cells are annotated with their values when the grid is small enough to read them."""
    import numpy as np

    data = np.asarray(matrix.detach().cpu() if hasattr(matrix, "detach") else matrix, dtype=float)
    if data.ndim != 2:
        raise ValueError(f"plot_heatmap needs a 2-D matrix, got shape {data.shape}")
    if data.shape != (len(row_labels), len(col_labels)):
        raise ValueError(
            f"matrix has shape {data.shape} but there are {len(row_labels)} row labels "
            f"and {len(col_labels)} column labels"
        )
    rows, cols = data.shape
    fig, axes = new_figure(figsize=(1.2 + 0.6 * cols, 1.0 + 0.45 * rows))
    ax = axes[0, 0]
    image = ax.imshow(data, aspect="auto", cmap="viridis")
    fig.colorbar(image, ax=ax)
    ax.set_xticks(range(cols), labels=col_labels, rotation=45, ha="right")
    ax.set_yticks(range(rows), labels=row_labels)
    ax.set_title(title)
    if rows * cols <= 400:
        annotate(ax, data)
    return save_png(fig, out_png)


def annotate(ax: Axes, data: Any) -> None:
    """Write each cell's value in it: dark text on the light (high) end of viridis, light on the dark."""
    import numpy as np

    middle = (data.min() + data.max()) / 2
    for (i, j), value in np.ndenumerate(data):
        color = "k" if value > middle else "w"
        ax.text(j, i, f"{value:.3g}", ha="center", va="center", fontsize=7, color=color)


def write_figures(model: Any, out_dir: str | Path) -> list[Path]:
    """Draw every figure ``model`` describes (:meth:`peftkit.PeftModel.figures`) as ``out_dir/<name>.png``."""
    return [
        plot_heatmap(fig.grid, fig.rows, fig.cols, fig.title, Path(out_dir) / f"{fig.name}.png")
        for fig in model.figures()
    ]
