"""Training speed and memory: peftkit's default path against peft (smollm2-135m, LoRA r=8 all-linear).

    python bench/train_speed.py            # full run (about 20 minutes on a 2-core CPU)
    python bench/train_speed.py --quick    # smoke run: tiny shapes, 2 timed steps, 3 loss steps
    python bench/train_speed.py --ablate --compile   # + each lever off in turn, + torch.compile
    python bench/train_speed.py --systems peftkit,peftkit_plain_loss --workloads random_8x128 --no-rss

Workloads: random token ids, batch 8 x 128 and 4 x 512 (every token real); then E2E SFT on the shared
data (``shared/data/e2e/train.csv`` in a folder above the checkout, or ``--e2e``; encoded like
``examples/e2e_smollm2_lora.yaml``: chat prompt, loss on the response, max 128 tokens) in batches of 8
examples with their real lengths.

Systems (LoRA r=8, alpha 16, all-linear, dropout 0, the same A drawn for each; AdamW lr 1e-3):
  - ``peft_fp32``: peft on the fp32 base, ``model(**batch).loss``: peft's default;
  - ``peft_bf16``: the same under ``torch.autocast(bfloat16)``;
  - ``peftkit``: peftkit's default training path: the base in the dtype ``train.precision: auto``
    picks (bf16 where bf16 matmuls are fast, measured), the chunked causal-LM loss, packed E2E
    batches (``train.packing: auto``), the fused LoRA layer;
  - ``peftkit_fp32``: the same with the base in fp32;
  - ``peftkit_compile`` (only with ``--compile``): ``peftkit`` with ``torch.compile``;
  - with ``--ablate``, ``peftkit`` with one lever off: ``peftkit_plain_loss`` (the model's own loss),
    ``peftkit_unfused`` (the unfused LoRA layer), ``peftkit_padded`` (padded E2E batches).
peft's E2E batches are right-padded, as users run it; tokens/s counts real tokens only.

Measured, in one process, round-robin (each repetition runs one step of every system, the starting
system rotating; the first ``--warmup`` repetitions dropped): forward + backward + ``AdamW.step()`` +
zero_grad, median / IQR / min, ratios of medians to each peft system. GFLOP/s: model FLOPs
(``4 x matmul parameters x real tokens``: the forward and the input gradient through every frozen
matmul, issue 19's count) per second, against the machine's fp32 and bf16 matmul throughput measured
in the same run (a model-shaped ``1024 x 576 x 1536`` matmul, best of 10, before and after the timing).
Peak RSS: each system and workload again in a fresh subprocess (load, wrap, two steps), run before
the timing: the peak with loading, and the peak of the two training steps alone (the process's peak
is reset after setup). Loss trajectory: each system trains ``--loss-steps`` steps on the same E2E
batches from the same start; the relative difference to ``peft_fp32``'s loss, largest at any step,
mean over the steps, and between the means of the last 10 steps.

Output: ``bench/results/train_speed.json`` and ``.md`` (``--ablate``: ``train_speed_ablate.*``;
``--quick``: ``bench/results/quick/``).
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import random
import resource
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from lora_overhead import machine_info, mib_now, round_robin, rss_children, summary

ROOT = Path(__file__).resolve().parent.parent
E2E_FILE = Path("shared", "data", "e2e", "train.csv")  # the shared data, beside the checkout or above it
E2E = next((d / E2E_FILE for d in ROOT.parents if (d / E2E_FILE).is_file()), ROOT.parent / E2E_FILE)
MODEL = "smollm2-135m"
SYSTEMS = {
    "peft_fp32": "peft, fp32 (its default)",
    "peft_bf16": "peft, bf16 autocast",
    "peftkit": "peftkit default",
    "peftkit_fp32": "peftkit, fp32 base",
    "peftkit_compile": "peftkit default + torch.compile",
    "peftkit_plain_loss": "peftkit default, plain loss",
    "peftkit_unfused": "peftkit default, unfused LoRA",
    "peftkit_padded": "peftkit default, padded batches",
}
DEFAULT_SYSTEMS = ["peft_fp32", "peft_bf16", "peftkit", "peftkit_fp32"]
ABLATIONS = ["peftkit_plain_loss", "peftkit_unfused", "peftkit_padded"]


@dataclass(frozen=True)
class Variant:
    """How a peftkit system differs from peftkit's defaults (the train.* fields of the same names)."""

    precision: str = "auto"
    lm_loss: str = "auto"
    packing: str = "auto"
    fused: bool = True
    compile: bool = False


VARIANTS = {
    "peftkit": Variant(),
    "peftkit_fp32": Variant(precision="fp32"),
    "peftkit_compile": Variant(compile=True),
    "peftkit_plain_loss": Variant(lm_loss="plain"),
    "peftkit_unfused": Variant(fused=False),
    "peftkit_padded": Variant(packing="padded"),
}
SYSTEM_PROMPT = "Write one fluent sentence describing the restaurant from its attributes."
LR = 1e-3


@dataclass
class Workload:
    """Batches of examples (lists of ids) that every system steps through in the same order."""

    name: str
    batches: list[list[dict[str, list[int]]]]
    label: str

    def batch(self, i: int) -> list[dict[str, list[int]]]:
        return self.batches[i % len(self.batches)]

    def real_tokens(self, i: int) -> int:
        return sum(len(e["input_ids"]) for e in self.batch(i))


@dataclass
class System:
    """One model with its optimizer, collator and loss: ``step(examples)`` trains one step."""

    name: str
    model: torch.nn.Module
    collate: Callable[[list[dict]], dict]
    loss_fn: Callable[[torch.nn.Module, dict], torch.Tensor]
    autocast: bool = False
    fused: bool = True
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(params, lr=LR)

    def step(self, examples: list[dict]) -> float:
        from peftkit.methods.lora import fused

        with fused.fused(self.fused):
            return self._step(examples)

    def _step(self, examples: list[dict]) -> float:
        batch = self.collate(examples)
        for key, value in batch.items():  # in place: a packed batch keeps its type and token count
            if isinstance(value, torch.Tensor):
                batch[key] = value.to(DEVICE)
        with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=self.autocast):
            loss = self.loss_fn(self.model, batch)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return loss.item()


DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


# ---- workloads --------------------------------------------------------------------------------------
def random_workload(batch: int, seq: int, steps: int, vocab: int = 49152) -> Workload:
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(steps):
        ids = torch.randint(0, vocab, (batch, seq), generator=g).tolist()
        batches.append([{"input_ids": r, "labels": r} for r in ids])
    return Workload(f"random_{batch}x{seq}", batches, f"random tokens, {batch} x {seq}")


def e2e_workload(path: Path, tokenizer: Any, batch: int, steps: int) -> Workload:
    from peftkit.data import TaskSpec, encode

    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    random.Random(0).shuffle(rows)
    spec = TaskSpec(
        type="sft", prompt_column="mr", response_column="ref", max_length=128, system_prompt=SYSTEM_PROMPT
    )
    examples = encode(rows[: batch * steps], tokenizer, spec).examples
    batches = [examples[i : i + batch] for i in range(0, batch * steps, batch)]
    return Workload(f"e2e_{batch}", [b for b in batches if len(b) == batch], f"E2E SFT, batches of {batch}")


def workloads(args: argparse.Namespace, tokenizer: Any) -> dict[str, Workload]:
    n = args.warmup + args.steps
    shapes = [(2, 32)] if args.quick else [(8, 128), (4, 512)]
    out = {w.name: w for w in (random_workload(b, s, n) for b, s in shapes)}
    if args.e2e.is_file():
        e2e = e2e_workload(args.e2e, tokenizer, 2 if args.quick else 8, max(n, args.loss_steps))
        out[e2e.name] = e2e
    else:
        print(f"no E2E data at {args.e2e} (--e2e): the E2E rows and the loss trajectory are skipped")
    return out


# ---- systems ----------------------------------------------------------------------------------------
def load(dtype: torch.dtype) -> tuple[torch.nn.Module, Any]:
    from peftkit.models import load_model

    model, tok = load_model(MODEL, task="causal-lm", dtype=dtype)
    model.config.use_cache = False
    return model.to(DEVICE), tok


ADAPTERS: dict[str, Callable[[Any], Any]] = {  # --method: the adapter every system trains
    "lora": lambda lib: lib.LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"),
    "prefix": lambda lib: lib.PrefixTuningConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=20, prefix_projection=True, encoder_hidden_size=512
    ),
    "ptuning": lambda lib: lib.PromptEncoderConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=20, encoder_hidden_size=128
    ),
}
METHOD = {"name": "lora"}  # set from --method


def lora(lib: Any, model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with the adapter of ``--method`` (LoRA by default), the same draw in every system."""
    torch.manual_seed(1)
    return lib.get_peft_model(model, ADAPTERS[METHOD["name"]](lib)).train()


def tokenizer() -> Any:
    import transformers

    from peftkit.models import resolve_model_path

    tok = transformers.AutoTokenizer.from_pretrained(resolve_model_path(MODEL))
    tok.pad_token = tok.pad_token or tok.eos_token
    return tok


def model_loss(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    return model(**batch).loss


def build_peft(name: str, work: Workload) -> System:
    import peft

    from peftkit.data import Collator

    model, tok = load(torch.float32)
    model = lora(peft, model)
    autocast = name == "peft_bf16"
    details = {"precision": "bf16" if autocast else "fp32"}
    return System(name, model, Collator(tok.pad_token_id), model_loss, autocast=autocast, details=details)


def build_peftkit(name: str, work: Workload) -> System:
    import peftkit
    from peftkit.data import Collator
    from peftkit.data.packing import training_collator
    from peftkit.precision import base_dtype, bf16_speedup
    from peftkit.training.chunked_loss import CausalLMLoss
    from peftkit.training.speedups import check_precision, compile_model

    v = VARIANTS[name]
    model, tok = load(base_dtype(v.precision, device=DEVICE))
    model = lora(peftkit, model)
    check_precision(model, v.precision)
    collate = padded = Collator(tok.pad_token_id)
    if work.name.startswith("e2e"):
        examples = [e for b in work.batches for e in b]
        collate = training_collator(v.packing, model, examples, padded, tok.pad_token_id, "sft", 128)
    if v.compile:
        compile_model(model)
    dtype = next(p for p in model.parameters() if not p.requires_grad).dtype
    details = {
        "precision": "fp32" if dtype == torch.float32 else "bf16",
        "bf16_speedup_measured": round(bf16_speedup(DEVICE), 2),
        "collator": type(collate).__name__,
        "attention": getattr(collate, "attention", None),
        "variant": asdict(v),
    }
    loss = CausalLMLoss(v.lm_loss)
    return System(name, model, collate, loss, fused=v.fused, details=details)


def build(name: str, work: Workload) -> System:
    return build_peft(name, work) if name.startswith("peft_") else build_peftkit(name, work)


# ---- measurements -----------------------------------------------------------------------------------
def matmul_gflops(dtype: torch.dtype, reps: int = 10, n: int = 1024, k: int = 576, m: int = 1536) -> float:
    a, b = torch.randn(n, k, device=DEVICE).to(dtype), torch.randn(k, m, device=DEVICE).to(dtype)
    best = float("inf")
    for _ in range(reps + 2):
        _sync()
        t0 = time.perf_counter()
        a @ b
        _sync()
        best = min(best, time.perf_counter() - t0)
    return 2 * n * k * m / best / 1e9


def _sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def machine_peaks() -> dict[str, float]:
    return {"fp32": matmul_gflops(torch.float32), "bf16": matmul_gflops(torch.bfloat16)}


def matmul_params(model: torch.nn.Module) -> int:
    """Parameters that take part in a matmul: every Linear weight of the base (the head included)."""
    return sum(m.weight.numel() for m in model.modules() if type(m) is torch.nn.Linear)


def time_workload(args: argparse.Namespace, work: Workload, names: list[str]) -> dict[str, Any]:
    systems = {name: build(name, work) for name in names}
    counter = {name: 0 for name in names}

    def stepper(name: str) -> Callable[[], None]:
        def step() -> None:
            systems[name].step(work.batch(counter[name]))
            counter[name] += 1

        return step

    raw = round_robin({name: stepper(name) for name in names}, args.warmup, args.steps)
    tokens = [work.real_tokens(i) for i in range(args.warmup, args.warmup + args.steps)]
    result = {"systems": {}, "real_tokens_per_step": sum(tokens) / len(tokens)}
    for name, ms in raw.items():
        s = summary(ms)
        s.update(raw_ms=ms, tokens_per_s=result["real_tokens_per_step"] / (s["median"] / 1e3))
        s.update(systems[name].details)
        result["systems"][name] = s
    systems.clear()
    gc.collect()
    return result


def loss_trajectory(work: Workload, names: list[str], steps: int) -> dict[str, Any]:
    """Each system from the same start on the same ``steps`` batches; losses per step."""
    losses = {}
    for name in names:
        system = build(name, work)
        losses[name] = [system.step(work.batch(i)) for i in range(steps)]
        del system
        gc.collect()
    ref = losses["peft_fp32"]
    return {"steps": steps, "losses": losses, "vs_peft_fp32": {n: _rel(v, ref) for n, v in losses.items()}}


def _rel(losses: list[float], ref: list[float]) -> dict[str, float]:
    diffs = [abs(a - b) / abs(b) for a, b in zip(losses, ref)]
    tail, ref_tail = losses[-10:], ref[-10:]
    return {
        "max_rel": max(diffs),
        "mean_rel": sum(diffs) / len(diffs),
        "last10_mean_rel": abs(sum(tail) - sum(ref_tail)) / abs(sum(ref_tail)),
    }


# ---- peak RSS in fresh processes --------------------------------------------------------------------
def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def reset_peak() -> bool:
    """Reset this process's peak RSS (Linux >= 4.0: ``clear_refs`` 5), so that the next peak is
    the training steps' own; False where the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def child(args: argparse.Namespace) -> None:
    """``--system S --workload W``: peak RSS of one system on one workload (loading included, and
    during two training steps alone); prints one JSON line."""
    before = mib_now()
    work = workloads(args, tokenizer())[args.workload]
    system = build(args.system, work)
    load_peak, setup = peak_mib(), mib_now()
    reset = reset_peak()
    for i in range(2):
        system.step(work.batch(i))
    train_peak = peak_mib() if reset else float("nan")
    info = {"rss_before_load_mib": before, "rss_after_setup_mib": setup, "peak_rss_load_mib": load_peak}
    info.update(peak_rss_training_mib=train_peak, peak_rss_mib=max(load_peak, peak_mib()))
    print(json.dumps(info))


def measure_rss(args: argparse.Namespace, work_names: list[str], names: list[str]) -> dict[str, Any]:
    flags: dict[str, Any] = {k: getattr(args, k) for k in ("steps", "warmup", "loss_steps", "e2e")}
    flags["size"] = "quick" if args.quick else "full"
    flags["method"] = args.method
    out = {}
    for w in work_names:
        print(f"peak RSS, {w}:", flush=True)
        out[w] = rss_children(__file__, names, {**flags, "workload": w})
    return out


# ---- report -----------------------------------------------------------------------------------------
def table(report: dict[str, Any]) -> str:
    peaks, lines = report["matmul_gflops"], []
    for w, res in report["timing"].items():
        rss = report["rss"].get(w, {})
        lines += [
            f"\n**{res['label']}** ({res['real_tokens_per_step']:.0f} real tokens per step)\n",
            "| system | step ms (median) | IQR | real tokens/s | vs peft fp32 | vs peft bf16 | "
            "GFLOP/s | % fp32 peak | % bf16 peak | peak RSS MiB (load) | peak RSS MiB (training) | "
            "training RSS vs peft, same precision |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name, s in res["systems"].items():
            lines.append(_row(name, s, res, rss, peaks))
    traj = report.get("loss_trajectory")
    if traj:
        lines.append(
            f"\nLoss over {traj['steps']} E2E steps, relative difference to peft fp32: largest at any step / "
            "mean over steps / of the last-10-step means"
        )
        lines += [
            f"- {SYSTEMS[n]}: {d['max_rel']:.2%} / {d['mean_rel']:.2%} / {d['last10_mean_rel']:.2%}"
            for n, d in traj["vs_peft_fp32"].items()
            if n != "peft_fp32"
        ]
    lines.append(
        f"\nMatmul throughput measured in this run: fp32 {peaks['fp32']:.0f} GFLOP/s, "
        f"bf16 {peaks['bf16']:.0f} GFLOP/s ({report['machine']['cpu']}, {report['machine']['torch_threads']} "
        f"threads, torch {report['machine']['torch']})."
    )
    return "\n".join(lines) + "\n"


def _row(name: str, s: dict, res: dict, rss: dict, peaks: dict) -> str:
    systems, gflops = res["systems"], s["gflops"]
    ratio = {r: systems[r]["median"] / s["median"] for r in ("peft_fp32", "peft_bf16") if r in systems}
    nan = float("nan")
    load_mib = rss.get(name, {}).get("peak_rss_mib", nan)
    mib = rss.get(name, {}).get("peak_rss_training_mib", nan)
    peer_mib = rss.get(f"peft_{s['precision']}", {}).get("peak_rss_training_mib", nan)
    return (
        f"| {SYSTEMS[name]} | {s['median']:.0f} | {s['iqr']:.0f} | {s['tokens_per_s']:.0f} | "
        f"{ratio.get('peft_fp32', float('nan')):.2f}x | {ratio.get('peft_bf16', float('nan')):.2f}x | "
        f"{gflops:.0f} | {gflops / peaks['fp32']:.0%} | {gflops / peaks['bf16']:.0%} | {load_mib:.0f} | "
        f"{mib:.0f} | {mib / peer_mib:.2f} |"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=7, help="timed steps per system and workload")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument(
        "--loss-steps", "--loss_steps", type=int, default=50, help="steps of the loss trajectory (0: skip)"
    )
    p.add_argument("--e2e", type=Path, default=E2E, help="the E2E training file (mr,ref CSV)")
    p.add_argument("--compile", action="store_true", help="also time peftkit with torch.compile")
    p.add_argument("--ablate", action="store_true", help=f"also time {', '.join(ABLATIONS)}")
    p.add_argument("--systems", help=f"comma-separated subset of {', '.join(SYSTEMS)}")
    p.add_argument("--workloads", help="comma-separated subset of random_8x128, random_4x512, e2e_8")
    p.add_argument("--no-rss", action="store_true", help="skip the peak-RSS subprocesses")
    p.add_argument(
        "--method", choices=list(ADAPTERS), default="lora", help="the adapter trained (default lora)"
    )
    p.add_argument("--quick", action="store_true", help="smoke run: batch 2 x 32, 2 steps, 3 loss steps")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--system", choices=list(SYSTEMS), help=argparse.SUPPRESS)  # internal: RSS child
    p.add_argument("--workload", help=argparse.SUPPRESS)
    p.add_argument("--size", choices=["quick", "full"], help=argparse.SUPPRESS)
    args = p.parse_args()
    args.quick = args.quick or args.size == "quick"
    METHOD["name"] = args.method
    if args.quick and not args.system:
        args.steps, args.warmup, args.loss_steps = 2, 1, 3
    if args.system:
        return child(args)
    run(args)


def run(args: argparse.Namespace) -> None:
    method = "" if args.method == "lora" else f"_{args.method}"
    stem = f"train_speed{method}" + ("_ablate" if args.ablate else "")  # the headline table stays as it is
    out = args.out or ROOT / "bench" / "results" / ("quick" if args.quick else "") / f"{stem}.json"
    names = args.systems.split(",") if args.systems else list(DEFAULT_SYSTEMS)
    names += (["peftkit_compile"] if args.compile else []) + (ABLATIONS if args.ablate else [])
    unknown = sorted(set(names) - set(SYSTEMS))
    if unknown:
        raise SystemExit(f"--systems: unknown {unknown}; choose from {list(SYSTEMS)}")
    info = machine_info()
    print(f"torch threads: {info['torch_threads']}; cpu: {info['cpu']}; device: {DEVICE}", flush=True)
    works = workloads(args, tokenizer())
    if args.workloads:
        works = {k: w for k, w in works.items() if k in args.workloads.split(",")}
    rss = {} if args.no_rss else measure_rss(args, list(works)[: 1 if args.quick else None], names)
    peaks_before = machine_peaks()
    n_params = matmul_params(load(torch.float32)[0])
    timing = {}
    for w, work in works.items():
        print(f"timing {work.label}, round-robin...", flush=True)
        res = time_workload(args, work, names)
        for s in res["systems"].values():
            s["gflops"] = 4 * n_params * res["real_tokens_per_step"] / (s["median"] / 1e3) / 1e9
        timing[w] = {"label": work.label, **res}
    peaks_after = machine_peaks()
    peaks = {k: max(peaks_before[k], peaks_after[k]) for k in peaks_before}
    e2e = next((w for w in works.values() if w.name.startswith("e2e")), None)
    traj = None
    if e2e and args.loss_steps and "peft_fp32" in names:
        print(f"loss trajectory, {args.loss_steps} E2E steps per system...", flush=True)
        traj = loss_trajectory(e2e, [n for n in names if n in DEFAULT_SYSTEMS], args.loss_steps)
    report = dict(
        model=MODEL,
        method=args.method,
        device=DEVICE,
        machine=info,
        config={k: str(v) for k, v in vars(args).items() if k not in ("system", "workload", "size", "out")},
        systems={n: SYSTEMS[n] for n in names},
        matmul_params=n_params,
        matmul_gflops=peaks,
        matmul_gflops_before_after={"before": peaks_before, "after": peaks_after},
        timing=timing,
        rss=rss,
        loss_trajectory=traj,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    md = table(report)
    out.with_suffix(".md").write_text(md)
    print(md)
    print(f"wrote {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
