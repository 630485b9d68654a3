"""Decoding throughput: peftkit's engine vs ``transformers`` generate on SmolLM2-135M (CPU).

Both decode the same left-padded batch of chat prompts with the same settings, side by side in one
process, round-robin (each repetition runs every case once per system, alternating which system
goes first), so machine noise hits both alike. ``min_new_tokens = max_new_tokens`` (64) forbids the
end token, so every run makes exactly 64 new tokens per returned row; tokens/s = batch x 64 / time.
Cases: greedy and beam search (4 beams), batch 1 and 8. The outputs are also compared token for
token (they must be equal). Median and min over ``--reps`` after one warm-up; ratio = peftkit
tokens/s / transformers tokens/s (> 1: peftkit is faster).

    .venv/bin/python bench/decode.py [--reps 5] [--dtype float32] [--threads N] [--out FILE.json]

On a shared machine ``--threads 1`` avoids thread-pool stalls when other jobs hold the cores.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from lora_overhead import machine_info  # the same machine record as the other benchmarks

from peftkit.decoding import generate
from peftkit.generation import decoding_config
from peftkit.io import atomic_write_json
from peftkit.models import load_model

QUESTIONS = [
    "What is the capital of France?",
    "Name three colours of the rainbow.",
    "Write a haiku about rain.",
    "Explain what a neural network is in one sentence.",
    "Give me a recipe for pancakes.",
    "Why is the sky blue?",
    "Translate 'good morning' into German.",
    "List the planets of the solar system.",
]
CASES = {
    "greedy": ({"strategy": "greedy"}, {"do_sample": False}),
    "beam4": ({"strategy": "beam", "num_beams": 4}, {"do_sample": False, "num_beams": 4}),
}


def encode(tok, batch: int) -> dict[str, torch.Tensor]:
    chats = [[{"role": "user", "content": q}] for q in QUESTIONS[:batch]]
    texts = [tok.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in chats]
    tok.padding_side = "left"
    return tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)


def runners(model, tok, case: str, enc, new: int):
    ours_kw, theirs_kw = CASES[case]
    config = decoding_config(tok, new, min_new_tokens=new, **ours_kw)

    def peftkit_run() -> torch.Tensor:
        return generate(model, enc["input_ids"], enc["attention_mask"], config).sequences

    def hf_run() -> torch.Tensor:
        with torch.no_grad():
            return model.generate(
                **enc,
                max_new_tokens=new,
                min_new_tokens=new,
                pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
                top_k=None,
                top_p=None,
                temperature=None,
                **theirs_kw,
            )

    return {"peftkit": peftkit_run, "transformers": hf_run}


def time_case(fns: dict, reps: int) -> tuple[dict[str, list[float]], bool]:
    outputs = {name: fn() for name, fn in fns.items()}  # warm-up, and the outputs to compare
    equal = torch.equal(outputs["peftkit"], outputs["transformers"])
    times: dict[str, list[float]] = {name: [] for name in fns}
    for rep in range(reps):
        order = list(fns) if rep % 2 == 0 else list(reversed(fns))
        for name in order:
            start = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - start)
    return times, equal


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--out", type=Path, default=Path("bench/results/decode.json"))
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok = load_model("smollm2-135m", task="causal-lm", dtype=getattr(torch, args.dtype))
    model.eval()
    rows = []
    print(
        "| case | batch | peftkit tok/s | transformers tok/s | ratio | peftkit s | transformers s | equal |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for case in args.cases:
        for batch in args.batches:
            enc = encode(tok, batch)
            times, equal = time_case(runners(model, tok, case, enc, args.new_tokens), args.reps)
            med = {k: statistics.median(v) for k, v in times.items()}
            tps = {k: batch * args.new_tokens / v for k, v in med.items()}
            row = {
                "case": case,
                "batch": batch,
                "seconds": times,
                "median_s": med,
                "tokens_per_s": tps,
                "ratio": tps["peftkit"] / tps["transformers"],
                "equal_tokens": equal,
            }
            rows.append(row)
            print(
                f"| {case} | {batch} | {tps['peftkit']:.1f} | {tps['transformers']:.1f} "
                f"| {row['ratio']:.3f} | {med['peftkit']:.2f} | {med['transformers']:.2f} | {equal} |",
                flush=True,
            )
    result = {"machine": machine_info(), "settings": vars(args) | {"out": str(args.out)}, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, result)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
