"""Merge an adapter into its base model and write a plain transformers model directory
(safetensors + config + tokenizer) that ``AutoModel*.from_pretrained`` loads with no peftkit."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..io import atomic_directory
from ..quantization import quantized_layers
from .common import add_model_args, load_with_adapter

HELP = "merge an adapter into its base and save a full transformers model"


def add_parser(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    p.add_argument("--out", required=True, help="output directory (written atomically; must not exist)")


def run(args: argparse.Namespace) -> int:
    if not args.adapter:
        raise ValueError("--adapter is required: the adapter folder to merge")
    out = Path(args.out)
    if out.exists():
        raise ValueError(f"{out} exists; choose a new directory (nothing is overwritten)")
    model, tok = load_with_adapter(args)
    quantized = bool(quantized_layers(model))
    merged = model.merge_and_unload()
    if quantized:  # merge_and_unload dequantised every 4-bit layer
        dtype = next(merged.parameters()).dtype
        print(
            "the base is 4-bit (QLoRA): the merged model is written dequantised, in full precision "
            f"({str(dtype).removeprefix('torch.')}); it is larger than the 4-bit base"
        )
    with atomic_directory(out) as tmp:
        merged.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    print(f"merged model written to {out}")
    return 0
