"""A run folder holds one run: a fresh run never writes into another run's files, and two processes
never write into one folder at once.

The second rule is an OS lock (``flock`` on ``.peftkit.lock`` in the folder, ``msvcrt.locking`` on
Windows): the OS releases it when the process ends, however it ends, so a SIGKILL never leaves a
stale lock. The lock is re-entrant within a process (the pipeline holds it around a whole run; the
trainer it calls only checks that it is held).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ..errors import ConfigError

LOCK = ".peftkit.lock"
# what runs write into their folder: the trainer, the pipeline and the demo, and methods' figures
RUN_FILES = ("metrics.jsonl", "checkpoints", "run.yaml", "adapter", "summary.json", "training.png")
RUN_FIGURES = ("ranks_*.png", "gates_*.png")  # plotting.write_figures (AdaLoRA, AdaPtLoRA)
TRASH = ".peftkit-replaced-"  # a replaced run's files, moved aside before they are removed

_held: dict[Path, int] = {}  # folder -> descriptor of its lock file, for the folders this process holds


@contextlib.contextmanager
def claim_run_folder(
    out: str | Path, resume: bool = False, overwrite: bool = False, resumable: bool = True
) -> Iterator[Path]:
    """Hold ``out`` for one run. A fresh run (not ``resume``) into a folder holding another run is
    refused unless ``overwrite``, which removes that run's files (and nothing else) first;
    ``resumable``: whether the refusal may suggest --resume (the built-in demo cannot resume)."""
    out = Path(out)
    if resume and overwrite:
        raise ConfigError("--overwrite", "cannot be combined with --resume: continue the run or replace it")
    key = out.resolve()
    if key in _held:
        yield out
        return
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    _held[key] = _lock(out)
    try:
        if not resume:
            _refuse_or_clear(out, overwrite, resumable)
        yield out
    except BaseException:
        if created:  # a run that failed before writing anything leaves no folder behind
            _remove_if_only_lock(out)
        raise
    finally:
        os.close(_held.pop(key))


def _remove_if_only_lock(out: Path) -> None:
    if [p.name for p in out.iterdir()] == [LOCK]:
        (out / LOCK).unlink()
        with contextlib.suppress(OSError):  # another process may have just put a file there
            out.rmdir()


def run_files(out: Path) -> list[Path]:
    """The files of a run in ``out`` (empty when it holds none)."""
    found = [out / name for name in RUN_FILES if (out / name).exists()]
    return found + sorted(p for pattern in RUN_FIGURES for p in out.glob(pattern))


def _refuse_or_clear(out: Path, overwrite: bool, resumable: bool) -> None:
    found = run_files(out)
    if found and not overwrite:
        resume = "--resume to continue it, " if resumable else ""
        raise ConfigError(
            "output_dir",
            f"{out} holds another run ({', '.join(p.name for p in found)}); use {resume}--overwrite to "
            "replace it, or choose another output dir",
        )
    for old in out.glob(TRASH + "*"):  # left by a replacement that was killed half-way
        shutil.rmtree(old, ignore_errors=True)
    if found:
        trash = Path(tempfile.mkdtemp(prefix=TRASH, dir=out))
        for path in found:  # renames: the old run's files leave the folder at once, whole
            os.replace(path, trash / path.name)
        shutil.rmtree(trash, ignore_errors=True)


def _lock(out: Path) -> int:
    """Take the folder's lock or raise naming the process that holds it."""
    fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _try_lock(fd)
    except OSError as err:
        holder = _holder(fd)
        os.close(fd)
        raise ConfigError(
            "output_dir",
            f"{out} is in use by another peftkit run (pid {holder}); wait for it to finish, or choose "
            "another output dir",
        ) from err
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _holder(fd: int) -> str:
    """The pid the holding process wrote into the lock file (Windows may refuse the read)."""
    try:
        return os.read(fd, 32).decode(errors="replace").strip() or "unknown"
    except OSError:
        return "unknown"


def _try_lock(fd: int) -> None:
    """An exclusive, non-blocking lock the OS drops when the process dies (OSError if taken)."""
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        return
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
