"""Adapter checkpoints in the ``peft`` library's format.

A folder holds ``adapter_config.json`` and ``adapter_model.safetensors``; tensor keys are
``base_model.model.<module path>.<adapter tensor>`` with the adapter name stripped. peftkit adds
a fingerprint of the base model to the safetensors metadata, which ``peft`` ignores, so an adapter
loaded onto the wrong base fails loudly: the architecture, the shapes of the targeted modules, and a
content digest of a few targeted weights (a base of the same shapes but other weights is caught too;
``ignore_mismatch=True`` overrides). Adapters saved before the digests existed still load: only
their shapes are checked, with a warning saying so. A pickled ``adapter_model.bin`` (peft's
``safe_serialization=False``) loads through torch's weights-only unpickler, which rebuilds tensors and
plain containers and runs no code from the file; ``allow_pickle=True`` unpickles anything (trusted
files only), ``allow_pickle=False`` refuses pickles altogether.
"""

from __future__ import annotations

import hashlib
import json
import math
import pickle
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn

from .errors import BaseModelMismatchError, CheckpointError
from .io import atomic_save_safetensors, atomic_write, atomic_write_json

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


DIGEST_SAMPLES = 4096  # entries of a weight that its digest reads
DIGESTED_MODULES = 4  # targeted weights digested per adapter


def weight_digest(module: nn.Module) -> str | None:
    """A cheap content hash of ``module.weight``: SHA-256 of up to 4096 evenly spaced entries rounded
    to bfloat16 (the same weights loaded in float32 or bfloat16 agree). None for a module without a
    plain weight: a 4-bit weight's bytes depend on its quantisation, not only on the model."""
    weight = getattr(module, "weight", None)
    if (
        not isinstance(weight, torch.Tensor)
        or weight.is_meta
        or getattr(weight, "quant_state", None) is not None
    ):
        return None
    flat = weight.detach().reshape(-1)
    sample = flat[:: max(1, flat.numel() // DIGEST_SAMPLES)][:DIGEST_SAMPLES]
    values = sample.to("cpu", torch.bfloat16).float().numpy()
    return hashlib.sha256(values.tobytes()).hexdigest()[:16]


def base_digest(module: nn.Module) -> str | None:
    """The digest of the weight a module had before any adapter touched it: an adapter layer digests
    its base when it wraps it (merging and PiSSA rewrite the weight later)."""
    return module.base_digest if hasattr(module, "base_digest") else weight_digest(module)


def _digested(model: nn.Module, targets: list[str]) -> list[str]:
    """A few targets spread over the model, or the input embeddings for methods that target no module."""
    paths = sorted(targets)
    picked = paths[:: math.ceil(len(paths) / DIGESTED_MODULES)] if paths else []
    get_input = getattr(model, "get_input_embeddings", None)
    if not picked and callable(get_input) and get_input() is not None:
        picked = [n for n, m in model.named_modules() if m is get_input()][:1]
    return picked


def fingerprint(
    model: nn.Module, targets: list[str], located: dict[str, str] | None = None
) -> dict[str, Any]:
    """What an adapter needs its base to be: model type, the shapes of its targeted modules and the
    content digests of a few of them. ``located``: where a target path of the original base is in
    ``model`` now, when they differ (replicated layers)."""
    config = getattr(model, "config", None)

    def at(path: str) -> nn.Module:
        return model.get_submodule((located or {}).get(path, path))

    digests = {p: base_digest(at(p)) for p in _digested(model, targets)}
    return {
        "model_type": getattr(config, "model_type", None) or type(model).__name__,
        "modules": {t: base_weight_shape(at(t)) for t in targets},
        "digests": {p: d for p, d in digests.items() if d is not None},
    }


def _shape_problems(saved: dict[str, Any], model: nn.Module) -> list[str]:
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
    return problems


def _digest_problems(saved: dict[str, Any], model: nn.Module) -> list[str]:
    problems = []
    for path, digest in saved.get("digests", {}).items():
        try:
            have = base_digest(model.get_submodule(path))
        except AttributeError:
            continue  # reported by the shape check
        if have is not None and have != digest:
            problems.append(f"{path} holds other weights here (content digest {have}, {digest} when trained)")
    return problems


def check_fingerprint(
    saved: dict[str, Any], model: nn.Module, where: str, ignore_mismatch: bool = False
) -> None:
    """Raise :class:`BaseModelMismatchError` naming the first differences (none with ``ignore_mismatch``)."""
    if ignore_mismatch:
        return
    problems = _shape_problems(saved, model) or _digest_problems(saved, model)
    if problems:
        raise BaseModelMismatchError(
            f"adapter at {where} was trained on a different base model: {'; '.join(problems[:5])}"
            f"{' ...' if len(problems) > 5 else ''}. Load it onto the base model it was trained on; if you "
            "know this base fits it, pass ignore_mismatch=True (CLI: --ignore-base-mismatch)."
        )
    if "digests" not in saved:
        warnings.warn(
            f"adapter at {where} was saved by an older peftkit without weight digests: only the base's "
            "architecture and shapes were checked, not its weights",
            stacklevel=3,
        )


def write_adapter(
    folder: str | Path,
    config: dict[str, Any],
    tensors: dict[str, torch.Tensor],
    metadata: dict[str, str],
    safe_serialization: bool = True,
) -> None:
    """Write weights then config, each atomically (temporary file, then rename). ``safe_serialization=False``
    writes peft's pickled ``adapter_model.bin`` (no metadata: the base fingerprint is safetensors-only)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = unaliased(tensors)
    if safe_serialization:
        atomic_save_safetensors(folder / WEIGHTS_NAME, tensors, {"format": "pt", **metadata})
    else:
        clean = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
        atomic_write(folder / PICKLE_NAME, lambda tmp: torch.save(clean, tmp))
    atomic_write_json(folder / CONFIG_NAME, config)


def unaliased(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Tensors sharing storage (tied weights, a bias saved twice) cloned apart: safetensors refuses them."""
    seen: set[int] = set()
    out = {}
    for key, value in tensors.items():
        ptr = value.untyped_storage().data_ptr() if value.device.type != "meta" else id(value)
        out[key] = value.clone() if ptr in seen else value
        seen.add(ptr)
    return out


def read_config(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(
            f"no {CONFIG_NAME} in {folder}; is this an adapter folder saved by peftkit or peft?"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path} is not valid JSON ({err}); the file may be truncated") from err
    if not isinstance(data, dict):
        raise CheckpointError(
            f"{path} must hold a JSON object of config fields, got a {type(data).__name__}; "
            "is this file an adapter_config.json saved by peftkit or peft?"
        )
    return data


def read_weights(
    folder: str | Path, allow_pickle: bool | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and safetensors metadata of an adapter folder. A pickled ``adapter_model.bin``: read by
    torch's weights-only unpickler (``allow_pickle=None``, as peft and torch read it), unpickled fully
    (``True``: can run code from the file) or refused (``False``)."""
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
        return _read_pickle(folder / PICKLE_NAME, allow_pickle), {}
    raise CheckpointError(f"no {WEIGHTS_NAME} (or {PICKLE_NAME}) in {folder}")


def _read_pickle(path: Path, allow_pickle: bool | None) -> dict[str, torch.Tensor]:
    if allow_pickle is False:
        raise CheckpointError(
            f"{path.parent} holds only pickled weights ({PICKLE_NAME}) and allow_pickle=False refuses "
            "pickles; leave allow_pickle unset to read its tensors safely, or convert it to safetensors"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path} holds more than tensors, which torch's weights-only unpickler refuses ({err}); "
            "allow_pickle=True (CLI: --allow-pickle) unpickles it fully, which can run code from the "
            "file: only for a source you trust"
        ) from err
    except (OSError, RuntimeError, EOFError) as err:
        raise CheckpointError(f"{path} cannot be read ({err}); the file may be truncated") from err
