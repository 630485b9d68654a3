"""Export an adapter for another library. ``--format peft`` writes a folder that
``peft.PeftModel.from_pretrained`` loads: peft's config fields and key scheme, safetensors weights."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "export an adapter (--format peft)"


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("adapter", help="adapter folder saved by peftkit")
    p.add_argument("--format", required=True, choices=["peft"], help="target format")
    p.add_argument("--out", required=True, help="output folder (must not exist)")
    p.add_argument(
        "--allow-pickle",
        action="store_true",
        default=None,
        help="unpickle an adapter_model.bin input fully (trusted sources only); without it torch's "
        "weights-only unpickler reads its tensors",
    )


def run(args: argparse.Namespace) -> int:
    from .. import checkpoint as ckpt
    from ..io import atomic_directory
    from ..registry import method_for_saved_config

    out = Path(args.out)
    if out.exists():
        raise ValueError(f"{out} exists; choose a new folder (nothing is overwritten)")
    data = ckpt.read_config(args.adapter)
    method = method_for_saved_config(data)
    if method.peft_type is None:
        raise ValueError(
            f"method {method.name!r} has no equivalent in peft; it can only be used with peftkit"
        )
    method.config_from_dict(data)  # validates: a field peft cannot read is an error here, not later
    tensors, meta = ckpt.read_weights(args.adapter, allow_pickle=args.allow_pickle)
    peft_config = {k: v for k, v in data.items() if not k.startswith("peftkit_")}
    with atomic_directory(out) as tmp:
        ckpt.write_adapter(tmp, peft_config, tensors, {k: v for k, v in meta.items() if k != "format"})
    print(f"{method.name} adapter exported in peft format to {out}")
    return 0
