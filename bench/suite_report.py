"""The suite's table (Markdown), its JSON and the quality-vs-parameters plot, assembled from cells.

A cell with no cached result is "not run", a failed cell "failed" with its cause; no number is
ever filled in for either. Ratios are peftkit / peft of the same task and method, both measured
by the same runner (each cell in its own process) on the same machine.
"""

from __future__ import annotations

import math
import re
import statistics
from pathlib import Path
from typing import Any

from suite_cells import LABELS, TASK_LABELS, Cell

README_START = "<!-- bench-suite:start -->"
README_END = "<!-- bench-suite:end -->"
RATIO_FIELDS = ("trainable", "adapter_bytes", "step_ms_median", "peak_rss_mib", "tokens_per_s")
TIMED = ("step_ms_median", "tokens_per_s")  # compared only between cells of the same machine


STUCK_SHARE = 0.99  # a run whose most frequent prediction takes this share of the held-out set is stuck


def rows(cells: list[Cell], results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (task, method, implementation), its seeds pooled (see :func:`pooled`), with its
    ratios to the matching peft row."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for c in cells:
        res = results.get(c.key, {"status": "not run"})
        groups.setdefault(c.group, []).append({"seed": c.seed, "key": c.key, **res})
    by_id = {g: pooled(runs) for g, runs in groups.items()}
    out = []
    for (task, method, impl), res in by_id.items():
        ref = by_id.get((task, method, "peft"))
        row = {"task": task, "method": method, "impl": impl, **res}
        if impl == "peftkit" and res.get("status") == "ok" and ref and ref.get("status") == "ok":
            same = res["machines"] == ref["machines"]
            fields = [f for f in RATIO_FIELDS if same or f not in TIMED]
            row["ratio_to_peft"] = {f: res[f] / ref[f] for f in fields if ref.get(f)}
            row["machines_differ"] = None if same else (res["machines"], ref["machines"])
        out.append(row)
    return out


def pooled(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The seeds of one row: quality mean, sample sd and min over the finished seeds, the median of
    each cost, and the seeds whose predictions stayed on one class (classification only)."""
    ok = [r for r in runs if r.get("status") == "ok"]
    base = {"key": runs[0]["key"], "seeds_total": len(runs), "seeds": len(ok)}
    if not ok:
        failed = next((r for r in runs if r.get("status") == "failed"), None)
        return {**base, **(failed or {"status": "not run"}), "key": runs[0]["key"]}
    quality = [r["quality"] for r in ok]
    mean = statistics.fmean(quality)
    return {
        **base,
        "status": "ok",
        "quality": mean,
        "quality_sd": statistics.stdev(quality) if len(quality) > 1 else 0.0,
        "quality_min": min(quality),
        "qualities": {r["seed"]: r["quality"] for r in ok},
        "stuck_seeds": [r["seed"] for r in ok if _top_share(r) >= STUCK_SHARE],
        "machines": sorted({_machine(r) for r in ok}),
        **{f: statistics.median(r[f] for r in ok) for f in RATIO_FIELDS if all(f in r for r in ok)},
    }


def _machine(run: dict[str, Any]) -> str:
    """The machine a cell ran on, as far as its record tells (older cells lack the CPU's capability)."""
    m = run.get("machine", {})
    capability = m.get("cpu_capability", "capability unrecorded")
    return f"{m.get('cpu', '?')}, {capability}, {m.get('cores', '?')} cores"


def _top_share(run: dict[str, Any]) -> float:
    return run.get("metrics", {}).get("eval_top_prediction_share", 0.0)


def difference(row: dict[str, Any], ref: dict[str, Any] | None) -> str:
    """peftkit's mean minus peft's, and whether it exceeds twice its standard error (Welch)."""
    if not ref or row.get("status") != "ok" or ref.get("status") != "ok":
        return ""
    diff = row["quality"] - ref["quality"]
    se = math.sqrt(row["quality_sd"] ** 2 / row["seeds"] + ref["quality_sd"] ** 2 / ref["seeds"])
    if min(row["seeds"], ref["seeds"]) < 2:
        return f"{diff:+.1f}"
    verdict = "beyond spread" if abs(diff) > 2 * se else "within spread"
    return f"{diff:+.1f} ({verdict}, 2 SE = {2 * se:.1f})"


def _num(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def _ratio(row: dict[str, Any], field: str) -> str:
    r = row.get("ratio_to_peft", {}).get(field)
    return "" if r is None else f" ({r:.2f}x)"


def _quality(row: dict[str, Any] | None) -> str:
    if row is None:
        return "—"
    if row["status"] != "ok":
        return "not run" if row["status"] == "not run" else "failed"
    if row["seeds_total"] == 1:
        return _num(row["quality"])
    seeds = (
        f"{row['seeds']}" if row["seeds"] == row["seeds_total"] else f"{row['seeds']} of {row['seeds_total']}"
    )
    return f"{row['quality']:.1f} ± {row['quality_sd']:.1f} (min {row['quality_min']:.1f}, {seeds} seeds)"


def markdown(table_rows: list[dict[str, Any]], title: str) -> str:
    """The results table: one line per (task, method), peft's quality beside peftkit's. With several
    seeds, qualities read mean ± sd (min) and a column gives peftkit's mean minus peft's."""
    seeded = any(r["seeds_total"] > 1 for r in table_rows)
    extra = ("| peftkit - peft ", "---:|") if seeded else ("", "")
    lines = [
        title,
        "",
        f"| task | method | peftkit | peft {extra[0]}| trainable (x peft) | saved KiB (x peft) "
        "| step ms median (x peft) | tokens/s (x peft) | peak RSS MiB (x peft) |",
        f"|---|---|---:|---:|{extra[1]}---:|---:|---:|---:|---:|",
    ]
    index = {(r["task"], r["method"], r["impl"]): r for r in table_rows}
    failures, notes = [], []
    for r in table_rows:
        if r["impl"] != "peftkit":
            continue
        ref = index.get((r["task"], r["method"], "peft"))
        quality = [_quality(r), _quality(ref)] + ([difference(r, ref)] if seeded else [])
        task = TASK_LABELS[r["task"]]
        lines.append(f"| {task} | {LABELS[r['method']]} | " + " | ".join(quality + _costs(r)) + " |")
        failures += [x for x in (r, ref) if x and x["status"] == "failed"]
        notes += [_stuck(x) for x in (r, ref) if x and x.get("stuck_seeds")]
        if r.get("machines_differ"):
            ours, theirs = r["machines_differ"]
            notes.append(
                f"{r['task']} {r['method']}: step time and tokens/s not compared, the cells ran on different "
                f"machines (peftkit: {'; '.join(ours)}; peft: {'; '.join(theirs)})"
            )
    lines += [f"\nfailed: {f['task']} {f['method']} {f['impl']}: {f['error']}" for f in failures]
    lines += [f"\n{n}" for n in notes]
    return "\n".join(lines) + "\n"


def _costs(r: dict[str, Any]) -> list[str]:
    if r["status"] != "ok":
        return ["", "", "", "", ""]
    return [
        f"{round(r['trainable']):,}{_ratio(r, 'trainable')}",
        f"{r['adapter_bytes'] / 1024:,.0f}{_ratio(r, 'adapter_bytes')}",
        f"{r['step_ms_median']:,.0f}{_ratio(r, 'step_ms_median')}",
        f"{r['tokens_per_s']:,.0f}{_ratio(r, 'tokens_per_s')}",
        f"{r['peak_rss_mib']:,.0f}{_ratio(r, 'peak_rss_mib')}",
    ]


def _stuck(r: dict[str, Any]) -> str:
    return (
        f"stuck on one class: {r['task']} {r['method']} {r['impl']}, seed(s) {r['stuck_seeds']} "
        f"(the most frequent prediction took >= {STUCK_SHARE:.0%} of the held-out set)"
    )


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
