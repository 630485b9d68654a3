"""Show what an AdapterFusion attends to: for a fusion run, the mean weight each fusion site
(transformer layer and slot) gives each fused adapter over held-out examples, printed as a table
and drawn as a heat map PNG (sites x adapters)."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "heat map of an AdapterFusion's attention over its adapters (layers x adapters)"


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, help="output folder of a `peftkit train` fusion run")
    p.add_argument("--adapter", help="the fusion's folder (default: <run>/adapter)")
    p.add_argument("--limit", type=int, default=256, help="held-out examples to average over (default 256)")
    p.add_argument("--batch-size", type=int, default=32, help="examples per forward pass (default 32)")
    p.add_argument("--out", help="PNG to write (default: <run>/fusion.png)")


def run(args: argparse.Namespace) -> int:
    import torch

    from ..methods.fusion.attention import average, fusion_attention
    from ..pipeline import prepare
    from ..plotting import plot_heatmap
    from ..run_config import build_run_config, load_yaml

    if args.limit <= 0 or args.batch_size <= 0:
        raise ValueError("--limit and --batch-size must be positive")
    config_path = Path(args.run) / "run.yaml"
    if not config_path.is_file():
        raise ValueError(f"--run: {args.run} has no run.yaml; give the output_dir of a `peftkit train` run")
    run_config = build_run_config(load_yaml(config_path))
    if run_config.adapter.method != "fusion":
        raise ValueError(f"--run: {args.run} trained a {run_config.adapter.method!r} adapter, not a fusion")
    p = prepare(run_config, adapter_path=args.adapter or str(Path(args.run) / "adapter"))
    examples = p.eval[: args.limit] or p.train[: args.limit]
    if not examples:
        raise ValueError(f"--run: {args.run} has no examples to read the fusion on")
    model = p.model.eval()
    maps = []
    with torch.no_grad():
        for i in range(0, len(examples), args.batch_size):
            batch = p.collate(examples[i : i + args.batch_size])
            batch.pop("labels", None)
            maps.append(fusion_attention(model, batch, "default"))
    fused = average(maps)
    print(f"fusion attention, mean over {len(examples)} examples ({fused.tokens} tokens):")
    print(fused.table())
    out = Path(args.out) if args.out else Path(args.run) / "fusion.png"
    title = f"AdapterFusion attention ({len(examples)} held-out examples)"
    print(f"heat map: {plot_heatmap(fused.weights, fused.sites, fused.adapters, title, out)}")
    return 0
