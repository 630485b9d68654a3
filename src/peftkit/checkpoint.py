"""Adapter checkpoints in the ``peft`` library's format.

A folder holds ``adapter_config.json`` and ``adapter_model.safetensors``; tensor keys are
``base_model.model.<module path>.<adapter tensor>`` with the adapter name stripped. peftkit adds
a fingerprint of the base model (architecture and shapes of the targeted modules) to the
safetensors metadata, which ``peft`` ignores, so an adapter loaded onto the wrong base fails
loudly. Pickled ``adapter_model.bin`` files load only with ``allow_pickle=True``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn

from .errors import BaseModelMismatchError, CheckpointError
from .io import atomic_save_safetensors, atomic_write_json

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PICKLE_NAME = "adapter_model.bin"
KEY_PREFIX = "base_model.model."


def base_weight_shape(module: nn.Module) -> list[int] | None:
    base = getattr(module, "base", module)  # an adapter layer stands for the module it wraps
    weight = getattr(base, "weight", None)
    if getattr(weight, "quant_state", None) is not None:  # a 4-bit weight is packed: use the logical shape
        return [base.out_features, base.in_features]
    return list(weight.shape) if isinstance(weight, torch.Tensor) else None


def fingerprint(model: nn.Module, targets: list[str]) -> dict[str, Any]:
    """What an adapter needs its base to be: model type and the shapes of its targeted modules."""
    config = getattr(model, "config", None)
    return {
        "model_type": getattr(config, "model_type", None) or type(model).__name__,
        "modules": {t: base_weight_shape(model.get_submodule(t)) for t in targets},
    }


def check_fingerprint(saved: dict[str, Any], model: nn.Module, where: str) -> None:
    """Raise :class:`BaseModelMismatchError` naming the first differences."""
    current = getattr(getattr(model, "config", None), "model_type", None) or type(model).__name__
    problems = []
    if saved.get("model_type") != current:
        problems.append(f"model type {saved.get('model_type')!r} vs this base's {current!r}")
    for path, shape in saved.get("modules", {}).items():
        try:
            have = base_weight_shape(model.get_submodule(path))
        except AttributeError:
            problems.append(f"{path} is missing from this base")
            continue
        if have != shape:
            problems.append(f"{path} has shape {have} here but {shape} when the adapter was trained")
    if problems:
        raise BaseModelMismatchError(
            f"adapter at {where} was trained on a different base model: {'; '.join(problems[:5])}"
            f"{' ...' if len(problems) > 5 else ''}. Load it onto the base model it was trained on."
        )


def write_adapter(
    folder: str | Path, config: dict[str, Any], tensors: dict[str, torch.Tensor], metadata: dict[str, str]
) -> None:
    """Write weights then config, each atomically (temporary file, then rename)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_save_safetensors(folder / WEIGHTS_NAME, tensors, {"format": "pt", **metadata})
    atomic_write_json(folder / CONFIG_NAME, config)


def read_config(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(
            f"no {CONFIG_NAME} in {folder}; is this an adapter folder saved by peftkit or peft?"
        )
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path} is not valid JSON ({err}); the file may be truncated") from err


def read_weights(
    folder: str | Path, allow_pickle: bool = False
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and safetensors metadata of an adapter folder."""
    folder = Path(folder)
    if (folder / WEIGHTS_NAME).is_file():
        try:
            with safe_open(str(folder / WEIGHTS_NAME), framework="pt") as f:
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
                return tensors, dict(f.metadata() or {})
        except Exception as err:  # safetensors raises its own error types
            raise CheckpointError(
                f"{folder / WEIGHTS_NAME} cannot be read ({err}); the file may be truncated"
            ) from err
    if (folder / PICKLE_NAME).is_file():
        if not allow_pickle:
            raise CheckpointError(
                f"{folder} holds only pickled weights ({PICKLE_NAME}). Unpickling can run arbitrary code, so "
                "peftkit loads it only with allow_pickle=True (CLI: --allow-pickle) for a source you trust."
            )
        return torch.load(folder / PICKLE_NAME, map_location="cpu", weights_only=True), {}
    raise CheckpointError(f"no {WEIGHTS_NAME} (or {PICKLE_NAME}) in {folder}")
