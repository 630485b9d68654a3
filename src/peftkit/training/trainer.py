"""A compact training loop: AdamW, warm-up + decay, accumulation, clipping, bf16 autocast,
gradient checkpointing, periodic evaluation, early stopping, exact resume and a metrics log.

Data order is a function of (seed, epoch) and every RNG, optimizer and scheduler state and the
model's buffers (a method's own state) are checkpointed, so a run killed at any point and resumed
from its last readable checkpoint ends with bit-identical weights (fp32, CPU). A run holds its output
folder (:mod:`.run_folder`); resume refuses a changed config except the fields :mod:`.resume` lists
as safe; metrics are appended whole (:mod:`.metrics`), checkpoints written atomically (:mod:`.state`).
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import ConfigError
from ..optimizers import create_loraplus_optimizer
from . import metrics
from . import state as ckpt
from .config import TrainConfig
from .resume import examples_digest, resume_changes
from .run_folder import claim_run_folder
from .schedule import make_scheduler

LossFn = Callable[[nn.Module, dict], torch.Tensor]
EvalFn = Callable[[nn.Module], dict[str, float]]


def default_loss(model: nn.Module, batch: dict) -> torch.Tensor:
    return model(**batch).loss


def lower_is_better(metric: str) -> bool:
    return "loss" in metric or "perplexity" in metric


@dataclass
class TrainResult:
    steps: int
    wall_s: float
    history: list[dict] = field(default_factory=list)
    best: dict | None = None
    stopped_early: bool = False


class Trainer:
    """Train ``model``'s trainable parameters on ``examples`` (lists of token ids, see peftkit.data)."""

    def __init__(
        self,
        model: nn.Module,
        examples: Sequence[dict],
        collate: Callable[[list[dict]], dict],
        config: TrainConfig,
        output_dir: str | Path,
        eval_fn: EvalFn | None = None,
        loss_fn: LossFn = default_loss,
        show_progress: bool = True,
    ):
        if not examples:
            raise ValueError("no training examples: check the data file and the task's column names")
        self.model, self.examples, self.collate, self.cfg = model, examples, collate, config
        self.out = Path(output_dir)
        self.eval_fn, self.loss_fn, self.show_progress = eval_fn, loss_fn, show_progress
        self.params = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("the model has no trainable parameters")
        n_batches = math.ceil(len(examples) / config.batch_size)
        self.steps_per_epoch = math.ceil(n_batches / config.grad_accum)
        self.total = config.max_steps or max(1, math.ceil(config.epochs * self.steps_per_epoch))
        warmup = config.warmup_steps or int(config.warmup_ratio * self.total)
        self.optimizer = make_optimizer(model, self.params, config)
        self.scheduler = make_scheduler(self.optimizer, self.total, warmup, config.schedule)
        self.best: dict | None = None
        self.bad_evals = 0
        self.rows_written = 0  # rows in metrics.jsonl, saved with each checkpoint
        self._data_digest: str | None = None

    # ---- data order ----------------------------------------------------------------------------
    def _micro_batches(self, step: int) -> list[list[dict]]:
        """The micro-batches of optimizer step ``step``: a pure function of (seed, epoch, step)."""
        epoch, within = divmod(step, self.steps_per_epoch)
        g = torch.Generator().manual_seed(self.cfg.seed * 100_003 + epoch)
        order = torch.randperm(len(self.examples), generator=g).tolist()
        bs, acc = self.cfg.batch_size, self.cfg.grad_accum
        starts = range((within * acc) * bs, min((within + 1) * acc * bs, len(order)), bs)
        return [[self.examples[i] for i in order[s : s + bs]] for s in starts]

    # ---- one step --------------------------------------------------------------------------------
    def _step(self, step: int) -> tuple[float, int]:
        self.model.train()
        micro = self._micro_batches(step)
        total_loss, tokens = 0.0, 0
        for examples in micro:
            batch = self.collate(examples)
            with (
                torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.cfg.bf16),
                _own_loss_terms(self.model),
            ):
                loss = self.loss_fn(self.model, batch) + _regularizer(self.model)
            (loss / len(micro)).backward()
            total_loss += loss.item() / len(micro)
            tokens += int(batch["attention_mask"].sum()) if "attention_mask" in batch else len(examples)
        if self.cfg.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        _after_step(self.model, step)  # before zero_grad: AdaLoRA's importance reads the gradients
        self.optimizer.zero_grad(set_to_none=True)
        return total_loss, tokens

    # ---- loop --------------------------------------------------------------------------------------
    def train(self, resume: bool = False, overwrite: bool = False) -> TrainResult:
        """Train from step 0, or from the last readable checkpoint (``resume``). A fresh run into a
        folder that holds another run is refused unless ``overwrite`` (see :mod:`.run_folder`)."""
        with claim_run_folder(self.out, resume=resume, overwrite=overwrite):
            return self._train(resume)

    def _train(self, resume: bool) -> TrainResult:
        torch.manual_seed(self.cfg.seed)
        saved = self._resume() if resume else None
        step = saved["step"] if saved else 0
        if self.cfg.gradient_checkpointing:
            _enable_checkpointing(self.model)
        _before_training(self.model, self.total)
        self._start_metrics(saved)
        start, stopped = time.perf_counter(), False
        window: list[tuple[float, int]] = []
        window_start = time.perf_counter()
        bar = tqdm(total=self.total, initial=step, disable=not self.show_progress, desc="train", unit="step")
        while step < self.total and not stopped:
            loss, tokens = self._step(step)
            step += 1
            window.append((loss, tokens))
            bar.update(1)
            if step % self.cfg.log_every == 0 or step == self.total:
                elapsed = time.perf_counter() - window_start
                row = self._log_train(step, window, elapsed)
                bar.set_postfix(
                    loss=f"{row['train_loss']:.4f}", lr=f"{row['lr']:.2e}", tok_s=f"{row['tokens_per_s']:.0f}"
                )
                window, window_start = [], time.perf_counter()
            if self.eval_fn and self.cfg.eval_every and step % self.cfg.eval_every == 0 and step < self.total:
                stopped = self._evaluate(step)
            if self.cfg.save_every and step % self.cfg.save_every == 0:
                self._save(step)
        bar.close()
        if self.eval_fn and not stopped:
            self._evaluate(step)
        return TrainResult(step, time.perf_counter() - start, self.history(), self.best, stopped)

    def _log_train(self, step: int, window: list[tuple[float, int]], elapsed: float) -> dict:
        row = {
            "step": step,
            "epoch": round(step / self.steps_per_epoch, 4),
            "train_loss": sum(loss for loss, _ in window) / len(window),
            "lr": self.scheduler.get_last_lr()[0],
            "tokens_per_s": sum(t for _, t in window) / max(elapsed, 1e-9),
        }
        self._append(row)
        return row

    def _evaluate(self, step: int) -> bool:
        """Evaluate, log, track the best; return True when early stopping triggers."""
        self.model.eval()
        with torch.no_grad(), _own_loss_terms(self.model):
            metrics = self.eval_fn(self.model)
        self.model.train()
        self._append({"step": step, **metrics})
        key = self.cfg.metric_for_best
        if key not in metrics:
            raise ValueError(f"metric_for_best={key!r} is not among the eval metrics {sorted(metrics)}")
        value = metrics[key]
        if self.best is None or (value < self.best[key] if lower_is_better(key) else value > self.best[key]):
            self.best, self.bad_evals = {"step": step, **metrics}, 0
            return False
        self.bad_evals += 1
        return bool(self.cfg.early_stopping_patience) and self.bad_evals >= self.cfg.early_stopping_patience

    # ---- persistence ---------------------------------------------------------------------------------
    @property
    def metrics_path(self) -> Path:
        return self.out / "metrics.jsonl"

    def _append(self, row: dict) -> None:
        metrics.append_row(self.metrics_path, row)
        self.rows_written += 1

    def history(self) -> list[dict]:
        return metrics.read_rows(self.metrics_path)[0]

    def _start_metrics(self, saved: dict | None) -> None:
        """A fresh run starts an empty log; a resumed one keeps exactly the rows written before its
        checkpoint (later rows are logged again), as a new file renamed over the old one."""
        if saved is None:
            metrics.write_rows(self.metrics_path, [])
            self.rows_written = 0
            return
        rows, partial = metrics.read_rows(self.metrics_path)
        keep = saved.get("metrics_rows")
        kept = rows[:keep] if keep is not None else [r for r in rows if r["step"] <= saved["step"]]
        if keep is not None and len(rows) < keep:
            warnings.warn(
                f"{self.metrics_path} has {len(rows)} rows, the checkpoint was written after {keep}",
                stacklevel=2,
            )
        if partial or len(kept) != len(rows):
            metrics.write_rows(self.metrics_path, kept)
        self.rows_written = len(kept)

    def _save(self, step: int) -> None:
        extra = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "best": self.best,
            "bad_evals": self.bad_evals,
            "total": self.total,
            "config": self.cfg.to_dict(),
            "data": self.data_digest,
            "metrics_rows": self.rows_written,
        }
        ckpt.save_checkpoint(self.out / "checkpoints", step, self.model, extra, self.cfg.keep_checkpoints)

    @property
    def data_digest(self) -> str:
        if self._data_digest is None:
            self._data_digest = examples_digest(self.examples)
        return self._data_digest

    def _resume(self) -> dict:
        """Restore the newest readable checkpoint after checking that this run may continue it."""
        checkpoint = ckpt.read_latest(self.out / "checkpoints")
        self._check_resumable(checkpoint)
        saved = ckpt.apply_checkpoint(checkpoint, self.model)
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.best, self.bad_evals = saved["best"], saved["bad_evals"]
        return saved

    def _check_resumable(self, checkpoint: ckpt.Checkpoint) -> None:
        saved, where = checkpoint.state, f"checkpoint {checkpoint.path}"
        if "config" in saved:  # written by peftkit >= the version that checks it
            # a field added since the checkpoint was written reads as its default (it was not set)
            written = {**type(self.cfg)().to_dict(), **saved["config"]}
            resume_changes({"train": written}, {"train": self.cfg.to_dict()}, where)
        if saved.get("data", self.data_digest) != self.data_digest:
            raise ConfigError(
                "--resume",
                f"the training examples differ from those of {where} (a changed data file, data.limit, "
                "tokenizer or task.max_length); resume with the same data",
            )
        if saved["total"] != self.total and not _length_free(self.cfg):
            raise ConfigError(
                "--resume",
                f"{where} was for {saved['total']} steps, this run has {self.total}; resume with the "
                "same data, batch size and schedule",
            )
        if saved["step"] > self.total:
            raise ConfigError(
                "--resume", f"{where} is at step {saved['step']}, past this run's {self.total} steps"
            )


def _length_free(cfg: TrainConfig) -> bool:
    """Whether the learning-rate schedule is the same whatever the run's length."""
    return cfg.schedule == "constant" and not cfg.warmup_ratio


def _own_loss_terms(model: nn.Module) -> contextlib.AbstractContextManager:
    """This trainer adds the methods' loss terms itself (:func:`_regularizer`, whatever ``loss_fn`` computes);
    the forward's own (peft's AdaLoRA penalty in the model's loss) is switched off so none counts twice."""
    off = getattr(model, "forward_loss_off", None)
    return off() if callable(off) else contextlib.nullcontext()


def _regularizer(model: nn.Module) -> torch.Tensor | float:
    """A method's extra loss term (e.g. AdaLoRA's orthogonality penalty), when it has one."""
    fn = getattr(model, "regularization_loss", None)
    return fn() if callable(fn) else 0.0


def _before_training(model: nn.Module, total_steps: int) -> None:
    """A method's start-of-training hook (e.g. AdaLoRA's budget needs the number of steps)."""
    fn = getattr(model, "before_training", None)
    if callable(fn):
        fn(total_steps)


def _after_step(model: nn.Module, step: int) -> None:
    """A method's per-step hook (e.g. AdaLoRA's rank allocation), when it has one."""
    fn = getattr(model, "after_optimizer_step", None)
    if callable(fn):
        fn(step)


def _enable_checkpointing(model: nn.Module) -> None:
    base = getattr(model, "base_model", model)
    if not hasattr(base, "gradient_checkpointing_enable"):
        raise ValueError(f"{type(base).__name__} does not support gradient checkpointing")
    base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def make_optimizer(
    model: nn.Module, params: list[nn.Parameter], config: TrainConfig
) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters; with ``loraplus_lr_ratio`` in LoRA+'s groups (B factors faster,
    LoRA on embeddings at ``lr``, biases and LayerNorms without weight decay)."""
    if not config.loraplus_lr_ratio:
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    return create_loraplus_optimizer(
        model,
        torch.optim.AdamW,
        lr=config.lr,
        loraplus_lr_ratio=config.loraplus_lr_ratio,
        loraplus_weight_decay=config.weight_decay,
        loraplus_lr_embedding=config.lr,
    )
