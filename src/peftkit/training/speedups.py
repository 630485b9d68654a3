"""What the trainer switches on to train fast and lean (issue 19), each behind a ``TrainConfig`` field:

* ``lm_loss``: the chunked causal-LM loss (:mod:`peftkit.training.chunked_loss`);
* ``precision``: a bf16 base with fp32 trainable tensors (:mod:`peftkit.precision`);
* ``compile``: ``torch.compile`` of the model's forward and backward;
* ``packing`` is the collator's business (:mod:`peftkit.data.packing`, chosen by the pipeline).

The fused LoRA layer (:mod:`peftkit.methods.lora.fused`) needs no switch here: LoRA layers take it
by themselves where it applies.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..errors import ConfigError
from ..precision import HALF, keep_trainable_fp32
from .chunked_loss import CausalLMLoss
from .config import TrainConfig

LossFn = Callable[[nn.Module, dict], torch.Tensor]


def training_loss(loss_fn: LossFn, config: TrainConfig, default: LossFn, several: bool = False) -> LossFn:
    """The loss the trainer calls: the model's own loss (``default``) becomes :class:`CausalLMLoss`
    in ``config.lm_loss`` mode; a task's own loss function is kept (and ``chunked`` refused for it).
    In a run over ``several`` processes the model runs inside DDP or FSDP2 (whose head is sharded):
    ``auto`` is the plain loss there and ``chunked`` is refused."""
    if config.lm_loss == "chunked" and several:
        raise ConfigError(
            "train.lm_loss", "chunked is not supported in a run over several processes; use auto or plain"
        )
    if loss_fn is default:
        return CausalLMLoss("plain" if several else config.lm_loss)
    if config.lm_loss == "chunked":
        raise ConfigError(
            "train.lm_loss", "chunked applies to the causal-LM loss (sft); this task computes its own loss"
        )
    return loss_fn


def frozen_dtype(model: nn.Module) -> torch.dtype | None:
    """The dtype most frozen floating-point weights have (None when nothing is frozen)."""
    counts: dict[torch.dtype, int] = {}
    for p in model.parameters():
        if not p.requires_grad and p.is_floating_point():
            counts[p.dtype] = counts.get(p.dtype, 0) + p.numel()
    return max(counts, key=counts.get) if counts else None


def check_precision(model: nn.Module, precision: str) -> list[str]:
    """Refuse a model loaded in another precision than ``precision`` asks for (``auto`` takes what
    it is given), then make every trainable tensor fp32 (:func:`keep_trainable_fp32`); returns the
    modules turned into fp32 islands."""
    dtype = frozen_dtype(model)
    wanted = {"bf16": HALF, "fp32": (torch.float32, torch.float64)}.get(precision)
    if wanted and dtype is not None and dtype not in wanted:
        raise ConfigError(
            "train.precision",
            f"{precision} was asked for but the base is loaded in {dtype}; load it with "
            f"peftkit.models.load_model(..., dtype=peftkit.precision.base_dtype({precision!r}))",
        )
    return keep_trainable_fp32(model)


def check_resumed_precision(saved: str | None, model: nn.Module, where: str) -> None:
    """Refuse to resume a checkpoint whose frozen base had another dtype (``auto`` decides per machine:
    a run continued elsewhere could get the other one). ``saved`` None: written before it was kept."""
    now = str(frozen_dtype(model))
    if saved is not None and saved != now:
        raise ConfigError(
            "--resume",
            f"{where} trained with a {saved} base, this run loads it in {now} (train.precision 'auto' "
            "detects bf16 per machine); set train.precision to the checkpoint's (bf16 or fp32)",
        )


def repeated_blocks(model: nn.Module) -> list[nn.Module]:
    """The blocks of the longest ``nn.ModuleList`` whose entries share one class (a transformer's
    layers), or none."""
    lists = [
        m
        for m in model.modules()
        if isinstance(m, nn.ModuleList) and len(m) > 1 and len({type(b) for b in m}) == 1
    ]
    return list(max(lists, key=len)) if lists else []


def compile_model(model: nn.Module) -> nn.Module:
    """``torch.compile`` in place, block by block: each transformer layer is compiled and, the layers
    running the same code, compiled once for all ("regional compilation"; the whole model when it has
    no repeated blocks). The module stays the same object, so hooks, saving and the chunked loss
    work as before; the first steps are slow."""
    blocks = repeated_blocks(model)
    for block in blocks or [model]:
        block.compile()
    return model
