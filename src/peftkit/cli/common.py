"""Pieces shared by sub-commands: loading a base model with an optional adapter."""

from __future__ import annotations

import argparse


def add_model_args(p: argparse.ArgumentParser, task_choices: bool = True) -> None:
    p.add_argument("--model", default="smollm2-135m", help="base model: packaged name, local dir or hub id")
    p.add_argument("--adapter", help="adapter folder (peftkit or peft format)")
    p.add_argument(
        "--quantize",
        choices=["nf4"],
        help="load the base's linear layers in 4-bit NF4 (QLoRA; needs bitsandbytes)",
    )
    p.add_argument(
        "--allow-pickle", action="store_true", help="allow pickled adapter_model.bin (trusted sources only)"
    )
    if task_choices:
        p.add_argument(
            "--task",
            default="causal-lm",
            choices=["causal-lm", "seq-cls", "seq2seq", "masked-lm"],
            help="model head to load (default causal-lm)",
        )


def load_with_adapter(args: argparse.Namespace, task: str | None = None):
    """(model, tokenizer): the base, wrapped with ``--adapter`` when given."""
    from ..model import PeftModel
    from ..models import load_model

    model, tok = load_model(args.model, task=task or args.task, quantize=getattr(args, "quantize", None))
    if args.adapter:
        model = PeftModel.from_pretrained(model, args.adapter, allow_pickle=args.allow_pickle)
    model.eval()
    return model, tok
