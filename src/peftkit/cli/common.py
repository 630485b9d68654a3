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
        "--allow-pickle",
        action="store_true",
        default=None,
        help="unpickle an adapter_model.bin fully, objects beyond tensors included (can run code from the "
        "file: trusted sources only); without it a .bin is read by torch's weights-only unpickler",
    )
    p.add_argument(
        "--ignore-base-mismatch",
        action="store_true",
        help="load the adapter even if it was trained on another base (other weights or shapes)",
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

    task = task or args.task
    kwargs = (
        head_size(args.model, args.adapter, args.allow_pickle) if args.adapter and task == "seq-cls" else {}
    )
    model, tok = load_model(args.model, task=task, quantize=getattr(args, "quantize", None), **kwargs)
    if args.adapter:
        model = PeftModel.from_pretrained(
            model,
            args.adapter,
            allow_pickle=args.allow_pickle,
            ignore_mismatch=getattr(args, "ignore_base_mismatch", False),
        )
    model.eval()
    return model, tok


def head_size(model_name: str, adapter: str, allow_pickle: bool | None) -> dict[str, int]:
    """``{"num_labels": n}`` read from the classification head saved with an adapter (its
    ``modules_to_save``): the head's output rows and bias have one entry per label, the only size there
    other than the hidden size. Empty when the adapter saves no head."""
    from transformers import AutoConfig

    from .. import checkpoint as ckpt
    from ..models import resolve_model_path

    heads = ckpt.read_config(adapter).get("modules_to_save") or []
    tensors, _ = ckpt.read_weights(adapter, allow_pickle)
    hidden = getattr(AutoConfig.from_pretrained(resolve_model_path(model_name)), "hidden_size", None)
    in_head = [t for key, t in tensors.items() if any(f".{h}." in f".{key}." for h in heads)]
    sizes = {t.shape[0] for t in in_head if t.dim() and t.shape[0] != hidden}
    return {"num_labels": sizes.pop()} if len(sizes) == 1 else {}
