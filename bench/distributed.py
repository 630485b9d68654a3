"""Data-parallel training benchmark: 1 process x 2 threads against 2 processes x 1 thread (DDP and
FSDP2, torchrun, gloo on CPU), LoRA on smollm2-135m.

What is measured (default: global batch 8 x 128 random token ids, seed 0, LoRA r=8 on every linear
layer, fp32, peftkit's Trainer exactly as ``peftkit train`` runs it, ``--steps`` steps after
``--warmup``):

1. Tokens/s of the whole run: the ``tokens_per_s`` of each step rank 0 logs (all ranks' tokens over
   the step's wall time), median and min/max over the steps after warm-up. Each configuration runs
   in its own fresh processes, one after another (never two at once).
2. Memory per rank: peak RSS (``ru_maxrss``; it includes loading the whole model, which every rank
   does before FSDP2 shards it), RSS after training, and the bytes of parameters each rank holds
   after wrapping, frozen and trainable apart (exact: FSDP2 keeps 1/N of each parameter, DDP all of
   it; the frozen base's share is the number FSDP2 should shrink toward 1/N).
3. On a machine with 2 GPUs (``--device cuda``): the 2-process configurations with nccl, one
   process per GPU, and the peak CUDA memory allocated per rank (a single process trains on the
   CPU: peftkit places a model on a GPU for a torchrun rank only).

Output: a Markdown table on stdout and JSON (``--out``). ``--tiny`` is a smoke run on a tiny random
Llama (seconds; its numbers mean nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

MODEL = "smollm2-135m"
CELLS = {  # name -> (processes, threads per process, train.distributed)
    "1 process x 2 threads": (1, 2, "ddp"),
    "2 processes x 1 thread, DDP": (2, 1, "ddp"),
    "2 processes x 1 thread, FSDP2": (2, 1, "fsdp"),
}


# ---- one rank ------------------------------------------------------------------------------------------
def tiny_llama() -> nn.Module:
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(config)


def load(tiny: bool) -> nn.Module:
    from peftkit.models import load_model

    model = tiny_llama() if tiny else load_model(MODEL, task="causal-lm")[0]
    model.config.use_cache = False
    return model


def examples(n: int, seq: int, vocab: int) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab, (n, seq), generator=g).tolist()
    return [{"input_ids": x, "attention_mask": [1] * seq, "labels": x} for x in ids]


def collate(rows: list[dict]) -> dict:
    return {k: torch.tensor([r[k] for r in rows]) for k in rows[0]}


def held_bytes(model: nn.Module) -> dict[str, int]:
    """Bytes of parameters this rank holds (its FSDP2 shard of each, or the whole)."""
    from torch.distributed.tensor import DTensor

    out = {"frozen": 0, "trainable": 0}
    for p in model.parameters():
        local = p.to_local() if isinstance(p, DTensor) else p
        out["trainable" if p.requires_grad else "frozen"] += local.numel() * local.element_size()
    return out


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def worker(args: argparse.Namespace) -> None:
    import peftkit
    from peftkit.training import TrainConfig, Trainer, distributed

    torch.set_num_threads(args.threads)
    with distributed.process_group() as world:
        base = load(args.tiny)
        torch.manual_seed(1)
        model = peftkit.get_peft_model(base, peftkit.LoraConfig(r=args.rank, target_modules="all-linear"))
        steps = args.warmup + args.steps
        data = examples(args.batch * steps, args.seq, base.config.vocab_size)
        config = TrainConfig(
            lr=1e-4, max_steps=steps, batch_size=args.batch // world.size, log_every=1,
            distributed=args.mode, seed=0,
        )  # fmt: skip
        with tempfile.TemporaryDirectory() as out:
            trainer = Trainer(model, data, collate, config, Path(out) / "run", show_progress=False)
            if world.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            rows = trainer.train().history
        cuda_peak = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
        report = {
            "rank": world.rank,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "rss_after_mib": rss_mib(),
            "held_bytes": held_bytes(model),
            "cuda_peak_mib": cuda_peak if world.device.type == "cuda" else None,
            "tokens_per_s": [r["tokens_per_s"] for r in rows if "tokens_per_s" in r][args.warmup :],
        }
        Path(args.report).with_suffix(f".rank{world.rank}.json").write_text(json.dumps(report))


# ---- the runs -------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cell(name: str, args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    procs, threads, mode = CELLS[name]
    report = scratch / name.replace(" ", "_").replace(",", "")
    flags = [
        "--worker", "--mode", mode, "--threads", str(threads), "--report", str(report),
        "--batch", str(args.batch), "--seq", str(args.seq), "--rank", str(args.rank),
        "--steps", str(args.steps), "--warmup", str(args.warmup), *(["--tiny"] if args.tiny else []),
    ]  # fmt: skip
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(procs)]
    launch += ["--master-addr", "127.0.0.1", "--master-port", str(free_port())]
    command = [*launch, __file__, *flags] if procs > 1 else [sys.executable, __file__, *flags]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # gloo on CPU even on a machine with GPUs
    done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{name} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    ranks = [json.loads(report.with_suffix(f".rank{r}.json").read_text()) for r in range(procs)]
    speeds = ranks[0]["tokens_per_s"]
    return {
        "processes": procs, "threads": threads, "distributed": mode if procs > 1 else None,
        "tokens_per_s": {"median": statistics.median(speeds), "min": min(speeds), "max": max(speeds)},
        "ranks": ranks,
    }  # fmt: skip


def cells_for(args: argparse.Namespace) -> list[str]:
    """Every configuration on CPU; on GPUs (nccl wants one per process) the 2-process ones, since one
    process trains on the CPU (peftkit places a model on a GPU only for a torchrun rank)."""
    if args.device == "cpu":
        return list(CELLS)
    if torch.cuda.device_count() < 2:
        raise SystemExit("--device cuda needs 2 GPUs (one per process); this machine has fewer")
    return [name for name, (procs, _, _) in CELLS.items() if procs == 2]


def mib(n: float) -> str:
    return f"{n / 2**20:.1f}"


def per_rank(ranks: list[dict], show) -> str:
    return " / ".join(show(r) for r in ranks)


def table_row(name: str, cell: dict[str, Any]) -> str:
    t, ranks = cell["tokens_per_s"], cell["ranks"]
    on_gpu = ranks[0]["cuda_peak_mib"] is not None
    cuda = per_rank(ranks, lambda r: f"{r['cuda_peak_mib']:.0f}") if on_gpu else "-"
    cols = [
        name,
        f"{t['median']:.0f} [{t['min']:.0f}, {t['max']:.0f}]",
        per_rank(ranks, lambda r: f"{r['peak_rss_mib']:.0f}"),
        per_rank(ranks, lambda r: f"{r['rss_after_mib']:.0f}"),
        per_rank(ranks, lambda r: mib(r["held_bytes"]["frozen"])),
        per_rank(ranks, lambda r: mib(r["held_bytes"]["trainable"])),
        cuda,
    ]
    return "| " + " | ".join(cols) + " |"


def print_table(results: dict[str, Any]) -> None:
    print(
        "| configuration | tokens/s (median [min, max]) | peak RSS / rank (MiB) | RSS after (MiB) "
        "| frozen params / rank (MiB) | trainable / rank (MiB) | CUDA peak / rank (MiB) |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, cell in results.items():
        print(table_row(name, cell))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch", type=int, default=8, help="global batch (split over the processes)")
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--tiny", action="store_true", help="smoke run on a tiny random Llama, 2 steps")
    p.add_argument("--timeout", type=int, default=1800, help="seconds per configuration")
    p.add_argument("--out", type=Path, default=Path("bench/results/distributed.json"))
    for internal in ("--report", "--mode"):
        p.add_argument(internal, help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.tiny:
        args.steps, args.warmup, args.seq = 2, 1, 16
    if args.worker:
        return worker(args)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no GPU here")
    with tempfile.TemporaryDirectory() as scratch:
        results = {}
        for name in cells_for(args):
            print(f"running {name} ...", flush=True)
            results[name] = run_cell(name, args, Path(scratch))
    print_table(results)
    config = {k: v for k, v in vars(args).items() if k not in ("report", "mode", "threads", "worker", "out")}
    report = {"model": "tiny llama" if args.tiny else MODEL, "config": config, "results": results}
    report["torch"] = torch.__version__
    if not args.tiny:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
