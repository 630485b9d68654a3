"""QLoRA benchmark: peftkit QLoRA vs peft + bitsandbytes QLoRA vs peftkit LoRA in fp32 (smollm2-135m, CPU).

What is measured (one run; default batch 8 x 128 random token ids, seed 0, r=8, alpha=2r, all-linear):

1. Training step time (ms): forward + backward + ``AdamW.step()`` + zero_grad, timed in ONE process,
   round-robin (each repetition runs one step of every system, the starting system rotating), the
   first ``--warmup`` repetitions dropped; median, IQR and min over ``--steps``. Systems:
     - ``peftkit QLoRA``: ``load_model(..., quantize="nf4")``: every linear layer but the head in NF4
       with double quantisation (bitsandbytes), bf16 compute; peftkit LoRA (fp32) on top.
     - ``peft QLoRA``: the same weights loaded by ``transformers`` with ``BitsAndBytesConfig`` (nf4,
       double quant, bf16 compute), ``peft.get_peft_model`` with the same LoRA config.
     - ``peftkit LoRA fp32``: the unquantised base in fp32, peftkit LoRA.
2. Peak RSS (MiB): each system again in its own fresh subprocess (``--system NAME``: load, wrap, two
   steps), ``ru_maxrss`` (model loading included) and the RSS after setup; run before the timing.
3. Storage of the 4-bit bases (measured in the RSS subprocesses, before LoRA is added): bits per
   quantised weight (weights + block constants; code books apart) and per parameter of the whole
   base (embeddings, norms and the head stay in fp32), measured from the stored tensors.
4. Sanity: max |logit| difference between the two QLoRA systems before training (same NF4 weights).

Output: Markdown tables on stdout and JSON (``--out``). ``torch`` threads are left at their default.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from lora_overhead import (
    machine_info,
    make_ids,
    mib_now,
    round_robin,
    rss_after_steps,
    rss_children,
    summary,
)

MODEL = "smollm2-135m"
SYSTEMS = {
    "peftkit_qlora": "peftkit QLoRA (NF4 + DQ, bf16 compute)",
    "peft_qlora": "peft + bitsandbytes QLoRA (NF4 + DQ, bf16 compute)",
    "peftkit_lora": "peftkit LoRA fp32",
}


def load(system: str) -> torch.nn.Module:
    from peftkit.models import load_model, resolve_model_path

    if system == "peft_qlora":
        import transformers

        q = transformers.BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
        path = resolve_model_path(MODEL)
        model = transformers.AutoModelForCausalLM.from_pretrained(
            path, quantization_config=q, dtype=torch.float32
        )
    else:
        quantize = "nf4" if system == "peftkit_qlora" else None
        model, _ = load_model(MODEL, task="causal-lm", quantize=quantize, compute_dtype=torch.bfloat16)
    model.config.use_cache = False
    return model


def build(system: str, ids: torch.Tensor, rank: int, base: Any = None) -> tuple[Any, Any]:
    """(one training step, the wrapped model) for ``system``."""
    lib: Any
    if system == "peft_qlora":
        import peft as lib
    else:
        import peftkit as lib
    base = load(system) if base is None else base
    torch.manual_seed(1)  # the same LoRA A init in every system
    model = lib.get_peft_model(base, lib.LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear"))
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step() -> None:
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, model


def trainable(model: Any) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def child(args: argparse.Namespace) -> None:
    before = mib_now()
    base = load(args.system)
    bits = storage(base) if args.system != "peftkit_lora" else None  # the bare base, before LoRA
    step, model = build(args.system, make_ids(args.batch, args.seq), args.rank, base)
    info = rss_after_steps(step, before)
    print(json.dumps({**info, "trainable": trainable(model), "storage": bits}))


def measure_rss(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    flags = {k: getattr(args, k) for k in ("batch", "seq", "rank")}
    return rss_children(__file__, list(SYSTEMS), flags)


def storage(base: torch.nn.Module) -> dict[str, float]:
    from peftkit.quantization import quant_stats

    stats = quant_stats(base)
    return {
        "quantized_layers": stats.layers,
        "quantized_params": stats.quantized_params,
        "bits_per_quantized_param": stats.bits_per_parameter,
        "bits_with_codebooks": stats.bits_with_codebooks,
        "model_bits_per_param": stats.model_bits_per_parameter,
    }


def print_tables(train: dict, rss: dict, bits: dict, diff: float) -> None:
    ref, ref_rss = train["peft_qlora"]["median"], rss["peft_qlora"]["peak_rss_mib"]
    print(
        "\n| system | trainable | step ms (median) | IQR ms | min ms | time vs peft QLoRA | "
        "peak RSS MiB | RSS vs peft QLoRA |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for k, label in SYSTEMS.items():
        s, r = train[k], rss[k]["peak_rss_mib"]
        print(
            f"| {label} | {rss[k]['trainable']:,} | {s['median']:.0f} | {s['iqr']:.0f} | {s['min']:.0f} | "
            f"{s['median'] / ref:.2f} | {r:.0f} | {r / ref_rss:.2f} |"
        )
    print(
        "\n| 4-bit base | layers | weights | bits/weight (+ constants) | with code books | "
        "whole base bits/param |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for k, b in bits.items():
        print(
            f"| {SYSTEMS[k]} | {b['quantized_layers']} | {b['quantized_params']:,} | "
            f"{b['bits_per_quantized_param']:.4f} | {b['bits_with_codebooks']:.4f} | "
            f"{b['model_bits_per_param']:.2f} |"
        )
    print(f"\nmax |logit| diff peftkit QLoRA vs peft QLoRA before training: {diff:.2e}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--quick", action="store_true", help="smoke run: 2 steps, 1 warm-up, batch 2 x 32")
    p.add_argument("--out", type=Path, default=Path("bench/results/qlora.json"))
    p.add_argument("--system", choices=list(SYSTEMS), help=argparse.SUPPRESS)  # internal: RSS child
    args = p.parse_args()
    if args.quick:
        args.steps, args.warmup, args.batch, args.seq = 2, 1, 2, 32
    if args.system:
        return child(args)
    info = machine_info()
    print(f"torch threads: {info['torch_threads']} (default, not changed); cpu: {info['cpu']}", flush=True)
    print("peak RSS, one subprocess per system:", flush=True)
    rss = measure_rss(args)

    print("timing training steps, round-robin in one process...", flush=True)
    ids = make_ids(args.batch, args.seq)
    fns, models = {}, {}
    for system in SYSTEMS:
        fns[system], models[system] = build(system, ids, args.rank)
    probe = make_ids(1, 32)
    with torch.no_grad():
        a, b = (models[k](input_ids=probe).logits.float() for k in ("peftkit_qlora", "peft_qlora"))
    diff = (a - b).abs().max().item()
    raw = round_robin(fns, args.warmup, args.steps)
    train = {k: {**summary(v), "raw_ms": v} for k, v in raw.items()}
    bits = {k: rss[k]["storage"] for k in ("peftkit_qlora", "peft_qlora")}

    print_tables(train, rss, bits, diff)
    config = {k: v for k, v in vars(args).items() if k not in ("system", "out")}
    report = dict(model=MODEL, config=config, machine=info, systems=SYSTEMS, train_step=train, rss=rss)
    report.update(storage=bits, max_abs_logit_diff_qlora_systems=diff)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
