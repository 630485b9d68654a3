"""Compose saved LoRA adapters into one new adapter: with given weights (``--weights``: linear, cat
or svd merging; negative weights negate a task), or with weights LoRAHub finds from a few examples
(``--examples few.jsonl``, one ``{"input": ..., "output": ...}`` per line). Writes the adapter
(peft's format) and ``compose_report.json`` (the weights per adapter, and LoRAHub's search)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..io import atomic_directory, atomic_write_json

HELP = "merge LoRA adapters with given weights, or find the weights with LoRAHub"


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="smollm2-135m", help="base model the adapters were trained on")
    p.add_argument("--adapters", nargs="+", required=True, help="LoRA adapter folders to compose")
    p.add_argument("--out", required=True, help="output folder (written atomically; must not exist)")
    p.add_argument("--weights", nargs="+", type=float, help="one weight per adapter (no search)")
    p.add_argument("--examples", help="few-shot JSONL for LoRAHub's search (5 to 20 examples)")
    p.add_argument("--combination", default="linear", choices=["linear", "cat", "svd"], help="default linear")
    p.add_argument("--svd-rank", type=int, help="target rank of the svd combination")
    p.add_argument(
        "--ignore-base-mismatch",
        action="store_true",
        help="load the adapters even if they were trained on another base (other weights or shapes)",
    )
    search = p.add_argument_group("LoRAHub search")
    search.add_argument("--budget", type=int, default=40, help="loss evaluations (default 40)")
    search.add_argument("--lower", type=float, default=-1.5, help="lower bound of each weight (default -1.5)")
    search.add_argument("--upper", type=float, default=1.5, help="upper bound of each weight (default 1.5)")
    search.add_argument(
        "--l1", type=float, default=0.05, help="weight of the mean |w| penalty (default 0.05)"
    )
    search.add_argument("--seed", type=int, default=0, help="optimiser seed (default 0)")
    search.add_argument("--batch-size", type=int, default=8, help="examples per forward pass (default 8)")
    search.add_argument("--input-column", default="input", help="example field holding the prompt")
    search.add_argument("--output-column", default="output", help="example field holding the answer")
    search.add_argument(
        "--system", help="system message for the chat template (as the adapters were trained)"
    )
    search.add_argument("--max-length", type=int, default=256, help="token budget of one example")
    search.add_argument("--quiet", action="store_true", help="no progress bar")


def load_sources(args: argparse.Namespace):
    """The base with every source adapter loaded as ``source_<i>``; returns (model, tokenizer, names)."""
    from ..model import PeftModel
    from ..models import load_model

    base, tok = load_model(args.model, task="causal-lm")
    names = [f"source_{i}" for i in range(len(args.adapters))]
    ignore = args.ignore_base_mismatch
    model = PeftModel.from_pretrained(base, args.adapters[0], adapter_name=names[0], ignore_mismatch=ignore)
    for name, path in zip(names[1:], args.adapters[1:]):
        model.load_adapter(path, adapter_name=name, ignore_mismatch=ignore)
    return model.eval(), tok, names


def search(args: argparse.Namespace, model, tok, names: list[str]) -> dict:
    from ..composition.lorahub import LoraHubConfig, few_shot_batches, lorahub_search
    from ..data import read_records

    config = LoraHubConfig(
        budget=args.budget,
        lower=args.lower,
        upper=args.upper,
        l1=args.l1,
        seed=args.seed,
        combination=args.combination,
        batch_size=args.batch_size,
    )
    read = read_records(args.examples, required=[args.input_column, args.output_column])
    print(read.summary())
    batches = few_shot_batches(
        tok,
        read.records,
        args.batch_size,
        args.input_column,
        args.output_column,
        args.system,
        args.max_length,
    )
    result = lorahub_search(model, names, batches, config, adapter_name="default", progress=not args.quiet)
    return {"method": "lorahub", "config": vars(config), "examples": len(read.records), **result.to_dict()}


def run(args: argparse.Namespace) -> int:
    from ..composition.merge import add_weighted_adapter

    out = Path(args.out)
    if out.exists():
        raise ValueError(f"{out} exists; choose a new folder (nothing is overwritten)")
    if bool(args.weights) == bool(args.examples):
        raise ValueError("give either --weights (one per adapter) or --examples (LoRAHub finds the weights)")
    model, tok, names = load_sources(args)
    if args.weights:
        add_weighted_adapter(model, names, args.weights, "default", args.combination, args.svd_rank)
        report = {"method": "weighted", "combination": args.combination, "weights": args.weights}
    else:
        report = search(args, model, tok, names)
    report["adapters"] = [str(a) for a in args.adapters]
    with atomic_directory(out) as tmp:
        model.save_pretrained(tmp, adapter_names=["default"])
        atomic_write_json(tmp / "compose_report.json", report)
    shown = ", ".join(f"{Path(a).name}: {w:+.3f}" for a, w in zip(args.adapters, report["weights"]))
    print(f"composed adapter written to {out} ({shown})")
    return 0
