"""Resumable training checkpoints: trainable tensors, the model's persistent buffers (a method's
own state, e.g. AdaLoRA's rank masks and importance scores), optimizer, scheduler and every RNG.

A checkpoint is written into a temporary folder, each file flushed to disk, ``complete.json``
(with every file's SHA-256) written last, and the folder renamed into place (``os.replace``). A run
killed at any instant, or a disk that fills up, leaves the previous checkpoints and at most a
temporary folder that nothing reads. Pruning removes the completion marker first, so a
half-removed checkpoint is never taken as complete. Resume takes the newest checkpoint whose files
match their checksums and falls back past unreadable ones with a warning naming each.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import re
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from torch import nn

from ..errors import CheckpointError
from .distributed import local_like

MARKER = "complete.json"
TRAINABLE = "trainable.safetensors"
BUFFERS = "buffers.safetensors"
STATE = "state.pt"
NAME = re.compile(r"step-\d{7}")
SET_ASIDE = ".unreadable-"  # prefix of a checkpoint folder resume skipped (kept for inspection)


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


TUNER_LEVEL = "base_model.model."  # a PeftModel's tuner model holds the wrapped model as .model


def checkpoint_key(name: str) -> str:
    """A tensor's key in these checkpoints: its name in the model, the tuner level left out
    (``base_model.model.<path>`` -> ``base_model.<path>``): the keys checkpoints had before PeftModel held a
    tuner model (peft's layout), so older checkpoints resume."""
    return "base_model." + name[len(TUNER_LEVEL) :] if name.startswith(TUNER_LEVEL) else name


def trainable_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    return {
        checkpoint_key(n): p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad
    }


def persistent_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """The buffers ``state_dict`` saves (training may change them: AdaLoRA's masks, BatchNorm stats)."""
    out: dict[str, torch.Tensor] = {}
    for prefix, module in model.named_modules():
        skip = module._non_persistent_buffers_set  # torch's own record of register_buffer(persistent=False)
        for name, buf in module.named_buffers(recurse=False):
            if buf is not None and name not in skip:
                out[checkpoint_key(f"{prefix}.{name}" if prefix else name)] = buf.detach().contiguous()
    return out


# ---- writing ------------------------------------------------------------------------------------------
def write_file(path: Path, data: bytes) -> None:
    """Write ``data`` and flush it to disk (a full disk raises OSError here, not later)."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    """Make renames and removals inside ``path`` durable (POSIX; a no-op where folders cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _payload(step: int, model: nn.Module, extra: dict[str, Any]) -> dict[str, bytes]:
    state = io.BytesIO()
    torch.save({**extra, "rng": rng_state(), "step": step}, state)
    return {
        TRAINABLE: save_tensors(trainable_tensors(model)),
        BUFFERS: save_tensors(persistent_buffers(model)),
        STATE: state.getvalue(),
    }


def save_checkpoint(root: Path, step: int, model: nn.Module, extra: dict[str, Any], keep: int) -> Path:
    """Write ``root/step-XXXXXXX`` atomically and keep only the newest ``keep`` checkpoints.

    A failed write (a full disk) removes the temporary folder and raises OSError saying that the
    previous checkpoints are intact.
    """
    final, tmp = root / f"step-{step:07d}", root / f".tmp-step-{step:07d}"
    remove_checkpoint(tmp)  # a leftover of a save that was killed
    tmp.mkdir(parents=True)
    try:
        payload = _payload(step, model, extra)
        for name, data in payload.items():
            write_file(tmp / name, data)
        sums = {name: hashlib.sha256(data).hexdigest() for name, data in payload.items()}
        write_file(tmp / MARKER, json.dumps({"step": step, "sha256": sums}).encode())  # last
        _fsync_dir(tmp)
    except BaseException as err:
        remove_checkpoint(tmp)
        if isinstance(err, OSError):
            raise _write_error(root, final, err) from err
        raise
    remove_checkpoint(final)  # only ever a stale copy of this step (e.g. one resume skipped)
    os.replace(tmp, final)
    _fsync_dir(root)
    prune(root, keep)
    return final


def prune(root: Path, keep: int) -> None:
    """Keep the newest ``keep`` complete checkpoints; also remove unmarked ``step-*`` folders, which
    only a pruning cut short leaves (a new checkpoint gets its marker before its name)."""
    unmarked = [p for p in root.iterdir() if NAME.fullmatch(p.name) and not (p / MARKER).is_file()]
    for old in complete_checkpoints(root)[:-keep] + unmarked:
        remove_checkpoint(old)


def _write_error(root: Path, final: Path, err: OSError) -> OSError:
    previous = complete_checkpoints(root)
    then = (
        f"the previous checkpoint {previous[-1]} is intact. Free space, then continue with --resume"
        if previous
        else "there is no earlier checkpoint. Free space, then start again with --overwrite"
    )
    return OSError(err.errno, f"could not write checkpoint {final} ({err.strerror or err}); {then}")


def remove_checkpoint(path: Path) -> None:
    """Remove a checkpoint folder, its completion marker first (then it is never taken as complete)."""
    if not path.exists():
        return
    (path / MARKER).unlink(missing_ok=True)
    _fsync_dir(path)
    shutil.rmtree(path, ignore_errors=True)


def complete_checkpoints(root: Path) -> list[Path]:
    """Finished checkpoints, oldest first; temporary, set-aside or unmarked folders are ignored."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if NAME.fullmatch(p.name) and (p / MARKER).is_file())


# ---- reading ------------------------------------------------------------------------------------------
@dataclass
class Checkpoint:
    """A checkpoint read whole and checked, not yet applied to a model."""

    path: Path
    tensors: dict[str, torch.Tensor]
    buffers: dict[str, torch.Tensor] | None  # None: written before buffers were saved
    state: dict[str, Any]


def read_checkpoint(path: Path) -> Checkpoint:
    """Read and verify every file; CheckpointError when one is truncated, corrupt or missing."""
    try:
        marker = json.loads((path / MARKER).read_text(encoding="utf-8"))
        sums = marker.get("sha256", {})
        files = {name: (path / name).read_bytes() for name in (TRAINABLE, STATE, *sums) if name != MARKER}
    except (OSError, ValueError, AttributeError) as err:
        raise CheckpointError(f"cannot read it ({err})") from err
    for name, digest in sums.items():
        if hashlib.sha256(files[name]).hexdigest() != digest:
            raise CheckpointError(f"{name} does not match its checksum (truncated or corrupted)")
    try:
        tensors = load_tensors(files[TRAINABLE])
        buffers = load_tensors(files[BUFFERS]) if BUFFERS in files else None
        state = torch.load(io.BytesIO(files[STATE]), weights_only=True)
    except Exception as err:  # safetensors and torch.load raise their own error types on bad bytes
        raise CheckpointError(f"cannot parse it ({type(err).__name__}: {err})") from err
    if state.get("step") != marker.get("step"):
        raise CheckpointError(f"{STATE} is for step {state.get('step')}, its marker for {marker.get('step')}")
    return Checkpoint(path, tensors, buffers, state)


def require_checkpoints(root: Path) -> list[Path]:
    """The complete checkpoints under ``root``, oldest first; FileNotFoundError when there is none."""
    found = complete_checkpoints(root)
    if not found:
        raise FileNotFoundError(
            f"--resume: no complete checkpoint under {root} (the run stopped before its first one, or "
            "train.save_every is 0); start the run again with --overwrite"
        )
    return found


def read_latest(root: Path) -> Checkpoint:
    """The newest readable checkpoint under ``root``; unreadable newer ones are skipped with a
    warning naming each, and set aside (renamed ``.unreadable-step-...``) so they are not pruned
    in place of good ones or picked up again."""
    found = require_checkpoints(root)
    skipped: list[tuple[Path, str]] = []
    for path in reversed(found):
        try:
            checkpoint = read_checkpoint(path)
        except CheckpointError as err:
            skipped.append((path, str(err)))
            continue
        for bad, why in skipped:
            warnings.warn(
                f"resume: skipped checkpoint {bad} ({why}); resuming from {path.name}", stacklevel=3
            )
            _set_aside(bad)
        return checkpoint
    reasons = "; ".join(f"{p.name}: {why}" for p, why in skipped)
    raise CheckpointError(f"no readable checkpoint under {root} ({reasons}); start again with --overwrite")


def _set_aside(path: Path) -> None:
    target = path.with_name(SET_ASIDE + path.name)
    remove_checkpoint(target)
    (path / MARKER).unlink(missing_ok=True)
    os.replace(path, target)


def apply_checkpoint(checkpoint: Checkpoint, model: nn.Module) -> dict[str, Any]:
    """Copy the checkpoint's tensors and buffers into ``model``, restore the RNGs, return the state."""
    params = {checkpoint_key(n): p for n, p in model.named_parameters()}
    _check_names(checkpoint, "trainable tensors", set(checkpoint.tensors), set(trainable_tensors(model)))
    buffers = persistent_buffers(model)
    if checkpoint.buffers is None and buffers:
        raise CheckpointError(
            f"checkpoint {checkpoint.path} was written without the model's buffers (an older peftkit), "
            f"so {sorted(buffers)[:2]} cannot be restored; start the run again with --overwrite"
        )
    live = {checkpoint_key(n): b for n, b in model.named_buffers()}
    _check_names(checkpoint, "buffers", set(checkpoint.buffers or {}), set(buffers))
    pairs = [(params[n], v) for n, v in checkpoint.tensors.items()]
    pairs += [(live[n], v) for n, v in (checkpoint.buffers or {}).items()]
    bad = [tuple(v.shape) for target, v in pairs if target.shape != v.shape]
    if bad:
        raise CheckpointError(
            f"checkpoint {checkpoint.path} holds tensors of other shapes than this model's (e.g. {bad[0]}); "
            "resume with the same model, method and adapter config"
        )
    with torch.no_grad():
        for target, value in pairs:
            target.copy_(local_like(target, value))  # an FSDP2 shard takes its part
    set_rng_state(checkpoint.state["rng"])
    return checkpoint.state


def _check_names(checkpoint: Checkpoint, what: str, saved: set[str], expected: set[str]) -> None:
    if saved != expected:
        diff = sorted(saved ^ expected)[:5]
        raise CheckpointError(
            f"checkpoint {checkpoint.path} does not fit this model/config ({what} differ in {diff}); "
            "resume with the same model, method and adapter config"
        )
