"""Evaluate an adapter (or the bare base model) on a run's held-out data.

Classification and cloze report accuracy and macro-F1; sft and seq2seq report loss and
perplexity, and with --generate also exact match and BLEU (several references sharing one input,
as in E2E, are scored together)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = "evaluate an adapter or the base model on held-out data"


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", help="a training output folder (reads run.yaml and adapter/)")
    p.add_argument("--config", help="a run config YAML (instead of --run)")
    p.add_argument("--adapter", help="adapter folder (default: <run>/adapter)")
    p.add_argument("--base", action="store_true", help="evaluate the base model alone (zero-shot)")
    p.add_argument(
        "--generate", action="store_true", help="sft/seq2seq: also decode and score exact match + BLEU"
    )
    p.add_argument("--max-new-tokens", type=int, default=64, help="with --generate (default 64)")
    p.add_argument("--limit", type=int, default=0, help="evaluate at most this many held-out rows")
    p.add_argument("--out", help="write the metrics as JSON here")


def run(args: argparse.Namespace) -> int:
    from ..pipeline import generation_scores, prepare
    from ..run_config import apply_overrides, build_run_config, load_yaml

    if not args.run and not args.config:
        raise ValueError("give --run <training output folder> or --config <run.yaml>")
    config_path = Path(args.run) / "run.yaml" if args.run else Path(args.config)
    if args.run and not config_path.is_file():
        raise ValueError(f"--run: {args.run} has no run.yaml; give the output_dir of a `peftkit train` run")
    sets = {"data.eval_limit": str(args.limit)} if args.limit else {}
    run_config = build_run_config(apply_overrides(load_yaml(config_path), sets))
    adapter = None if args.base else (args.adapter or (str(Path(args.run) / "adapter") if args.run else None))
    if adapter is None and not args.base:
        raise ValueError("no adapter: give --adapter, --run, or --base for the bare model")
    prepared = prepare(run_config, adapter_path=adapter, bare=args.base)
    if not prepared.eval:
        raise ValueError("no held-out data to evaluate: set data.eval, or data.eval_fraction > 0")
    metrics = prepared.eval_fn(prepared.model.eval())
    if args.generate:
        metrics.update(generation_scores(prepared, run_config, args.max_new_tokens))
    metrics = {"adapter": adapter or "(base model)", **metrics}
    print(json.dumps(metrics, indent=2))
    if args.out:
        from ..io import atomic_write_json

        atomic_write_json(args.out, metrics)
    return 0
