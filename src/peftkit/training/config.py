"""Training hyper-parameters, checked when built."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from functools import partial
from typing import Any

from ..config import check_choice, check_fields, check_positive, check_positive_int, check_range
from ..data.packing import PACKING
from ..errors import ConfigError
from ..precision import PRECISIONS
from .chunked_loss import LM_LOSSES

SCHEDULES = ("linear", "cosine", "constant")
# issue 19's levers as runs trained before the fields existed: a saved config without them reads so
BEFORE_LEVERS = {"precision": "fp32", "lm_loss": "plain", "packing": "padded"}
DISTRIBUTED = ("ddp", "fsdp")


@dataclass
class TrainConfig:
    """How to train.

    Args:
        lr: peak learning rate of AdamW; unset (None): the adapter method's default
            (its config's ``default_lr``, see :func:`resolve_lr`), 2e-4 where it has none.
        epochs: passes over the training data (ignored when ``max_steps`` is set).
        max_steps: optimizer steps to take; overrides ``epochs``.
        batch_size: examples per micro-batch on each process; one optimizer step sees
            ``batch_size x grad_accum x processes`` examples (the global batch).
        grad_accum: micro-batches per optimizer step.
        schedule: ``linear`` or ``cosine`` decay after warm-up, or ``constant``.
        warmup_steps / warmup_ratio: linear warm-up length (steps, or a fraction of all steps);
            both unset: the adapter method's ``default_warmup_ratio`` (0 for most methods; see
            :func:`resolve_warmup`).
        weight_decay: AdamW weight decay.
        loraplus_lr_ratio: LoRA+ (Hayou et al. 2024): the B factors (and one-dimensional adapter parameters,
            e.g. DoRA's magnitudes) learn at ``lr`` times this ratio (the paper suggests 16); 0: off.
        max_grad_norm: clip the global gradient norm (0 disables).
        bf16: run forward/backward under bf16 autocast.
        gradient_checkpointing: recompute activations in backward to save memory.
        seed: seeds data order, dropout and initialisation.
        eval_every: evaluate every N optimizer steps (0: only at the end).
        early_stopping_patience: stop after N evaluations without improvement (0: never).
        metric_for_best: eval metric that decides "improvement" and the best checkpoint.
        save_every: write a resumable checkpoint every N steps (0: never).
        keep_checkpoints: how many resumable checkpoints to keep.
        log_every: log train loss every N steps.
        precision: dtype of the frozen base: ``bf16`` or ``fp32``, or ``auto`` (bf16 where the
            hardware multiplies bf16 fast, measured; see :mod:`peftkit.precision`). What trains is
            fp32 in every case.
        lm_loss: the causal-LM loss: ``chunked`` (head and cross-entropy by chunks of tokens, never
            all the logits), ``plain`` (the model's own), or ``auto`` (chunked where the model
            allows it, checked against the plain loss on the first batch).
        packing: SFT batches ``packed`` (examples end to end, attention kept within each, no
            padding), ``padded``, or ``auto`` (packed where the model keeps examples apart).
        compile: ``torch.compile`` the model for training (off unless asked: see the README's
            performance notes).
        distributed: how a run started by ``torchrun`` with several processes splits the model:
            ``ddp`` (a whole copy per process, gradients averaged) or ``fsdp`` (FSDP2 shards the
            frozen base and the adapter over the processes). A single process trains the same way
            under either.
    """

    lr: float | None = None
    epochs: float = 1.0
    max_steps: int = 0
    batch_size: int = 8
    grad_accum: int = 1
    schedule: str = "linear"
    warmup_steps: int = 0
    warmup_ratio: float | None = None
    weight_decay: float = 0.0
    loraplus_lr_ratio: float = 0.0
    max_grad_norm: float = 1.0
    bf16: bool = False
    gradient_checkpointing: bool = False
    seed: int = 0
    eval_every: int = 0
    early_stopping_patience: int = 0
    metric_for_best: str = "eval_loss"
    save_every: int = 0
    keep_checkpoints: int = 2
    log_every: int = 10
    precision: str = "auto"
    lm_loss: str = "auto"
    packing: str = "auto"
    compile: bool = False
    distributed: str = "ddp"

    def __post_init__(self) -> None:
        check_fields(self)
        if self.lr is not None:
            check_positive("lr", self.lr)
        if self.epochs <= 0 and self.max_steps <= 0:
            raise ConfigError("epochs", "set epochs > 0 or max_steps > 0")
        check_positive_int("batch_size", self.batch_size)
        check_positive_int("grad_accum", self.grad_accum)
        check_choice("schedule", self.schedule, SCHEDULES)
        check_choice("distributed", self.distributed, DISTRIBUTED)
        if self.warmup_ratio is not None:
            check_range("warmup_ratio", self.warmup_ratio, 0.0, 1.0)
        for name in (
            "max_steps",
            "warmup_steps",
            "eval_every",
            "early_stopping_patience",
            "save_every",
            "seed",
        ):
            value = getattr(self, name)
            if value < 0:
                raise ConfigError(name, f"must be a non-negative integer, got {value!r}")
        check_positive_int("keep_checkpoints", self.keep_checkpoints)
        check_positive_int("log_every", self.log_every)
        if self.loraplus_lr_ratio < 0:
            raise ConfigError(
                "loraplus_lr_ratio", f"must be >= 0 (0: LoRA+ off), got {self.loraplus_lr_ratio!r}"
            )
        check_choice("precision", self.precision, PRECISIONS)
        check_choice("lm_loss", self.lm_loss, LM_LOSSES)
        check_choice("packing", self.packing, PACKING)
        if self.max_grad_norm < 0 or self.weight_decay < 0:
            raise ConfigError("max_grad_norm", "max_grad_norm and weight_decay must be >= 0")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def as_written(cls, saved: dict) -> dict:
        """A saved train section as the run that wrote it trained: a field added since reads as its
        default (it was not set), except issue 19's levers, which read as what runs did before them
        (:data:`BEFORE_LEVERS`: an fp32 base, the model's own loss, padded batches)."""
        return {**cls().to_dict(), **{k: v for k, v in BEFORE_LEVERS.items() if k not in saved}, **saved}

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


def resolve_lr(config: TrainConfig, model: Any) -> TrainConfig:
    """``config`` with ``lr`` set: as given, or (unset) the ``default_lr`` of the adapter the model
    trains (its active adapters' configs; :class:`~peftkit.config.PeftConfig`'s 2e-4 for a method
    without its own, or a model that is not peftkit's). Active adapters whose methods default
    to different rates are refused: one optimizer step takes one peak rate."""
    if config.lr is not None:
        return config
    return replace(config, lr=_method_default(model, "default_lr", "lr"))


def resolve_warmup(config: TrainConfig, model: Any) -> TrainConfig:
    """``config`` with ``warmup_ratio`` set: as given; 0 where ``warmup_steps`` is set; else the
    ``default_warmup_ratio`` of the adapter the model trains (0 for most methods), the same way as
    :func:`resolve_lr`."""
    method = partial(_method_default, model, "default_warmup_ratio", "warmup_ratio")
    return replace(config, warmup_ratio=_warmup(config, method))


def default_warmup_ratio(config: TrainConfig, adapter: Any) -> float:
    """The warm-up ratio a run of ``adapter`` (a PeftConfig) takes: ``config``'s, or the method's."""
    return _warmup(config, lambda: adapter.default_warmup_ratio)


def _warmup(config: TrainConfig, method_default: Callable[[], float]) -> float:
    if config.warmup_ratio is not None:
        return config.warmup_ratio
    return 0.0 if config.warmup_steps else method_default()


def _method_default(model: Any, attr: str, field: str) -> float:
    """The active adapters' methods' ``attr`` (PeftConfig's for a model that is not peftkit's);
    refused where they differ: one run takes one value of ``train.<field>``."""
    from ..config import PeftConfig

    configs = getattr(model, "peft_config", None)
    active = getattr(model, "active_adapters", None)  # a method on transformers' models: no adapters
    if not isinstance(configs, dict) or not isinstance(active, (list, tuple)):
        configs, active = {}, []
    values = {
        name: getattr(configs[name], attr, getattr(PeftConfig, attr)) for name in active if name in configs
    }
    if len(set(values.values())) > 1:
        what = "learning rates" if field == "lr" else f"values of {field}"
        raise ConfigError(
            field, f"the active adapters' methods default to different {what} ({values}); set train.{field}"
        )
    return next(iter(values.values()), getattr(PeftConfig, attr))
