"""Data-parallel training on processes started by ``torchrun`` (``torch.distributed.run``): the
process group, and the few collective steps the trainer and the pipeline need around it.

Nothing here starts processes or averages gradients by hand. torchrun starts the ranks and
describes them in the environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``); :func:`init_from_env` joins that group with the backend of the device (gloo on
CPU, nccl on CUDA); DistributedDataParallel or FSDP2 average the gradients (:mod:`.sharding`).

What only one process may do (hold the run folder, read and check a checkpoint, write files) runs on
rank 0 inside :func:`on_main`, which tells every rank how it went: the others wait at that point,
and raise :class:`OtherRankFailed` when rank 0 failed (rank 0 raises and reports its own error).
A rank that dies (killed, out of memory) breaks the next collective on the others; the trainer turns
that into :class:`RankLost`, which says what happened and how to resume.
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor, distribute_tensor

T = TypeVar("T")
BACKENDS = {"cpu": "gloo", "cuda": "nccl"}  # device type -> process group backend


@dataclass(frozen=True)
class World:
    """This process's place in the run: rank ``rank`` of ``size`` (1: a plain single-process run)."""

    rank: int = 0
    size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        """Rank 0: the one that logs, evaluates into metrics.jsonl, plots and saves."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1

    def describe(self) -> str:
        if not self.active:
            return "1 process"
        return f"{self.size} processes ({dist.get_backend()} on {self.device.type})"


class OtherRankFailed(RuntimeError):
    """Raised on the ranks other than 0 when rank 0 failed at a step only it does (rank 0 reports it)."""


class RankLost(ConnectionError):
    """A rank of the run stopped (killed, crashed, out of memory) or torchrun stopped this one."""


def launched() -> bool:
    """Started by torchrun with more than one process in all."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def _local_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def init_from_env() -> World:
    """Join the process group torchrun set up (nothing to join for a single process)."""
    if launched() and not dist.is_initialized():
        device = _local_device()
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(BACKENDS[device.type])
    return current()


@contextlib.contextmanager
def process_group() -> Iterator[World]:
    """:func:`init_from_env` for the block; a group joined here is left at its end."""
    joined = launched() and not dist.is_initialized()
    world = init_from_env()
    try:
        yield world
    finally:
        if joined:
            dist.destroy_process_group()


def current() -> World:
    """This process's world: the initialised process group, or a single process."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return World()
    device = _local_device() if dist.get_backend() == "nccl" else torch.device("cpu")
    return World(dist.get_rank(), dist.get_world_size(), device)


# ---- rank 0 does it, every rank learns how it went -------------------------------------------------
def on_main(fn: Callable[[], T], world: World) -> T:
    """``fn()`` on rank 0 only; every rank returns its result (sent to all), or raises: rank 0 its
    own error, the others :class:`OtherRankFailed`."""
    if not world.active:
        return fn()
    box: list[Any] = [None]
    error: Exception | None = None
    if world.main:
        try:
            box[0] = ("ok", fn())
        except Exception as err:  # sent to the others, then raised here unchanged
            error, box[0] = err, ("error", f"{type(err).__name__}: {err}")
    dist.broadcast_object_list(box, src=0)
    kind, value = box[0]
    if error is not None:
        raise error
    if kind == "error":
        raise OtherRankFailed(f"rank 0 failed: {value}")
    return value


@contextlib.contextmanager
def held_on_main(
    make: Callable[[], contextlib.AbstractContextManager[T]], world: World
) -> Iterator[T | None]:
    """Enter ``make()`` on rank 0 only (e.g. the run folder's lock) for the whole block; the other ranks
    get None. Entering failures reach every rank as in :func:`on_main`."""
    with contextlib.ExitStack() as stack:
        yield on_main(lambda: stack.enter_context(make()), world)


def on_every_rank(fn: Callable[[], T], world: World) -> T:
    """``fn()`` on every rank; when it fails anywhere, every rank raises. A rank raises its own error
    unless rank 0 failed the same way (then rank 0 reports it and the others raise
    :class:`OtherRankFailed`, so that an error every rank meets is printed once)."""
    if not world.active:
        return fn()
    error: Exception | None = None
    try:
        result: T | None = fn()
    except Exception as err:
        error, result = err, None
    reports: list[Any] = [None] * world.size
    dist.all_gather_object(reports, None if error is None else f"{type(error).__name__}: {error}")
    if error is not None and (world.main or reports[0] != reports[world.rank]):
        raise error
    failed = [(rank, why) for rank, why in enumerate(reports) if why is not None]
    if failed:
        raise OtherRankFailed(f"rank {failed[0][0]} failed: {failed[0][1]}")
    return result  # type: ignore[return-value]


def from_main(value: T, world: World) -> T:
    """Rank 0's ``value`` on every rank (e.g. evaluation metrics, so that all ranks stop together)."""
    if not world.active:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(value: T, world: World) -> list[T]:
    """Every rank's ``value``, in rank order, on every rank."""
    if not world.active:
        return [value]
    out: list[Any] = [None] * world.size
    dist.all_gather_object(out, value)
    return out


def total(values: list[float], world: World) -> list[float]:
    """Element-wise sums over the ranks (the logged loss and token counts of a step)."""
    if not world.active:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=world.device)
    dist.all_reduce(t)
    return t.tolist()


def map_batches(fn: Callable[[Any], T], batches: list[Any], world: World) -> list[T]:
    """``[fn(b) for b in batches]`` with batch ``i`` on rank ``i % size``, the results gathered in order
    on every rank. A rank short of a batch in the last round runs the first one again and drops the
    result: every rank makes as many forward passes (FSDP2 gathers weights in each)."""
    if not world.active:
        return [fn(b) for b in batches]
    mine = list(range(world.rank, len(batches), world.size))
    rounds = -(-len(batches) // world.size)
    results = [fn(batches[i]) for i in mine]
    for _ in range(rounds - len(mine)):
        fn(batches[0])
    parts = gather(results, world)
    return [parts[i % world.size][i // world.size] for i in range(len(batches))]


def local_like(target: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``value`` (whole, the same on every rank) laid out like ``target``: this rank's shard of it when
    ``target`` is an FSDP2 shard (no communication: every rank cuts its own), else ``value``."""
    if not isinstance(target, DTensor):
        return value
    value = value.to(device=target.device, dtype=target.dtype)
    return distribute_tensor(value, target.device_mesh, target.placements, src_data_rank=None)


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """A collated batch's tensors on ``device`` (anything else as it is)."""
    if device.type == "cpu":
        return batch
    moved = copy.copy(batch)  # a dict subclass keeps its class and attributes (a packed batch's token count)
    moved.update({k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor)})
    return moved


# ---- a rank that is gone ----------------------------------------------------------------------------
GLOO_LINK = "/gloo/transport/"  # where gloo's errors about a broken connection come from


def peer_failure(err: BaseException) -> bool:
    """Whether ``err`` says another rank is gone: a collective broke (nccl raises DistError, gloo a
    RuntimeError from its transport), or torchrun stopped this rank."""
    return isinstance(err, (dist.DistError, RankLost)) or (
        isinstance(err, RuntimeError) and GLOO_LINK in str(err)
    )


def lost_message(world: World, checkpoints: str, newest: str | None) -> str:
    """What :class:`RankLost` says: what happened, and where the run can continue from."""
    if newest:
        then = f"the newest complete checkpoint is {checkpoints}/{newest}; rerun the same torchrun command "
        then += "with --resume to continue from it"
    elif world.main:
        then = f"no checkpoint was complete yet under {checkpoints}: rerun the same command with --overwrite"
    else:
        then = f"rank 0 keeps the checkpoints ({checkpoints}): rerun the same command with --resume"
    return (
        f"rank {world.rank} stopped: another rank of this run ({world.size} processes) failed or was killed, "
        f"or torchrun stopped the run (its report names the rank and exit code); {then}"
    )
