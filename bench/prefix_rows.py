"""What computing a batch's prefix as peft does costs: MLP prefix tuning, one training step.

peft looks its prefix up and runs the prefix MLP for every row of the batch (``B x V`` rows), so the
MLP's weight gradients sum the rows in one matmul. Since 2026-12-02 peftkit does the same for a batch
whose rows share one adapter (``PrefixEncoder.prefix_batch``), which makes it train to peft's
parameters bit for bit; before, it ran the MLP once on ``V`` rows and broadcast the result (the
gradient summed the rows in another order). This times both, round-robin in one process, each on its
own copy of the model with the same weights, at the suite's shapes:

* ``sst2``: MiniLM-L6 classification, batch 32 x 32 tokens, 20 prefixes, MLP 512 wide;
* ``e2e``: SmolLM2-135M causal LM, batch 8 x 107 tokens, 20 prefixes, MLP 512 wide.

Step = forward, loss, backward, AdamW step, zero_grad (fp32, random token ids, seed 0).

    python bench/prefix_rows.py [--shapes sst2,e2e] [--steps 20] [--warmup 3]
    (results: bench/results/prefix_rows.json, or --out)
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch
from lora_overhead import machine_info, round_robin, summary

from peftkit import PrefixTuningConfig, get_peft_model
from peftkit.models import load_model
from peftkit.virtual.adapter import InputAdapter

SHAPES = {  # name -> (model, task, batch, tokens)
    "sst2": ("minilm-l6", "seq-cls", 32, 32),
    "e2e": ("smollm2-135m", "causal-lm", 8, 107),
}
SYSTEMS = ("per row (peft's order)", "once, broadcast (before)")


def build(shape: str, system: str):
    """One training step of ``system`` on ``shape``; both systems start from the same weights."""
    name, task, batch, tokens = SHAPES[shape]
    torch.manual_seed(0)
    base, _ = load_model(name, task=task, **({"num_labels": 2} if task == "seq-cls" else {}))
    config = PrefixTuningConfig(num_virtual_tokens=20, prefix_projection=True, encoder_hidden_size=512)
    model = get_peft_model(base, config).train()
    if system == SYSTEMS[1]:  # the protocol's default: the prefix once, one view for every row
        encoder = model.prompt_encoder["default"]
        encoder.prefix_batch = InputAdapter.prefix_batch.__get__(encoder)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, base.config.vocab_size, (batch, tokens), generator=g)
    labels = torch.randint(0, 2, (batch,)) if task == "seq-cls" else ids
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step() -> None:
        model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="sst2,e2e", help=f"comma-separated among {list(SHAPES)}")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "prefix_rows.json")
    args = p.parse_args()
    shapes = [s for s in args.shapes.split(",") if s]
    if unknown := [s for s in shapes if s not in SHAPES]:
        p.error(f"--shapes: unknown {unknown}; choose among {list(SHAPES)}")
    result = {"machine": machine_info(), "steps": args.steps, "warmup": args.warmup, "shapes": {}}
    print(f"| shape | {' | '.join(SYSTEMS)} | per row / once |\n|---|---:|---:|---:|")
    for shape in shapes:
        ms = round_robin({s: build(shape, s) for s in SYSTEMS}, args.warmup, args.steps)
        medians = [statistics.median(ms[s]) for s in SYSTEMS]
        result["shapes"][shape] = {s: {**summary(ms[s]), "raw_ms": ms[s]} for s in SYSTEMS}
        print(f"| {shape} | {medians[0]:.0f} ms | {medians[1]:.0f} ms | {medians[0] / medians[1]:.2f}x |")
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
