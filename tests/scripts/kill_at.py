"""Run ``peftkit`` (its real command line, in this process) and SIGKILL it at a chosen point.

Usage: kill_at.py POINT N [peftkit arguments ...]

POINT is where the N-th occurrence (counted from 1 in this process) is killed:
  step        inside an optimizer step: after the forward pass, before backward
  checkpoint  inside a checkpoint write: half of ``state.pt`` is on disk, its marker is not
  prune       inside the pruning of an old checkpoint: its marker and one file are gone, the rest not
  none        never (a plain ``peftkit`` run)

Under ``torchrun``, only the rank named by the environment variable KILL_RANK dies (every rank when
it is unset).
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
from pathlib import Path

import peftkit.training.state as state
import peftkit.training.trainer as trainer
from peftkit.cli import main


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _nth(n: int):
    seen = {"n": 0}

    def due() -> bool:
        seen["n"] += 1
        return seen["n"] == n

    return due


def kill_in_step(n: int) -> None:
    due, regularizer = _nth(n), trainer._regularizer

    def patched(model):
        if due():
            _die()
        return regularizer(model)

    trainer._regularizer = patched


def kill_in_checkpoint(n: int) -> None:
    due, write = _nth(n), state.write_file

    def patched(path: Path, data: bytes) -> None:
        if path.name == state.STATE and due():
            write(path, data[: len(data) // 2])
            _die()
        write(path, data)

    state.write_file = patched


def kill_in_prune(n: int) -> None:
    due, rmtree = _nth(n), shutil.rmtree

    def patched(path, *args, **kwargs):
        path = Path(path)
        if state.NAME.fullmatch(path.name) and due():
            (path / state.TRAINABLE).unlink()
            _die()
        return rmtree(path, *args, **kwargs)

    shutil.rmtree = patched


POINTS = {"step": kill_in_step, "checkpoint": kill_in_checkpoint, "prune": kill_in_prune, "none": None}

if __name__ == "__main__":
    point, n, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    rank = os.environ.get("RANK", "0")
    if POINTS[point] is not None and os.environ.get("KILL_RANK", rank) == rank:
        POINTS[point](n)
    sys.exit(main(argv))
