"""The suite's table (Markdown), its JSON and the quality-vs-parameters plot, assembled from cells.

A cell with no cached result is "not run", a failed cell "failed" with its cause; no number is
ever filled in for either. Ratios are peftkit / peft of the same task and method, both measured
by the same runner (each cell in its own process) on the same machine.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from suite_cells import LABELS, TASK_LABELS, Cell

README_START = "<!-- bench-suite:start -->"
README_END = "<!-- bench-suite:end -->"
RATIO_FIELDS = ("trainable", "adapter_bytes", "step_ms_median", "peak_rss_mib", "tokens_per_s")


def rows(cells: list[Cell], results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per cell: its result (or status "not run") and its ratios to the matching peft cell."""
    by_id = {(c.task, c.method, c.impl): results.get(c.key, {"status": "not run"}) for c in cells}
    out = []
    for c in cells:
        res = by_id[(c.task, c.method, c.impl)]
        ref = by_id.get((c.task, c.method, "peft"))
        row = {"task": c.task, "method": c.method, "impl": c.impl, "key": c.key, **res}
        if c.impl == "peftkit" and res.get("status") == "ok" and ref and ref.get("status") == "ok":
            row["ratio_to_peft"] = {f: res[f] / ref[f] for f in RATIO_FIELDS if ref.get(f)}
        out.append(row)
    return out


def _num(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def _ratio(row: dict[str, Any], field: str) -> str:
    r = row.get("ratio_to_peft", {}).get(field)
    return "" if r is None else f" ({r:.2f}x)"


def _quality(row: dict[str, Any] | None) -> str:
    if row is None:
        return "—"
    if row["status"] == "ok":
        return _num(row["quality"])
    return "not run" if row["status"] == "not run" else "failed"


def markdown(table_rows: list[dict[str, Any]], title: str) -> str:
    """The results table: one line per (task, method), peft's quality beside peftkit's."""
    lines = [
        title,
        "",
        "| task | method | peftkit | peft | trainable (x peft) | saved KiB (x peft) "
        "| step ms median (x peft) | tokens/s (x peft) | peak RSS MiB (x peft) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    index = {(r["task"], r["method"], r["impl"]): r for r in table_rows}
    failures = []
    for r in table_rows:
        if r["impl"] != "peftkit":
            continue
        ref = index.get((r["task"], r["method"], "peft"))
        cost = ["", "", "", "", ""]
        if r["status"] == "ok":
            cost = [
                f"{r['trainable']:,}{_ratio(r, 'trainable')}",
                f"{r['adapter_bytes'] / 1024:,.0f}{_ratio(r, 'adapter_bytes')}",
                f"{r['step_ms_median']:,.0f}{_ratio(r, 'step_ms_median')}",
                f"{r['tokens_per_s']:,.0f}{_ratio(r, 'tokens_per_s')}",
                f"{r['peak_rss_mib']:,.0f}{_ratio(r, 'peak_rss_mib')}",
            ]
        task = TASK_LABELS[r["task"]]
        lines.append(
            f"| {task} | {LABELS[r['method']]} | {_quality(r)} | {_quality(ref)} | " + " | ".join(cost) + " |"
        )
        failures += [x for x in (r, ref) if x and x["status"] == "failed"]
    for f in failures:
        lines.append(f"\nfailed: {f['task']} {f['method']} {f['impl']}: {f['error']}")
    return "\n".join(lines) + "\n"


def inference_markdown(inf: dict[str, Any] | None) -> str:
    if not inf:
        return "\nInference: not run.\n"
    if inf.get("status") == "failed":
        return f"\nInference: failed: {inf['error']}\n"
    lat = inf["latency"]
    lines = [
        f"\nInference ({inf['model']}, fp32, LoRA r={inf['rank']} all-linear, no_grad, median ms of "
        f"{inf['reps']} round-robin repetitions):",
        "",
        "| batch | base | peftkit merged | peftkit unmerged | peft unmerged |",
        "|---|---:|---:|---:|---:|",
    ]
    for batch, t in lat.items():
        base = t["base"]["median"]
        cells = [
            f"{t[k]['median']:.1f} ({t[k]['median'] / base:.2f}x base)"
            for k in ("peftkit_merged", "peftkit_unmerged", "peft_unmerged")
        ]
        lines.append(f"| {batch} | {base:.1f} | " + " | ".join(cells) + " |")
    mix = inf["mixed"]
    lines += [
        "",
        f"Mixed-adapter batch ({mix['adapters']} LoRA adapters, {mix['rows']} rows x {mix['seq']} tokens, "
        f"each row its own adapter via `adapter_names=`; same weights in both; max |logit| difference "
        f"{mix['max_abs_diff']:.1e}): peftkit {mix['peftkit']['median']:.0f} ms, "
        f"peft {mix['peft']['median']:.0f} ms median "
        f"({mix['peftkit']['median'] / mix['peft']['median']:.2f}x peft); "
        f"{mix['rows'] * mix['seq'] / mix['peftkit']['median'] * 1e3:,.0f} vs "
        f"{mix['rows'] * mix['seq'] / mix['peft']['median'] * 1e3:,.0f} tokens/s.",
    ]
    return "\n".join(lines) + "\n"


def plot(table_rows: list[dict[str, Any]], path: Path, title: str) -> Path | None:
    """Quality against trainable parameters (log x), one point per finished cell, peft hollow."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in table_rows if r["status"] == "ok"]
    if not done:
        return None
    tasks = list(dict.fromkeys(r["task"] for r in done))
    fig, axes = plt.subplots(1, len(tasks), figsize=(6.5 * len(tasks), 4.8), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        for r in (r for r in done if r["task"] == task):
            peft_cell = r["impl"] == "peft"
            ax.scatter(
                r["trainable"],
                r["quality"],
                marker="s" if peft_cell else "o",
                facecolors="none" if peft_cell else "C0",
                edgecolors="C3" if peft_cell else "C0",
                s=55,
            )
            ax.annotate(  # a peft point sits at its peftkit twin's x; the marker tells them apart
                LABELS[r["method"]],
                (r["trainable"], r["quality"]),
                fontsize=7,
                xytext=(4, -9 if peft_cell else 3),
                textcoords="offset points",
                color="C3" if peft_cell else "black",
            )
        ax.set_xscale("log")
        ax.set_xlabel("trainable parameters (log)")
        ax.set_ylabel(TASK_LABELS[task])
        ax.grid(alpha=0.3)
    axes[0][0].scatter([], [], marker="o", color="C0", label="peftkit")
    axes[0][0].scatter([], [], marker="s", facecolors="none", edgecolors="C3", label="peft")
    axes[0][0].legend(loc="lower right")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path


def update_readme(readme: Path, text: str) -> bool:
    """Replace what lies between the suite's markers in ``readme``; False when the markers are missing."""
    from peftkit.io import atomic_write_text

    old = readme.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(README_START) + ".*?" + re.escape(README_END), re.S)
    if not pattern.search(old):
        return False
    atomic_write_text(readme, pattern.sub(lambda _: f"{README_START}\n{text}{README_END}", old))
    return True
