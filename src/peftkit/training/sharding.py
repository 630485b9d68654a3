"""How a model is spread over the ranks of a run (``train.distributed``): ``ddp`` keeps a whole copy
on each rank and DistributedDataParallel averages the gradients; ``fsdp`` shards every parameter
over the ranks with FSDP2 (``torch.distributed.fsdp.fully_shard``), which gathers a unit's weights
for its forward and backward and reduce-scatters its gradients.

FSDP2 units (:func:`fsdp_units`): each module that holds trainable parameters only and is called in
the forward pass (a LoRA ``A`` or ``B``, a bottleneck adapter, a ``modules_to_save`` copy) is a unit
of its own, apart from the frozen weights; each transformer block (the classes the base lists in
``_no_split_modules``) is one; the root takes the rest. FSDP2 shards per parameter (no flat
parameter): gradients exist and are reduce-scattered for trainable parameters only, so trainable
tensors that a frozen layer reads in its own forward (BitFit-style deltas, AdaLoRA's ``E``, a prompt
table) share that block's or the root's unit at no gradient cost for the frozen weights there.

Every rank starts from rank 0's weights (DDP broadcasts them when it wraps; :func:`wrap` does the
same before sharding), so a random draw that differs between ranks never gives them different
adapters. Saving gathers the trainable tensors only (:func:`gathered`), never the frozen base.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor
from torch.overrides import TorchFunctionMode

from ..checkpoint import weight_digest
from ..errors import ConfigError
from ..quantization import quantized_layers
from ..registry import Method, get_method
from .distributed import World, local_like

CONTAINERS = (nn.ModuleDict, nn.ModuleList, nn.ParameterDict, nn.ParameterList)


def wrap(model: nn.Module, mode: str, world: World, trial: Callable[[], torch.Tensor]) -> nn.Module:
    """The module to run forward and backward through; ``model`` itself stays the one to save and
    evaluate (under ``fsdp`` it is the same object, sharded in place). ``trial`` computes the loss of
    one training batch: watching it tells which modules are called and which parameters are used."""
    model.to(world.device)
    probe = probe_forward(model, trial)
    if mode == "ddp":
        return _ddp(model, world, find_unused=bool(probe.unused))
    _refuse_fsdp(model)
    broadcast_from_main(model)
    _keep_input_digest(model)
    mesh = init_device_mesh(world.device.type, (world.size,))
    for unit in fsdp_units(model, probe):
        fully_shard(unit, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def _ddp(model: nn.Module, world: World, find_unused: bool) -> nn.Module:
    """DDP broadcasts rank 0's parameters and buffers when it wraps; buffers change only through a
    method's hooks, which see the same averaged gradients on every rank (no sync in each forward).
    ``find_unused``: some trainable parameter took no part in the probed loss (DDP then looks for
    such parameters in every step instead of waiting for their gradients)."""
    ids = [world.device.index] if world.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(
        model, device_ids=ids, find_unused_parameters=find_unused, forward_sync_buffers=False
    )


@contextlib.contextmanager
def quiet_views(engine: nn.Module) -> Iterator[None]:
    """FSDP2 warns whenever a unit returns a view, in case later code changes it in place (which would
    skip its backward gathering): peftkit's layers never do, as tests/test_distributed.py checks by
    training every method of the contract table sharded against one process."""
    if not isinstance(engine, FSDPModule):
        yield
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
        yield


def no_sync(engine: nn.Module) -> contextlib.AbstractContextManager:
    """Accumulate this micro-batch's gradients locally; the last one of the step averages them all."""
    if isinstance(engine, nn.parallel.DistributedDataParallel):
        return engine.no_sync()
    return _fsdp_no_sync(engine)


@contextlib.contextmanager
def _fsdp_no_sync(engine: nn.Module) -> Iterator[None]:
    engine.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        engine.set_requires_gradient_sync(True)


# ---- checks ------------------------------------------------------------------------------------------
def _refuse_fsdp(model: nn.Module) -> None:
    if quantized_layers(model):
        raise ConfigError(
            "train.distributed",
            "fsdp cannot shard a 4-bit base: bitsandbytes' Params4bit keeps its quantisation state "
            "outside the tensor, and FSDP2's fully_shard replaces each parameter by a DTensor shard "
            "without it; use train.distributed: ddp (each rank holds the whole 4-bit base), or drop "
            "model.quantize",
        )
    hooked = _methods_with_hooks(model)
    if hooked:
        raise ConfigError(
            "train.distributed",
            f"fsdp cannot train {hooked}: the method computes on its whole adapter tensors outside the "
            "forward pass (a loss term or a per-step update), where FSDP2 holds only this rank's shard; "
            "use train.distributed: ddp",
        )


def _methods_with_hooks(model: nn.Module) -> list[str]:
    """The trainable adapters' methods that add a loss term (AdaLoRA, hard-concrete diff pruning) or
    update their adapter after each step (AdaLoRA's rank allocation)."""
    configs = getattr(model, "peft_config", {})
    names = [n for n in getattr(model, "active_adapters", []) if not configs[n].inference_mode]
    hooked = set()
    for name in names:
        method = get_method(configs[name])
        if type(method).after_optimizer_step is not Method.after_optimizer_step:
            hooked.add(method.name)
        with torch.no_grad():
            if method.regularization_loss(model.get_base_model(), configs[name], name) is not None:
                hooked.add(method.name)
    return sorted(hooked)


def _keep_input_digest(model: nn.Module) -> None:
    """A saved adapter's base fingerprint may digest the input embeddings (methods that wrap no
    layer): digest them now, while each rank still holds them whole (an adapter layer keeps its
    base's digest the same way)."""
    get = getattr(model, "get_input_embeddings", None)
    embeddings = get() if callable(get) else None
    if isinstance(embeddings, nn.Module) and not hasattr(embeddings, "base_digest"):
        embeddings.base_digest = weight_digest(embeddings)


# ---- the same start on every rank -------------------------------------------------------------------
def broadcast_from_main(model: nn.Module) -> None:
    """Rank 0's parameters and buffers on every rank (what DDP does when it wraps a model)."""
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            dist.broadcast(tensor.data, src=0)


# ---- FSDP2 units ---------------------------------------------------------------------------------------
@dataclass
class Probe:
    called: set[str]  # paths of the modules whose forward ran
    unused: list[str]  # trainable parameters the loss does not depend on
    bypassed: set[str]  # modules a descendant of which ran outside their own forward


class _CallWatch(TorchFunctionMode):
    """Which modules run, and which are bypassed: a module inside them called, or a parameter of
    theirs used by an operation, while they are not running (BERT's word embeddings called by the
    virtual-token code apart from its embeddings block; DoRA's norm of ``B @ A`` reading LoRA's
    factors in the wrapping layer). FSDP2 gathers a unit's weights for its own forward only."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.called: set[str] = set()
        self.bypassed: set[str] = set()
        self.running: list[str] = []
        self.owners = _owners(model)
        self.hooks = []
        for path, module in model.named_modules():
            self.hooks.append(module.register_forward_pre_hook(lambda *_, p=path: self._enter(p)))
            self.hooks.append(module.register_forward_hook(lambda *_, p=path: self._leave(p)))

    def _around(self, path: str) -> None:
        parts = path.split(".") if path else []
        outer = {".".join(parts[:i]) for i in range(1, len(parts) + 1)}  # path and its enclosing ones
        self.bypassed |= outer - set(self.running)

    def _enter(self, path: str) -> None:
        self.called.add(path)
        self._around(path.rpartition(".")[0])
        self.running.append(path)

    def _leave(self, path: str) -> None:
        if path in self.running:
            del self.running[len(self.running) - 1 - self.running[::-1].index(path)]

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") != "__get__":  # reading .dtype or .shape needs no gathering
            for arg in _tensors([args, kwargs or {}]):
                for owner in self.owners.get(id(arg), ()):
                    self._around(owner)
        return func(*args, **(kwargs or {}))

    def remove(self) -> None:
        for hook in self.hooks:
            hook.remove()


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)


def probe_forward(model: nn.Module, trial: Callable[[], torch.Tensor]) -> Probe:
    """Run ``trial()`` once, watching which modules are called and which trainable parameters the
    loss reaches in its autograd graph (no backward); RNG states and buffers are restored after."""
    watch = _CallWatch(model)
    buffers = {k: v.clone() for k, v in model.named_buffers()}  # module paths, as restored below
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    try:
        with torch.random.fork_rng(devices=devices), watch:
            reached = _graph_leaves(trial())
    finally:
        watch.remove()
        live = dict(model.named_buffers())
        with torch.no_grad():
            for name, value in buffers.items():
                live[name].copy_(value)
    unused = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in reached]
    return Probe(watch.called, unused, watch.bypassed)


def _graph_leaves(loss: torch.Tensor) -> set[int]:
    """id() of every leaf tensor ``loss``'s autograd graph accumulates a gradient into."""
    found: set[int] = set()
    seen: set[Any] = set()
    stack = [loss.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        leaf = getattr(node, "variable", None)  # an AccumulateGrad node
        if leaf is not None:
            found.add(id(leaf))
        stack.extend(child for child, _ in node.next_functions)
    return found


def fsdp_units(model: nn.Module, probe: Probe) -> list[nn.Module]:
    """The modules to shard as units of their own, innermost first: called trainable-only modules,
    then transformer blocks. A module sharing a parameter with code outside it (tied weights), or one
    that code outside its forward calls into, is left to an enclosing unit."""
    owners = _owners(model)
    blocks = set(_no_split_classes(model))

    def fits(path: str, module: nn.Module) -> bool:
        inside = path + "."
        apart = all(o == path or o.startswith(inside) for p in module.parameters() for o in owners[id(p)])
        return apart and path not in probe.bypassed

    adapters = _maximal(model, lambda path, m: path in probe.called and _trainable_only(m))
    units = [(path, m) for path, m in adapters if fits(path, m)]
    units += [
        (path, m)
        for path, m in model.named_modules()
        if path and type(m).__name__ in blocks and any(True for _ in m.parameters()) and fits(path, m)
    ]
    _check_dtypes(model, [path for path, _ in units])
    return [m for _, m in sorted(units, key=lambda item: -item[0].count("."))]


def _trainable_only(module: nn.Module) -> bool:
    params = list(module.parameters())
    return bool(params) and not isinstance(module, CONTAINERS) and all(p.requires_grad for p in params)


def _maximal(model: nn.Module, pick: Callable[[str, nn.Module], bool]) -> list[tuple[str, nn.Module]]:
    """The outermost sub-modules for which ``pick`` holds (none inside another)."""
    out: list[tuple[str, nn.Module]] = []

    def visit(path: str, module: nn.Module) -> None:
        if path and pick(path, module):
            out.append((path, module))
            return
        for name, child in module.named_children():
            visit(f"{path}.{name}" if path else name, child)

    visit("", model)
    return out


def _owners(model: nn.Module) -> dict[int, list[str]]:
    """id(parameter) -> path of every module that holds it (a tied weight has several)."""
    owners: dict[int, list[str]] = {}
    for path, module in model.named_modules(remove_duplicate=False):
        for p in module.parameters(recurse=False):
            owners.setdefault(id(p), []).append(path)
    return owners


def _no_split_classes(model: nn.Module) -> list[str]:
    """The block classes transformers models declare (what accelerate's FSDP wrapping uses too)."""
    return sorted({c for m in model.modules() for c in (getattr(m, "_no_split_modules", None) or [])})


def _check_dtypes(model: nn.Module, units: list[str]) -> None:
    """FSDP2 reduces a unit's gradients in one dtype: its trainable parameters must share one."""
    seen: dict[str, set[torch.dtype]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            unit = max((u for u in units if name.startswith(u + ".")), key=len, default="(root)")
            seen.setdefault(unit, set()).add(p.dtype)
    mixed = {unit: dtypes for unit, dtypes in seen.items() if len(dtypes) > 1}
    if mixed:
        unit, dtypes = next(iter(mixed.items()))
        raise ConfigError(
            "train.distributed",
            f"fsdp needs the trainable parameters of one unit in one dtype, {unit} has "
            f"{sorted(str(d) for d in dtypes)}; use model.dtype: float32, or train.distributed: ddp",
        )


# ---- whole tensors for saving and resuming -----------------------------------------------------------
@contextlib.contextmanager
def gathered(model: nn.Module) -> Iterator[nn.Module]:
    """Inside the block, ``model``'s trainable parameters are whole on every rank (FSDP2 shards
    gathered: the adapter only, never the frozen base), so it exports, saves and reports as if
    unsharded; outside FSDP it changes nothing. Every rank must enter, and do the same inside: the
    gathering is collective, and so is running a sharded module (exporting a prefix runs its
    projection), after which FSDP2 puts its shards back: a hook puts the whole tensors back again."""
    slots = [
        (module, name, p)
        for module in model.modules()
        for name, p in module.named_parameters(recurse=False)
        if isinstance(p, DTensor) and p.requires_grad
    ]
    whole: dict[int, nn.Parameter] = {}
    for _, _, p in slots:  # the same order on every rank
        if id(p) not in whole:
            whole[id(p)] = nn.Parameter(p.full_tensor(), requires_grad=True)

    def put_whole(*_: Any) -> None:
        for module, name, p in slots:
            module.register_parameter(name, whole[id(p)])

    put_whole()
    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    hooks = [unit.register_forward_hook(put_whole) for unit in units]  # after FSDP2's own reshard
    try:
        yield model
    finally:
        for hook in hooks:
            hook.remove()
        for module, name, p in slots:
            module.register_parameter(name, p)


def full_optimizer_state(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """``optimizer.state_dict()`` with every sharded state tensor gathered whole (collective)."""
    saved = optimizer.state_dict()
    saved["state"] = {
        i: {k: v.full_tensor() if isinstance(v, DTensor) else v for k, v in entry.items()}
        for i, entry in sorted(saved["state"].items())
    }
    return saved


def local_optimizer_state(saved: dict[str, Any], optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Inverse of :func:`full_optimizer_state`: each rank keeps its shard of every state tensor."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state = {
        i: {k: local_like(params[i], v) if _shaped_like(params[i], v) else v for k, v in entry.items()}
        for i, entry in saved["state"].items()
    }
    return {**saved, "state": state}


def _shaped_like(param: torch.Tensor, value: Any) -> bool:
    return isinstance(param, DTensor) and isinstance(value, torch.Tensor) and value.shape == param.shape
