"""Resumable training checkpoints: trainable tensors, optimizer, scheduler and every RNG state.

A checkpoint is written into a temporary folder and renamed into place only when complete
(``complete.json`` written last), so a run killed at any instant leaves either the previous
checkpoints or a finished new one, never a half-written one that resume would pick up.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

MARKER = "complete.json"


def rng_state() -> dict[str, Any]:
    """Every RNG a training step may touch, as plain tensors and tuples (loadable with weights_only)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    numpy_state = (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss))
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": numpy_state}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))


def trainable_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(root: Path, step: int, model: nn.Module, extra: dict[str, Any], keep: int) -> Path:
    """Write ``root/step-XXXXXXX`` atomically and keep only the newest ``keep`` checkpoints."""
    final = root / f"step-{step:07d}"
    tmp = root / f".tmp-step-{step:07d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(trainable_tensors(model), str(tmp / "trainable.safetensors"))
    torch.save({**extra, "rng": rng_state(), "step": step}, tmp / "state.pt")
    (tmp / MARKER).write_text(json.dumps({"step": step}))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in complete_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def complete_checkpoints(root: Path) -> list[Path]:
    """Finished checkpoints, oldest first; temporary or unmarked folders are ignored."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step-*") if (p / MARKER).is_file())


def load_checkpoint(path: Path, model: nn.Module) -> dict[str, Any]:
    """Restore trainable tensors into ``model`` and return the rest of the saved state."""
    tensors = load_file(str(path / "trainable.safetensors"))
    params = dict(model.named_parameters())
    expected = {n for n, p in params.items() if p.requires_grad}
    if set(tensors) != expected:
        diff = sorted(set(tensors) ^ expected)[:5]
        raise ValueError(
            f"checkpoint {path} does not fit this model/config (differs in {diff}); "
            "resume with the same model, method and adapter config"
        )
    with torch.no_grad():
        for name, value in tensors.items():
            params[name].copy_(value)
    state = torch.load(path / "state.pt", weights_only=True)
    set_rng_state(state["rng"])
    return state
