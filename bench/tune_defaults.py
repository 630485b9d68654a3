"""Choosing peftkit's per-method defaults on validation data only: candidate settings, several seeds.

Every candidate runs the suite's cell (same budget, same runner) with ``data.holdout: validation``:
the suite's held-out rows are never read; a validation split of the same size is cut from the
training rows (:func:`peftkit.pipeline.read_split`). Each candidate is reported as the mean, sd and
min over its seeds and whether a seed got stuck on one class; the best by mean with no stuck seed is
what peftkit's defaults take (``methods/<m>/config.py``), and the suite then measures them on the
held-out rows.

    python bench/tune_defaults.py [--methods ptuning,prefix,adalora] [--seeds 3] [--jobs 2]
    python bench/tune_defaults.py --methods ptuning --candidates "lr 5e-3;lr 1e-2" --seeds 5
    python bench/tune_defaults.py --report-only

Results: ``bench/results/tuning/cells/*.json`` (one per run, cached by settings) and
``bench/results/tuning/tuning.md`` / ``tuning.json``.
"""

from __future__ import annotations

import argparse
import math
import statistics
from typing import Any

import suite
import suite_report
from lora_overhead import machine_info
from suite_cells import FULL, QUICK, Cell, run_settings

OUT = suite.RESULTS / "tuning"

W06 = {"warmup_ratio": 0.06}
# method -> candidate name -> overrides of the run config's sections (merged into the example's)
CANDIDATES: dict[str, dict[str, dict[str, dict[str, Any]]]] = {
    "ptuning": {  # warm-up 0.06 unless named: the example's before the method had its own (0.2)
        "lr 1e-3 (old)": {"train": {"lr": 1e-3, **W06}},
        "lr 3e-3": {"train": {"lr": 3e-3, **W06}},
        "lr 1e-2": {"train": {"lr": 1e-2, **W06}},
        "lr 3e-3, LSTM encoder": {
            "train": {"lr": 3e-3, **W06},
            "adapter": {"encoder_reparameterization_type": "LSTM"},
        },
        "lr 3e-2": {"train": {"lr": 3e-2, **W06}},
        "lr 1e-2, LSTM encoder": {
            "train": {"lr": 1e-2, **W06},
            "adapter": {"encoder_reparameterization_type": "LSTM"},
        },
        # the suite's seed 2 stayed on one class at 1e-2 (loss rising in warm-up): gentler starts
        "lr 5e-3": {"train": {"lr": 5e-3, **W06}},
        "lr 1e-2, warm-up 0.2": {"train": {"lr": 1e-2, "warmup_ratio": 0.2}},
    },
    "prefix": {
        "lr 1e-3 (old)": {"train": {"lr": 1e-3}},
        "lr 3e-4": {"train": {"lr": 3e-4}},
        "lr 3e-3": {"train": {"lr": 3e-3}},
        "lr 1e-4": {"train": {"lr": 1e-4}},
        "lr 5e-4": {"train": {"lr": 5e-4}},
    },
    "prompt": {  # the method had no rate of its own (the base 2e-4, 50x below its example's 1e-2)
        "lr 1e-2 (example)": {"train": {"lr": 1e-2}},
        "lr 3e-2": {"train": {"lr": 3e-2}},
        "lr 1e-1": {"train": {"lr": 1e-1}},
    },
    "ptuning_v2": {  # flat prefixes had no rate of their own (the base 2e-4; the example sets 1e-2)
        "lr 1e-2 (example)": {"train": {"lr": 1e-2}},
        "lr 3e-3": {"train": {"lr": 3e-3}},
        "lr 3e-2": {"train": {"lr": 3e-2}},
    },
    "adalora": {
        "lr 1e-3, squared (old)": {"train": {"lr": 1e-3}},
        "lr 1e-3, peft's form": {"train": {"lr": 1e-3}, "adapter": {"orth_reg_form": "peft"}},
        "lr 2e-3, peft's form": {"train": {"lr": 2e-3}, "adapter": {"orth_reg_form": "peft"}},
        "lr 2e-3, squared": {"train": {"lr": 2e-3}},
    },
}
TASK = "sst2"


def cells(
    methods: list[str], seeds: range, quick: bool, only: set[str] | None = None
) -> dict[tuple[str, str], list[Cell]]:
    """(method, candidate) -> its cells, one per seed, on the validation split (``only``: those names)."""
    out: dict[tuple[str, str], list[Cell]] = {}
    for method in methods:
        for name, overrides in CANDIDATES[method].items():
            if only is not None and name not in only:
                continue
            run, evaluation = run_settings(TASK, method, QUICK if quick else FULL)
            run = {k: ({**v, **overrides.get(k, {})} if isinstance(v, dict) else v) for k, v in run.items()}
            run["data"] = {**run["data"], "holdout": "validation"}
            out[method, name] = [
                Cell(TASK, method, "peftkit", {**run, "train": {**run["train"], "seed": s}}, evaluation)
                for s in seeds
            ]
    return out


def summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in results if r.get("status") == "ok"]
    quality = [r["quality"] for r in ok]
    share = [r.get("metrics", {}).get("eval_top_prediction_share", 0.0) for r in ok]
    return {
        "seeds": len(ok),
        "mean": statistics.fmean(quality) if quality else None,
        "sd": statistics.stdev(quality) if len(quality) > 1 else 0.0,
        "min": min(quality) if quality else None,
        "qualities": quality,
        "stuck": sum(s >= suite_report.STUCK_SHARE for s in share),
        "failed": [r.get("error") for r in results if r.get("status") == "failed"],
    }


def choose(rows: dict[str, dict[str, Any]]) -> str | None:
    """The chosen candidate: the best mean with no seed stuck, among those run over the most seeds;
    the incumbent (a name marked "(old)" or "(example)": what the method or its example used before)
    stays unless the best beats it by more than one standard error of the difference, since a
    default moves on evidence, not on a tie."""
    most = max(r["seeds"] for r in rows.values())
    done = {n: r for n, r in rows.items() if r["mean"] is not None and not r["stuck"] and r["seeds"] == most}
    if not done:
        return None
    best = max(done, key=lambda n: done[n]["mean"])
    incumbent = next((n for n in done if n.endswith(("(old)", "(example)"))), None)
    if incumbent is None or incumbent == best:
        return best
    a, b = done[best], done[incumbent]
    se = math.sqrt(a["sd"] ** 2 / a["seeds"] + b["sd"] ** 2 / b["seeds"])
    return best if a["mean"] - b["mean"] > se else incumbent


def markdown(table: dict[str, dict[str, dict[str, Any]]], seeds: int) -> str:
    lines = [
        f"Validation accuracy % (SST-2 on MiniLM-L6, the suite's budget, a validation split cut from the "
        f"training rows; up to {seeds} seeds each; * = chosen: best mean with no seed stuck on one class, "
        f"among those run over the most seeds; the former setting, '(old)' or '(example)', stays unless "
        f"beaten by more than one standard error)",
        "",
        "| method | candidate | seeds | mean | sd | min | stuck seeds | per seed |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for method, rows in table.items():
        best = choose(rows)
        for name, r in rows.items():
            if r["mean"] is None:
                lines.append(f"| {method} | {name} | 0 | not run | | | | |")
                continue
            mark = " *" if name == best else ""
            per = ", ".join(f"{q:.1f}" for q in r["qualities"])
            lines.append(
                f"| {method} | {name}{mark} | {r['seeds']} | {r['mean']:.1f} | {r['sd']:.1f} | "
                f"{r['min']:.1f} | {r['stuck']} | {per} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    from peftkit.io import atomic_write_json, atomic_write_text

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", default=",".join(CANDIDATES))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--candidates", default="", help="candidate names to run, separated by ';' (default: all)")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="the suite's smoke budget (checks the machinery)")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--lock", default="", help="flock file each run takes ('shared:PATH' for a shared lock)")
    args = p.parse_args()
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in CANDIDATES]
    if unknown:
        p.error(f"no candidates for {unknown}; known: {list(CANDIDATES)}")
    out = OUT / "quick" if args.quick else OUT
    cells_dir = out / "cells"
    cells_dir.mkdir(parents=True, exist_ok=True)
    only = {n.strip() for n in args.candidates.split(";") if n.strip()} or None
    names = {n for m in methods for n in CANDIDATES[m]}
    if only is not None and not only <= names:
        p.error(f"unknown candidates {sorted(only - names)}; known: {sorted(names)}")
    todo = cells(methods, range(args.seeds), args.quick, only)
    pending = [c for cs in todo.values() for c in cs if not suite.cached(c, cells_dir)]
    pending.sort(key=lambda c: c.seed)  # every candidate's first seed before any second one
    if not args.report_only:
        print(f"{len(pending)} runs to do, {args.jobs} at a time", flush=True)
        suite.run_cells(pending, cells_dir, args.lock or None, args.jobs, lambda: None)
    table: dict[str, dict[str, dict[str, Any]]] = {}  # every candidate, from what is cached
    for (method, name), cs in cells(list(CANDIDATES), range(args.seeds), args.quick).items():
        table.setdefault(method, {})[name] = summary([r for c in cs if (r := suite.cached(c, cells_dir))])
    md = markdown(table, args.seeds)
    atomic_write_json(out / "tuning.json", {"machine": machine_info(), "table": table})
    atomic_write_text(out / "tuning.md", md)
    print(md)


if __name__ == "__main__":
    main()
