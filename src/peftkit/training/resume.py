"""What may change when a run resumes.

A resumed run must end exactly where the uninterrupted run would have, so every setting that
changes a training step (learning rate, schedule, batch size, seed, data, model, task, method and
adapter fields, ...) must stay as saved. ``SAFE`` lists the fields that only change what is logged,
saved or evaluated, or the run's length where the schedule does not depend on it; each has a rule
that says when the change is safe. Anything else that differs is refused, listed old -> new.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import ConfigError

Flat = dict[str, Any]  # "section.field" -> value
Rule = Callable[[Flat, Flat], str | None]  # None: the change is safe; else why it is not


def _always(old: Flat, new: Flat) -> str | None:
    return None


def _without_early_stopping(old: Flat, new: Flat) -> str | None:
    if new.get("train.early_stopping_patience"):
        return "with train.early_stopping_patience set it changes the step the run stops at"
    return None


def _length_free_schedule(old: Flat, new: Flat) -> str | None:
    if new.get("train.schedule") == "constant" and not new.get("train.warmup_ratio"):
        return None
    return (
        "the learning rate schedule depends on the run's length (linear or cosine decay, warmup_ratio); "
        "only schedule: constant without warmup_ratio lets a run be extended"
    )


def _epochs(old: Flat, new: Flat) -> str | None:
    if new.get("train.max_steps") and new.get("train.max_steps") == old.get("train.max_steps"):
        return None  # ignored while max_steps is set
    return _length_free_schedule(old, new)


SAFE: dict[str, Rule] = {
    "output_dir": _always,  # where the run is, not what it does
    "train.log_every": _always,  # which train_loss rows are written
    "train.save_every": _always,  # when checkpoints are written
    "train.keep_checkpoints": _always,  # how many are kept
    "train.eval_every": _without_early_stopping,  # evaluation does not touch weights or RNGs
    "train.epochs": _epochs,
    "train.max_steps": _length_free_schedule,
}


def flatten(config: dict[str, Any]) -> Flat:
    """``{"train": {"lr": ..}, "output_dir": ..}`` -> ``{"train.lr": .., "output_dir": ..}``, values
    normalised as JSON has them (tuples are lists, mapping keys strings) so a YAML round trip compares
    equal."""
    plain = json.loads(json.dumps(config, default=str))
    flat: Flat = {}
    for key, value in plain.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{field}": v for field, v in value.items()})
        else:
            flat[key] = value
    return flat


def resume_changes(saved: dict[str, Any], current: dict[str, Any], where: str) -> list[str]:
    """The changed fields, each as ``field old -> new``, when all are safe; otherwise ConfigError
    listing every refused change (``where`` names the saved config)."""
    old, new = flatten(saved), flatten(current)
    accepted, refused = [], []
    for key in sorted(old.keys() | new.keys()):
        if old.get(key) == new.get(key):
            continue
        change = f"{key} {old.get(key)!r} -> {new.get(key)!r}"
        why = SAFE[key](old, new) if key in SAFE else "it changes the run"
        if why is None:
            accepted.append(change)
        else:
            refused.append(change if key not in SAFE else f"{change} ({why})")
    if refused:
        raise ConfigError(
            "--resume",
            f"the config differs from {where} in fields that change the run: {'; '.join(refused)}. Resume "
            "with the saved values, or start a new run (--overwrite, or another output dir)",
        )
    return accepted


def examples_digest(examples: Sequence[dict]) -> str:
    """SHA-256 of the training examples, in order: a resumed run must train on the same data."""
    h = hashlib.sha256()
    for example in examples:
        h.update(json.dumps(example, sort_keys=True, default=_plain).encode())
        h.update(b"\n")
    return h.hexdigest()


def _plain(value: Any) -> Any:
    return value.tolist() if hasattr(value, "tolist") else repr(value)
