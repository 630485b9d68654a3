"""peft's state-dict functions on peftkit models: an adapter's tensors in peft's keys
(``get_peft_model_state_dict`` / ``set_peft_model_state_dict`` / ``load_peft_weights``), the base model's own
tensors under its own keys while adapters are attached (``get_base_model_state_dict`` /
``set_base_model_state_dict``), and the base embeddings ``save_pretrained(save_embedding_layers=...)`` adds.

Each function takes a :class:`~peftkit.PeftModel` (duck-typed: this module sits below it).
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from .checkpoint import read_weights
from .errors import CheckpointError, ConfigError
from .layer import adapter_layers

EMBEDDING_LAYER_NAMES = ("embed_tokens", "lm_head")  # peft's names of embedding layers a config may target
BASE_PREFIX = "base_model.model."


class Keys(NamedTuple):
    """torch's ``_IncompatibleKeys`` shape, as peft's functions return it."""

    missing_keys: list[str]
    unexpected_keys: list[str]


# ---- an adapter's tensors ----------------------------------------------------------------------------
def get_peft_model_state_dict(
    model: Any,
    state_dict: dict[str, torch.Tensor] | None = None,
    adapter_name: str = "default",
    unwrap_compiled: bool = False,
    save_embedding_layers: bool | str = "auto",
) -> dict[str, torch.Tensor]:
    """Adapter ``adapter_name``'s tensors in peft's keys (``base_model.model.<path>.lora_A.weight``: the
    adapter name left out), as ``save_pretrained`` writes them. ``state_dict`` (tensors to read instead of
    the live ones) is refused: peftkit reads the adapter's own tensors."""
    if state_dict is not None:
        raise ConfigError("state_dict", "peftkit reads the adapter's live tensors; pass state_dict=None")
    if unwrap_compiled:
        model = getattr(model, "_orig_mod", model)
    return saved_tensors(model, adapter_name, save_embedding_layers)


def set_peft_model_state_dict(
    model: Any,
    peft_model_state_dict: dict[str, torch.Tensor],
    adapter_name: str = "default",
    ignore_mismatched_sizes: bool = False,
    low_cpu_mem_usage: bool = False,
) -> Keys:
    """Load peft-keyed tensors into adapter ``adapter_name`` (strict: a missing, extra or misshapen tensor is
    an error, so the returned key lists are empty). ``ignore_mismatched_sizes`` / ``low_cpu_mem_usage`` are
    refused."""
    if ignore_mismatched_sizes:
        raise ConfigError(
            "ignore_mismatched_sizes", "peftkit loads adapters strictly; a size mismatch is an error"
        )
    if low_cpu_mem_usage:
        raise ConfigError(
            "low_cpu_mem_usage", "peftkit loads into allocated adapter weights; True is not supported"
        )
    model.load_adapter_state_dict(adapter_name, dict(peft_model_state_dict))
    return Keys([], [])


def load_peft_weights(
    model_id: str | Path, device: str | None = None, allow_pickle: bool | None = None, **kwargs: Any
) -> dict[str, torch.Tensor]:
    """The tensors of a saved adapter folder (safetensors, or a pickled ``adapter_model.bin`` read as
    :func:`peftkit.checkpoint.read_weights` says), on ``device``. Local folders only: hub options are
    refused by name."""
    if kwargs:
        raise ConfigError(
            sorted(kwargs)[0], "peftkit reads adapters from local folders; hub options are not taken"
        )
    tensors, _ = read_weights(model_id, allow_pickle)
    return {k: v.to(device) for k, v in tensors.items()} if device is not None else tensors


def saved_tensors(
    model: Any, adapter_name: str, save_embedding_layers: bool | str
) -> dict[str, torch.Tensor]:
    """What ``save_pretrained`` writes for one adapter: its tensors, and the base's embedding weights when
    ``save_embedding_layers`` says so (``"auto"``: when the adapter targets an embedding layer, as peft)."""
    tensors = model.adapter_state_dict(adapter_name)
    if _save_embeddings(model, adapter_name, save_embedding_layers):
        targeted = _targets_embedding(model, getattr(model.peft_config[adapter_name], "target_modules", None))
        tensors.update(embedding_tensors(model, wrapped_only=targeted))
    return tensors


def _save_embeddings(model: Any, adapter_name: str, option: bool | str) -> bool:
    if option not in (True, False, "auto"):
        raise ConfigError("save_embedding_layers", f"expected True, False or 'auto', got {option!r}")
    if option != "auto":
        return bool(option)
    targets = getattr(model.peft_config[adapter_name], "target_modules", None)
    if _targets_embedding(model, targets):
        warnings.warn(
            "Setting `save_embedding_layers` to `True` as embedding layers found in `target_modules`.",
            stacklevel=4,
        )
        return True
    return _vocab_resized(model, getattr(model.peft_config[adapter_name], "base_model_name_or_path", None))


def _targets_embedding(model: Any, targets: Any) -> bool:
    if isinstance(targets, str) and targets != "all-linear":
        names = [n for n, _ in model.get_base_model().named_modules()]
        return any(
            re.fullmatch(targets, n)
            for n in names
            if any(re.match(rf"(.*\.)?{e}$", n) for e in EMBEDDING_LAYER_NAMES)
        )
    return isinstance(targets, list) and any(e in targets for e in EMBEDDING_LAYER_NAMES)


def _vocab_resized(model: Any, name_or_path: str | None) -> bool:
    """Whether the vocabulary differs from the one in the base's local ``config.json`` (peft also asks the
    hub; peftkit reads local folders only)."""
    config = getattr(model.get_base_model(), "config", None)
    if config is None or not name_or_path or not (Path(name_or_path) / "config.json").is_file():
        return False
    saved = type(config).from_pretrained(name_or_path)
    if getattr(saved, "vocab_size", None) == getattr(config, "vocab_size", None):
        return False
    warnings.warn(
        "Setting `save_embedding_layers` to `True` as the embedding layer has been resized during "
        "finetuning.",
        stacklevel=5,
    )
    return True


def embedding_tensors(model: Any, wrapped_only: bool = False) -> dict[str, torch.Tensor]:
    """The base's input and output embedding weights in peft's keys (``...embed_tokens.base_layer.weight``
    when an adapter wraps the layer); ``wrapped_only``: only those an adapter wraps (as peft, when the
    adapter targets an embedding)."""
    base = model.get_base_model()
    if not hasattr(base, "get_input_embeddings"):
        warnings.warn(
            "Could not identify embedding layer(s) because the model is not a transformers model.",
            stacklevel=3,
        )
        return {}
    out: dict[str, torch.Tensor] = {}
    modules = dict(base.named_modules())
    for layer in (base.get_input_embeddings(), base.get_output_embeddings()):
        if layer is None or (wrapped_only and not hasattr(layer, "base_attr")):
            continue
        inner = getattr(layer, "base", layer)  # an adapter layer: its wrapped module
        path = next((n for n, m in modules.items() if m is inner), None)
        if path is not None and getattr(inner, "weight", None) is not None:
            out[f"{BASE_PREFIX}{path}.weight"] = _whole(inner.weight.detach())  # "...base_layer.weight"
    return out


def _whole(tensor: torch.Tensor) -> torch.Tensor:
    """A tensor sharded over processes (FSDP2's DTensor) gathered whole; every rank must call this."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


# ---- the base model's own tensors --------------------------------------------------------------------
def base_key_map(model: Any) -> dict[str, str]:
    """The wrapped model's own state-dict keys (as before any adapter) -> where each lives now (inside an
    adapter layer's wrapped module); adapters' own tensors are not in it."""
    base = model.get_base_model()
    layers = dict(adapter_layers(base))
    out: dict[str, str] = {}
    for key in base.state_dict():
        original = _original_key(key, layers)
        if original is not None:
            out[original] = key
    return out


def _original_key(key: str, layers: dict[str, nn.Module]) -> str | None:
    """``a.q_proj.base_layer.weight`` -> ``a.q_proj.weight``; a key of an adapter's own tensor -> None."""
    for path, layer in layers.items():
        inner = f"{path}.{layer.base_attr}."
        if key.startswith(inner):
            return _original_key(
                f"{path}.{key[len(inner) :]}", {p: m for p, m in layers.items() if p != path}
            )
        if key.startswith(path + "."):
            return None
    return key


def get_base_model_state_dict(model: Any) -> dict[str, torch.Tensor]:
    """The wrapped model's tensors under its own keys (``...q_proj.weight``), without any adapter's."""
    state = model.get_base_model().state_dict()
    return {original: state[key] for original, key in base_key_map(model).items()}


def set_base_model_state_dict(model: Any, state_dict: dict[str, torch.Tensor], strict: bool = True) -> Keys:
    """Write base tensors given under the model's own keys into the wrapped model; adapters are untouched.
    With ``strict`` a missing or unknown key is an error, else they are returned."""
    mapping = base_key_map(model)
    missing = sorted(set(mapping) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(mapping))
    if strict and (missing or unexpected):
        raise CheckpointError(
            f"base state dict: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}"
        )
    live = model.get_base_model().state_dict(keep_vars=True)
    with torch.no_grad():
        for original, value in state_dict.items():
            if original in mapping:
                live[mapping[original]].copy_(value)
    return Keys(missing, unexpected)


__all__ = [
    "EMBEDDING_LAYER_NAMES",
    "Keys",
    "base_key_map",
    "embedding_tensors",
    "get_base_model_state_dict",
    "get_peft_model_state_dict",
    "load_peft_weights",
    "saved_tensors",
    "set_base_model_state_dict",
    "set_peft_model_state_dict",
]
