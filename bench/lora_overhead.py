"""LoRA overhead benchmark: peftkit vs peft vs the bare base model (smollm2-135m, fp32, CPU).

What is measured (one run, default: batch 8 x 128 random token ids, seed 0, r=8, alpha=2r, all-linear):

1. Training step time (ms), timed in ONE process, round-robin: each repetition runs one step of every
   system, and the starting system rotates per repetition, so machine noise and thermal/cache drift hit
   all systems alike. The first ``--warmup`` repetitions are discarded; median, IQR and min over
   ``--steps`` (on a shared box the min is the least-contended estimate; ratios use medians).
   Systems (each on its own copy of the model, ``model.train()``, loss from ``labels=input_ids``):
     - ``base fwd-only``   : frozen base model, forward + loss under ``torch.no_grad`` (lower bound).
     - ``base full fwd+bwd``: all base parameters trainable, forward + backward, NO optimizer step
                              (grads reset with ``zero_grad(set_to_none=True)``).
     - ``peftkit LoRA``    : forward + backward + ``AdamW.step()`` over the trainable LoRA params + zero_grad.
     - ``peft LoRA``       : same as above with the ``peft`` reference implementation.
2. Peak RSS (MiB): every system is re-run in its own fresh subprocess (``--system NAME``: load model,
   build the system, run 2 steps so AdamW state exists) and reports ``ru_maxrss`` (which includes loading
   the model) plus the RSS right after setup. These subprocesses run one after another BEFORE the timing, so
   they never overlap the timed loop; their own step times are not used.
3. Inference latency (ms, ``torch.no_grad``, ``model.eval()``, ``use_cache=False``): base model vs
   peftkit after ``merge_and_unload()`` (carrying the adapter weights after the timed optimizer steps,
   so B != 0) vs the unmerged peftkit model; batch 1 x seq and batch x seq; round-robin; median of
   >= 10 after warm-up. The max |logit| difference merged vs unmerged is recorded as a sanity check.

Output: Markdown tables on stdout and a JSON file (``--out``) with raw timings and machine info.
``torch`` threads are left at their default (printed).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

MODEL = "smollm2-135m"
SYSTEMS = {
    "base_fwd": "base fwd-only (no_grad)",
    "base_full": "base full fwd+bwd (no optim)",
    "peftkit": "peftkit LoRA fwd+bwd+AdamW",
    "peft": "peft LoRA fwd+bwd+AdamW",
}
Step = Callable[[], None]


def mib_now() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def load_base() -> torch.nn.Module:
    from peftkit.models import load_model

    model, _ = load_model(MODEL, task="causal-lm")
    model.config.use_cache = False
    return model


def wrap_lora(kind: str, model: torch.nn.Module, rank: int) -> torch.nn.Module:
    torch.manual_seed(1)  # identical LoRA A init for both libraries
    lib: Any
    if kind == "peftkit":
        import peftkit as lib
    else:
        import peft as lib
    return lib.get_peft_model(model, lib.LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear"))


def build(system: str, ids: torch.Tensor, rank: int, model: Any = None) -> tuple[Step, Any]:
    """Return (one training step, the module) for ``system``; ``model`` is reused for the base rows."""
    model = load_base() if model is None else model
    model.train()
    if system == "base_fwd":

        def step() -> None:
            with torch.no_grad():
                model(input_ids=ids, labels=ids)

        return step, model
    if system == "base_full":
        model.requires_grad_(True)

        def step() -> None:
            model(input_ids=ids, labels=ids).loss.backward()
            model.zero_grad(set_to_none=True)

        return step, model
    pm = wrap_lora(system, model, rank)
    opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=1e-4)

    def step() -> None:
        pm(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, pm


def round_robin(fns: dict[str, Step], warmup: int, reps: int) -> dict[str, list[float]]:
    """Run every fn once per repetition, rotating the start; return ms per fn (warm-up dropped)."""
    names, out = list(fns), {k: [] for k in fns}
    for i in range(warmup + reps):
        k = i % len(names)
        for name in names[k:] + names[:k]:
            t0 = time.perf_counter()
            fns[name]()
            dt = (time.perf_counter() - t0) * 1e3
            if i >= warmup:
                out[name].append(dt)
    return out


def summary(ms: list[float]) -> dict[str, float]:
    q1, _, q3 = statistics.quantiles(ms, n=4, method="inclusive") if len(ms) > 1 else (ms[0],) * 3
    return {"median": statistics.median(ms), "q1": q1, "q3": q3, "iqr": q3 - q1, "min": min(ms), "n": len(ms)}


def make_ids(batch: int, seq: int, vocab: int = 49152) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(0))


def child(args: argparse.Namespace) -> None:
    """``--system X``: peak-RSS run of one system in this (fresh) process; prints one JSON line."""
    before = mib_now()
    step, module = build(args.system, make_ids(args.batch, args.seq), args.rank)
    info = rss_after_steps(step, before)
    if hasattr(module, "parameter_report"):
        info["trainable"] = module.parameter_report().trainable
    elif hasattr(module, "get_nb_trainable_parameters"):
        info["trainable"] = module.get_nb_trainable_parameters()[0]
    print(json.dumps(info))


def rss_after_steps(step: Step, before: float) -> dict[str, Any]:
    """RSS before loading (given), after setup, and the process peak after two steps (MiB)."""
    setup = mib_now()
    for _ in range(2):
        step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    return {"rss_before_load_mib": before, "rss_after_setup_mib": setup, "peak_rss_mib": peak}


def measure_rss(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    flags = {k: getattr(args, k) for k in ("batch", "seq", "rank", "warmup", "steps")}
    return rss_children(__file__, list(SYSTEMS), flags)


def rss_children(script: str, systems: list[str], flags: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Run ``script --system S`` for each system in a fresh process, one after another; each prints
    one JSON line (its RSS) last."""
    out = {}
    for system in systems:
        cmd = [sys.executable, script, "--system", system, *(f"--{k}={v}" for k, v in flags.items())]
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if res.returncode != 0:
            raise RuntimeError(f"RSS child {system} failed:\n{res.stderr[-3000:]}")
        out[system] = json.loads(res.stdout.strip().splitlines()[-1])
        print(f"  rss {system}: {out[system]['peak_rss_mib']:.0f} MiB peak", flush=True)
    return out


def inference(args: argparse.Namespace, base: torch.nn.Module, pm: Any) -> dict[str, Any]:
    import peftkit

    merged = peftkit.get_peft_model(
        load_base(), peftkit.LoraConfig(r=args.rank, lora_alpha=2 * args.rank, target_modules="all-linear")
    )
    merged.load_adapter_state_dict("default", pm.adapter_state_dict("default"))
    merged = merged.merge_and_unload()
    models = {"base": base, "peftkit_merged": merged, "peftkit_unmerged": pm}
    for m in models.values():
        m.eval()
    result: dict[str, Any] = {}
    with torch.no_grad():
        probe = make_ids(1, args.seq)
        diff = (merged(input_ids=probe).logits - pm(input_ids=probe).logits).abs().max().item()
        result["max_abs_logit_diff_merged_vs_unmerged"] = diff
        for b in sorted({1, args.batch}):
            ids = make_ids(b, args.seq)
            fns: dict[str, Step] = {k: (lambda m=m, ids=ids: m(input_ids=ids)) for k, m in models.items()}
            result[f"batch{b}"] = {
                k: {**summary(v), "raw_ms": v}
                for k, v in round_robin(fns, args.warmup, args.infer_reps).items()
            }
    return result


def machine_info() -> dict[str, Any]:
    import peft
    import transformers

    lines = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next(
        (ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), platform.processor()
    )
    from peftkit.precision import bf16_speedup

    return {
        "cpu": cpu,
        # what train.precision: auto decides from (a bf16 base where bf16 matmuls are fast)
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "bf16_matmul_speedup": round(bf16_speedup(), 3),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "python": platform.python_version(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
    }


def print_tables(train: dict[str, Any], rss: dict[str, Any], inf: dict[str, Any]) -> None:
    ref, ref_rss = train["peft"]["median"], rss["peft"]["peak_rss_mib"]
    print(
        "\n| system | step ms (median) | IQR ms | min ms | ratio to peft | peak RSS MiB | RSS ratio to peft |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for k, label in SYSTEMS.items():
        s, r = train[k], rss[k]["peak_rss_mib"]
        print(
            f"| {label} | {s['median']:.1f} | {s['iqr']:.1f} | {s['min']:.1f} | {s['median'] / ref:.3f} | "
            f"{r:.0f} | {r / ref_rss:.3f} |"
        )
    batches = [k for k in inf if k.startswith("batch")]
    head = " | ".join(f"{b} ms (median) | {b} IQR | {b} min | {b} ratio to base" for b in batches)
    print(f"\n| model (inference, no_grad) | {head} |")
    print("|---|" + "---:|" * (4 * len(batches)))
    for name in ("base", "peftkit_merged", "peftkit_unmerged"):
        cells = [
            f"{inf[b][name]['median']:.1f} | {inf[b][name]['iqr']:.1f} | {inf[b][name]['min']:.1f} | "
            f"{inf[b][name]['median'] / inf[b]['base']['median']:.3f}"
            for b in batches
        ]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print(f"\nmax |logit| diff merged vs unmerged: {inf['max_abs_logit_diff_merged_vs_unmerged']:.2e}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--infer-reps", type=int, default=12)
    p.add_argument("--quick", action="store_true", help="smoke run: 2 steps, 1 warm-up, 3 inference reps")
    p.add_argument("--out", type=Path, default=Path("bench/results/lora_overhead.json"))
    p.add_argument("--system", choices=list(SYSTEMS), help=argparse.SUPPRESS)  # internal: RSS child
    args = p.parse_args()
    if args.quick:
        args.steps, args.warmup, args.infer_reps = 2, 1, 3
    if args.system:
        return child(args)
    info = machine_info()
    print(f"torch threads: {info['torch_threads']} (default, not changed); cpu: {info['cpu']}", flush=True)
    print("peak RSS, one subprocess per system:", flush=True)
    rss = measure_rss(args)

    print("timing training steps, round-robin in one process...", flush=True)
    ids = make_ids(args.batch, args.seq)
    base = load_base()
    fns, mods = {}, {}
    fns["base_fwd"], _ = build("base_fwd", ids, args.rank, base)
    fns["base_full"], _ = build("base_full", ids, args.rank, base)  # same module, grads never stepped
    for k in ("peftkit", "peft"):
        fns[k], mods[k] = build(k, ids, args.rank)
    raw = round_robin(fns, args.warmup, args.steps)
    train = {k: {**summary(v), "raw_ms": v} for k, v in raw.items()}

    print("timing inference...", flush=True)
    del fns, mods["peft"]
    base.requires_grad_(False)
    gc.collect()
    inf = inference(args, base, mods["peftkit"])

    print_tables(train, rss, inf)
    config = {k: v for k, v in vars(args).items() if k not in ("system", "out")}
    report = dict(model=MODEL, dtype="float32", config=config, machine=info, systems=SYSTEMS)
    report.update(train_step=train, rss=rss, inference=inf)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
