"""Putting a server together: the base model checked for continuous batching, adapters, the app."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..decoding import ModelStepper
from ..errors import ConfigError
from .adapters import AdapterTable
from .batch import check_cache_layout
from .metrics import Metrics
from .protocol import ApiError
from .scheduler import Scheduler

UNBOUNDED = 10**6  # a tokenizer's model_max_length above this means "not set"


def context_length(model: nn.Module, tokenizer) -> int | None:
    """Tokens a row may hold: the model's position limit, else the tokenizer's (None: unknown)."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    limit = getattr(tokenizer, "model_max_length", None)
    return limit if isinstance(limit, int) and limit < UNBOUNDED else None


def check_batchable(model: nn.Module) -> None:
    """Refuse a model whose rows cannot join a running batch (no cache, or not a plain one)."""
    if getattr(model.config, "is_encoder_decoder", False):
        raise ConfigError("model", "peftkit serve runs decoder-only language models, not encoder-decoders")
    stepper = ModelStepper(model)
    with torch.no_grad():
        stepper.prefill(torch.zeros(1, 2, dtype=torch.long))
    if not stepper.cached:
        raise ConfigError("model", f"{type(model).__name__} fills no KV cache; continuous batching needs one")
    check_cache_layout(stepper.cache)


def build_server(
    model: nn.Module,
    tokenizer,
    base_name: str,
    adapters: dict[str, Path] | None = None,
    adapter_dir: Path | None = None,
    api_key: str | None = None,
    max_batch: int = 32,
    max_queue: int = 256,
):
    """The FastAPI app serving ``model`` and ``adapters`` (name -> folder, loaded now)."""
    from .app import Server, create_app

    model.eval()
    check_batchable(model)
    table = AdapterTable(model, tokenizer, base_name, adapter_dir)
    for name, folder in (adapters or {}).items():
        try:
            table.check_name(name)
            table.load(name, Path(folder))
        except ApiError as err:
            raise ConfigError("adapter", f"{name}={folder}: {err.message}") from err
    metrics = Metrics()
    scheduler = Scheduler(table, max_batch=max_batch, max_queue=max_queue, metrics=metrics)
    server = Server(table, scheduler, metrics, context_length(model, tokenizer), api_key)
    return create_app(server)
