"""Side-by-side benchmark suite: every method against its ``peft`` reference on one data set and budget.

    python bench/suite.py                 # full budget (hours on a 2-core CPU; resumable)
    python bench/suite.py --quick         # smoke budget, well under 15 minutes; labelled "quick"
    python bench/suite.py --only lora,prompt --tasks sst2   # only those cells (--force: re-run)
    python bench/suite.py --jobs 2        # two cells at once, the cores split between them
    python bench/suite.py --seeds 5       # every cell over seeds 0-4: mean ± sd (min) per row
    python bench/suite.py --peft-python /path/venv/bin/python   # peft's prefix cells in another env

Quality: SST-2 on MiniLM-L6 (``examples/sst2_minilm_*.yaml``: the shared train file, held-out split
eval_fraction 0.05 / seed 0, 8,000 training rows, 1,000 held out, one epoch of 32) and E2E on
SmolLM2-135M (``examples/e2e_smollm2_*.yaml``: 40 steps of 8, bf16, BLEU of greedy decoding on the
held-out MRs), peftkit beside ``peft`` where peft has the method. Every cell trains with peftkit's
Trainer (same data order, AdamW, schedule, evaluation), in its own subprocess (so ``ru_maxrss`` is
the cell's own peak RSS), each taking the heavy-job lock on its own (``--lock``).

Cost per cell: trainable parameters, bytes saved by ``save_pretrained``, median optimizer-step time,
tokens/s over the training steps, peak RSS; each also as a ratio to the peft cell of the method.
Inference: see ``suite_infer.py``.

Each cell's result is cached as ``<results>/cells/<task>-<method>-<impl>-<hash>.json``, the hash of
its settings; a cell already cached is not run again (``--force`` re-runs). Outputs:
``suite.json`` (machine, versions, date, every cell), ``suite.md`` and ``quality_vs_params.png``;
a full run also rewrites the README's table between its markers. ``--quick`` writes under
``bench/results/quick/`` only.

``--peft-python``: the interpreter for peft's cells of :data:`PEFT_PAST_KEY_VALUES` (prefix tuning,
P-tuning v2) and those of :data:`PEFT_DECODING_CACHE` that decode (prompt tuning on E2E). peft
(0.21.2) finds a model's prefix input by the name ``past_key_values`` in its forward signature, which
transformers 5.24 renamed ``cache``: with 5.24 peft refuses ("Model does not support past key
values"), and its prompt-tuning decoding sees no cache at any step and decodes garbage (the cells
check this by behaviour: :func:`suite_cells.check_peft_decoding_cache`); so those cells run in an
environment with the newest transformers before the rename (5.23). Each cell records the versions it
ran with.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import suite_report as report
from lora_overhead import machine_info
from suite_cells import FULL, QUICK, TASKS, Cell, all_cells, child_main

PEFT_PAST_KEY_VALUES = {"prefix", "ptuning_v2"}
# peft's cells that decode with a prompt-learning adapter: PeftModel.prepare_inputs_for_generation
# finds the decoding cache under ``past_key_values`` too; on 5.24 it sees none at every step, prepends
# the virtual tokens again and decodes garbage (BLEU 3.8 where 5.23 gives 47.8)
PEFT_DECODING_CACHE = {"prompt"}

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
LOCK = "/tmp/peftkit-heavy.lock"


def cached(cell: Cell, cells_dir: Path) -> dict[str, Any] | None:
    path = cells_dir / f"{cell.key}.json"
    return json.loads(path.read_text()) if path.exists() else None


def measured(cell: Cell, cells_dir: Path) -> bool:
    """Whether ``cell`` has a result that needs no re-run: a failed cell is kept (the table says
    why) until the next run tries it again."""
    result = cached(cell, cells_dir)
    return result is not None and result.get("status") == "ok"


def thread_env(jobs: int) -> dict[str, str] | None:
    """The environment of a cell when ``jobs`` cells share the machine: its cores split between them."""
    if jobs <= 1:
        return None
    threads = str(max(1, (os.cpu_count() or 1) // jobs))
    return {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}


def run_in_subprocess(
    args: list[str],
    lock: str | None,
    tail: int = 3000,
    env: dict[str, str] | None = None,
    python: str | None = None,
) -> tuple[int, str]:
    """``python bench/suite.py <args>`` in a fresh process, under ``flock lock`` when given (``-s`` for a
    lock named ``shared:<path>``: cells that may run beside each other, but not beside a timing run)."""
    cmd = [python or sys.executable, str(Path(__file__).resolve()), *args]
    if lock:
        shared = lock.startswith("shared:")
        cmd = ["flock", *(["-s"] if shared else []), lock.removeprefix("shared:"), *cmd]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=ROOT, env=env)
    return res.returncode, (res.stdout + res.stderr)[-tail:]


def cell_python(cell: Cell, peft_python: str | None) -> str | None:
    """The interpreter for ``cell``: ``peft_python`` for peft's prefix cells and its prompt-tuning
    cells that decode (E2E) when given, else ours."""
    if cell.impl != "peft":
        return None
    decodes = "max_new_tokens" in cell.eval
    old_cache = cell.method in PEFT_PAST_KEY_VALUES or (decodes and cell.method in PEFT_DECODING_CACHE)
    return peft_python if old_cache else None


def missing_modules(python: str, modules: list[str]) -> list[str]:
    """Those of ``modules`` that ``python`` cannot import (found by spec, nothing imported)."""
    code = "import importlib.util as u, sys; print(' '.join(m for m in sys.argv[1:] if not u.find_spec(m)))"
    res = subprocess.run([python, "-c", code, *modules], capture_output=True, text=True, check=False)
    return res.stdout.split() if res.returncode == 0 else modules


def interpreter_problems(cells: list[Cell], peft_python: str | None) -> list[str]:
    """What each interpreter the cells will run in lacks (peft for peft's cells, sacrebleu for
    decoding cells), so a run stops before hours of cells instead of failing at their evaluation."""
    needs: dict[str, set[str]] = {}
    for cell in cells:
        python = cell_python(cell, peft_python) or sys.executable
        wanted = {"peft"} if cell.impl == "peft" else set()
        needs.setdefault(python, set()).update(
            wanted | ({"sacrebleu"} if "max_new_tokens" in cell.eval else set())
        )
    problems = []
    for python, modules in needs.items():
        if missing := missing_modules(python, sorted(modules)):
            problems.append(
                f"{python} cannot import {', '.join(missing)}: pip install them into that environment"
            )
    return problems


def run_cell(
    cell: Cell,
    cells_dir: Path,
    lock: str | None,
    env: dict[str, str] | None = None,
    python: str | None = None,
) -> dict[str, Any]:
    """Run ``cell`` in its own process; a crash (e.g. killed for memory) is recorded as a failure."""
    from peftkit.io import atomic_write_json

    out = cells_dir / f"{cell.key}.json"
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(cell.to_dict(), f)
    t0 = time.perf_counter()
    code, log = run_in_subprocess(["--cell", f.name, "--cell-out", str(out)], lock, env=env, python=python)
    Path(f.name).unlink()
    if code != 0 or not out.exists():
        error = f"exit {code}: {log.strip().splitlines()[-1] if log.strip() else 'no output'}"
        atomic_write_json(
            out, {"key": cell.key, "cell": cell.to_dict(), "status": "failed", "error": error, "log": log}
        )
    result = json.loads(out.read_text())
    result["cell_wall_s"] = time.perf_counter() - t0
    atomic_write_json(out, result)
    return result


def run_inference(out: Path, quick: bool, lock: str | None) -> dict[str, Any]:
    from peftkit.io import atomic_write_json

    code, log = run_in_subprocess(["--infer-out", str(out), *(["--quick"] if quick else [])], lock)
    if code != 0 or not out.exists():
        atomic_write_json(
            out, {"status": "failed", "error": f"exit {code}: {log.strip().splitlines()[-1:]}", "log": log}
        )
    return json.loads(out.read_text())


def infer_child(out: Path, quick: bool) -> None:
    from suite_infer import run

    from peftkit.io import atomic_write_json

    settings = {"reps": 3, "warmup": 1, "seq": 16} if quick else {"reps": 10, "warmup": 2, "seq": 64}
    atomic_write_json(out, {"status": "ok", "machine": machine_info(), **run(**settings)})


def assemble(cells: list[Cell], cells_dir: Path, out_dir: Path, quick: bool, inf: dict | None) -> str:
    """suite.json, suite.md and the plot from the cached cells; returns the Markdown."""
    from peftkit.io import atomic_write_json, atomic_write_text

    results = {c.key: r for c in cells if (r := cached(c, cells_dir))}
    table = report.rows(cells, results)
    done = sum(r["status"] == "ok" for r in table)
    budget = QUICK if quick else FULL
    label = "QUICK SMOKE RUN (tiny budget; not comparable with the full table)" if quick else "full budget"
    title = (
        f"Benchmark suite, {label}: {done} of {len(table)} cells measured; quality = held-out accuracy % "
        f"(SST-2, {budget.sst2_limit} training rows, {budget.sst2_eval_limit} held out, "
        f"{budget.sst2_epochs:g} epoch of 32) and BLEU (E2E, {budget.e2e_steps} steps of 8, greedy, "
        f"{budget.e2e_bleu_inputs or 'all'} held-out MRs); cost columns give peftkit (its ratio to peft)."
        + threads_note(results.values())
    )
    md = report.markdown(table, title) + report.inference_markdown(inf)
    meta = {"mode": "quick" if quick else "full", "machine": machine_info(), "budget": vars(budget)}
    atomic_write_json(out_dir / "suite.json", {**meta, "cells": table, "inference": inf})
    atomic_write_text(out_dir / "suite.md", md)
    report.plot(
        table,
        out_dir / "quality_vs_params.png",
        title="quality vs trainable parameters" + (" (QUICK)" if quick else ""),
    )
    return md


def run_cells(
    pending: list[Cell],
    cells_dir: Path,
    lock: str | None,
    jobs: int,
    report: Callable[[], Any],
    peft_python: str | None = None,
) -> None:
    """Run ``pending``, ``jobs`` cells at a time (each in its own process); ``report`` after each."""
    env, report_lock = thread_env(jobs), threading.Lock()

    def one(cell: Cell) -> None:
        name = f"{cell.task} {cell.method} {cell.impl} seed {cell.seed}"
        print(f"{name} ...", flush=True)
        r = run_cell(cell, cells_dir, lock, env, cell_python(cell, peft_python))
        shown = (
            f"quality {r['quality']:.1f}, {r['step_ms_median']:.0f} ms/step"
            if r["status"] == "ok"
            else r["error"]
        )
        print(f"    {name} {r['status']}: {shown} ({r['cell_wall_s']:.0f} s)", flush=True)
        with report_lock:  # one writer of the outputs (and of matplotlib) at a time
            report()

    with ThreadPoolExecutor(max(1, jobs)) as pool:
        list(pool.map(one, pending))


def threads_note(results: Any) -> str:
    """Which torch thread counts the measured cells ran with (step times depend on it)."""
    threads = sorted({r["machine"]["torch_threads"] for r in results if r.get("machine")})
    return f" Cells ran with {' or '.join(map(str, threads))} torch thread(s) each." if threads else ""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--quick", action="store_true", help="smoke budget (minutes); outputs under results/quick/"
    )
    p.add_argument("--only", default="", help="comma-separated methods to run, e.g. lora,prompt")
    p.add_argument("--tasks", default="", help=f"comma-separated tasks among {list(TASKS)}")
    p.add_argument("--force", action="store_true", help="re-run cells that are already cached")
    p.add_argument("--no-inference", action="store_true")
    p.add_argument(
        "--jobs", type=int, default=1, help="cells at once, cores split between them, no lock (default 1)"
    )
    p.add_argument(
        "--lock",
        default=LOCK,
        help="flock file each cell takes ('' for none; 'shared:PATH' for a shared lock)",
    )
    p.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="run every cell with train.seed 0..N-1 (data order, head and "
        "adapter draws; same held-out split); the table pools them (default 1)",
    )
    p.add_argument(
        "--peft-python",
        help="interpreter for peft's prefix tuning / P-tuning v2 cells and its E2E prompt-tuning cells "
        "(an env with transformers 5.23: peft 0.21.2's prefix tuning fails on 5.24's renamed cache "
        "argument, and its prompt-tuning decoding loses the cache)",
    )
    p.add_argument("--report-only", action="store_true", help="assemble the outputs from cached cells")
    p.add_argument("--cell", type=Path, help=argparse.SUPPRESS)  # internal: one cell in this process
    p.add_argument("--cell-out", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--infer-out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.cell:
        return child_main(args.cell, args.cell_out)
    if args.infer_out:
        return infer_child(args.infer_out, args.quick)

    out_dir = RESULTS / "quick" if args.quick else RESULTS
    cells_dir = out_dir / "cells"
    cells_dir.mkdir(parents=True, exist_ok=True)
    only = [m for m in args.only.split(",") if m]
    tasks = [t for t in args.tasks.split(",") if t]
    if args.seeds < 1:
        p.error(f"--seeds must be at least 1, got {args.seeds}")
    if args.peft_python and not Path(args.peft_python).is_file():
        p.error(f"--peft-python {args.peft_python}: no such interpreter; give a python executable's path")
    every = all_cells(QUICK if args.quick else FULL, seeds=range(args.seeds))
    todo = [c for c in every if (not tasks or c.task in tasks) and (not only or c.method in only)]
    todo.sort(key=lambda c: c.seed)  # every row's first seed before any row's second
    exclusive = args.jobs > 1 and not args.lock.startswith("shared:")
    lock = None if exclusive else args.lock or None  # an exclusive lock would run them one by one
    inf_path = out_dir / "inference.json"  # first: minutes, where the cells take hours
    if not args.report_only and not args.no_inference and (args.force or not inf_path.exists()):
        print("inference ...", flush=True)
        run_inference(inf_path, args.quick, lock)
    if not args.report_only:
        pending = [c for c in todo if args.force or not measured(c, cells_dir)]
        if problems := interpreter_problems(pending, args.peft_python):
            p.error("; ".join(problems))
        print(f"{len(pending)} of {len(todo)} cells to run, {args.jobs} at a time", flush=True)
        run_cells(
            pending,
            cells_dir,
            lock,
            args.jobs,
            lambda: assemble(every, cells_dir, out_dir, args.quick, _cached_inference(out_dir)),
            args.peft_python,
        )
    md = assemble(every, cells_dir, out_dir, args.quick, _cached_inference(out_dir))
    if not args.quick and report.update_readme(ROOT / "README.md", md):
        print("README table updated")
    print(md)


def _cached_inference(out_dir: Path) -> dict | None:
    path = out_dir / "inference.json"
    return json.loads(path.read_text()) if path.exists() else None


if __name__ == "__main__":
    main()
