"""Serve a base model and adapters of any method behind an OpenAI-compatible HTTP API, with
continuous batching (rows of different adapters and methods share every decoding step), adapters
loaded and unloaded while serving (vLLM's /v1/load_lora_adapter and /v1/unload_lora_adapter), a
Prometheus /metrics endpoint and a playground page at /. Needs the serve extra:
pip install 'peftkit[serve]'."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

HELP = "serve a base model and adapters behind an OpenAI-compatible API (continuous batching)"
DTYPES = ("float32", "bfloat16", "float16")


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="smollm2-135m", help="base model: packaged name, local dir or hub id")
    p.add_argument("--served-model-name", help="the base model's id in the API (default: the --model value)")
    p.add_argument(
        "--adapter",
        action="append",
        default=[],
        metavar="NAME=FOLDER",
        help="an adapter folder to serve as model NAME (repeatable; safetensors weights only)",
    )
    p.add_argument(
        "--adapter-dir",
        help="the only folder /v1/load_lora_adapter may load from (without it: loading is off)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument(
        "--api-key",
        default=os.environ.get("PEFTKIT_API_KEY"),
        help="require 'Authorization: Bearer KEY' on every endpoint but /health (default: $PEFTKIT_API_KEY)",
    )
    p.add_argument("--max-batch", type=int, default=32, help="rows decoded together at most (default 32)")
    p.add_argument(
        "--max-queue", type=int, default=256, help="requests waiting at most; then 429 (default 256)"
    )
    p.add_argument(
        "--dtype", choices=DTYPES, default="float32", help="the base model's weights (default float32)"
    )
    p.add_argument(
        "--quantize", choices=["nf4"], help="load the base's linear layers in 4-bit NF4 (needs bitsandbytes)"
    )


def adapters(specs: list[str]) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for spec in specs:
        name, sep, folder = spec.partition("=")
        if not sep or not name or not folder:
            raise ValueError(f"--adapter {spec!r}: expected NAME=FOLDER")
        if name in out:
            raise ValueError(f"--adapter: the name {name!r} is given twice")
        out[name] = Path(folder)
    return out


def check(args: argparse.Namespace) -> None:
    for flag in ("max_batch", "max_queue"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if not 1 <= args.port <= 65535:
        raise ValueError(f"--port must be in [1, 65535], got {args.port}")
    if args.adapter_dir is not None and not Path(args.adapter_dir).is_dir():
        raise ValueError(f"--adapter-dir {args.adapter_dir}: no such folder")
    if args.api_key is not None and not args.api_key.strip():
        raise ValueError("--api-key is empty")


def run(args: argparse.Namespace) -> int:
    check(args)
    specs = adapters(args.adapter)
    try:
        import uvicorn

        from ..serve import build_server
    except ImportError as err:
        raise ImportError(
            f"{err}; peftkit serve needs the serve extra: pip install 'peftkit[serve]'"
        ) from err
    import torch

    from ..models import load_model

    model, tok = load_model(
        args.model, task="causal-lm", dtype=getattr(torch, args.dtype), quantize=args.quantize
    )
    app = build_server(
        model,
        tok,
        args.served_model_name or args.model,
        adapters=specs,
        adapter_dir=Path(args.adapter_dir) if args.adapter_dir else None,
        api_key=args.api_key,
        max_batch=args.max_batch,
        max_queue=args.max_queue,
    )
    print(
        f"peftkit serve: http://{args.host}:{args.port} ({len(specs)} adapters)", file=sys.stderr, flush=True
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
