"""Print a model's module tree with parameter counts, the 12 d^2 L + V d estimate beside the exact
count, and what an adapter config would add. Weights are not loaded: the model is built on the
meta device from its config."""

from __future__ import annotations

import argparse

HELP = "parameter accounting for a model and, optionally, an adapter config"


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="packaged name (smollm2-135m, minilm-l6), local directory or hub id")
    p.add_argument("--config", help="adapter config (YAML/JSON with 'method:', or an adapter_config.json)")
    p.add_argument("--depth", type=int, default=2, help="depth of the module tree (default 2)")


def run(args: argparse.Namespace) -> int:
    from transformers import AutoConfig

    from .. import accounting
    from ..models import resolve_model_path
    from ..registry import config_from_file

    path = resolve_model_path(args.model)
    hf_config = AutoConfig.from_pretrained(path)
    model = accounting.model_on_meta(hf_config)
    total = accounting.count(model)
    print(f"model: {args.model} ({hf_config.model_type}, {type(model).__name__})")
    print("\n".join(["module tree:"] + ["  " + line for line in accounting.tree_lines(model, args.depth)]))
    print(f"exact parameters: {total:,}")
    estimate = accounting.seed_estimate(hf_config)
    if estimate:
        print(f"seed estimate:    {estimate}  ({estimate.total / total:.3f} x exact)")
    if args.config:
        config = config_from_file(args.config)
        print(accounting.adapter_cost(model, config).describe(total, config.method))
    return 0
