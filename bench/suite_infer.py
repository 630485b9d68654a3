"""Inference part of the suite (SmolLM2-135M, fp32, ``torch.no_grad``, ``use_cache=False``).

1. Latency: the base model vs a peftkit LoRA merged into it vs the same LoRA unmerged vs ``peft``'s
   unmerged LoRA with the same weights, at batch 1 and ``batch``; round-robin, medians.
2. Mixed-adapter batch: ``adapters`` LoRAs (random non-zero B), ``rows`` rows, row i using adapter
   i mod ``adapters``, through peftkit's ``adapter_names=`` and peft's ``adapter_names=`` (the same
   weights, saved by peftkit and loaded by peft); outputs compared, round-robin timing, medians.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
from lora_overhead import make_ids, round_robin, summary

MODEL = "smollm2-135m"


def load_base() -> torch.nn.Module:
    from peftkit.models import load_model

    model, _ = load_model(MODEL, task="causal-lm")
    model.config.use_cache = False
    return model.eval()


def lora_with_adapters(n: int, rank: int) -> Any:
    """A peftkit model with ``n`` LoRA adapters a0..a{n-1}, each with its own random non-zero B."""
    import peftkit

    torch.manual_seed(0)
    config = peftkit.LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear")
    model = peftkit.get_peft_model(load_base(), config, adapter_name="a0")
    for i in range(1, n):
        model.add_adapter(f"a{i}", config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.02)
    model.set_adapter("a0")
    return model.eval()


def peft_from(folder: Path, names: list[str]) -> Any:
    import peft

    model = peft.PeftModel.from_pretrained(load_base(), folder / names[0], adapter_name=names[0])
    for name in names[1:]:
        model.load_adapter(folder / name, adapter_name=name)
    model.set_adapter(names[0])
    return model.eval()


def merged_from(folder: Path, name: str) -> torch.nn.Module:
    import peftkit

    return peftkit.PeftModel.from_pretrained(load_base(), folder / name).merge_and_unload().eval()


def timed(models: dict[str, Any], ids: torch.Tensor, warmup: int, reps: int, **kw: Any) -> dict[str, Any]:
    fns = {k: (lambda m=m: m(input_ids=ids, **kw)) for k, m in models.items()}
    return {k: summary(v) for k, v in round_robin(fns, warmup, reps).items()}


def run(
    adapters: int = 8,
    rows: int = 32,
    seq: int = 64,
    batch: int = 8,
    rank: int = 8,
    warmup: int = 1,
    reps: int = 10,
) -> dict[str, Any]:
    names = [f"a{i}" for i in range(adapters)]
    ours = lora_with_adapters(adapters, rank)
    with tempfile.TemporaryDirectory(prefix="peftkit-bench-") as tmp:
        ours.save_pretrained(tmp)
        theirs = peft_from(Path(tmp), names)
        merged = merged_from(Path(tmp), names[0])
    base = load_base()
    result: dict[str, Any] = {"model": MODEL, "rank": rank, "reps": reps, "latency": {}}
    with torch.no_grad():
        for b in sorted({1, batch}):
            systems = {
                "base": base,
                "peftkit_merged": merged,
                "peftkit_unmerged": ours,
                "peft_unmerged": theirs,
            }
            result["latency"][f"{b} x {seq}"] = timed(systems, make_ids(b, seq), warmup, reps)
        del merged, base
        row_names = [names[i % adapters] for i in range(rows)]
        ids = make_ids(rows, seq)
        diff = (
            (
                ours(input_ids=ids, adapter_names=row_names).logits
                - theirs(input_ids=ids, adapter_names=row_names).logits
            )
            .abs()
            .max()
            .item()
        )
        mixed = timed({"peftkit": ours, "peft": theirs}, ids, warmup, reps, adapter_names=row_names)
    result["mixed"] = {"adapters": adapters, "rows": rows, "seq": seq, "max_abs_diff": diff, **mixed}
    return result
