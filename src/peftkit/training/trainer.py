"""A compact training loop: AdamW, warm-up + decay, accumulation, clipping, bf16 autocast,
gradient checkpointing, periodic evaluation, early stopping, exact resume and a metrics log.

Data order is a function of (seed, epoch) and every RNG, optimizer and scheduler state and the
model's buffers (a method's own state) are checkpointed, so a run killed at any point and resumed
from its last readable checkpoint ends with bit-identical weights (fp32, CPU). A run holds its output
folder (:mod:`.run_folder`); resume refuses a changed config except the fields :mod:`.resume` lists
as safe; metrics are appended whole (:mod:`.metrics`), checkpoints written atomically (:mod:`.state`).

Started by ``torchrun`` with several processes (:mod:`.distributed`), each rank trains on its share
of every micro-batch: the data order is that of one process with a ``batch_size x processes``
micro-batch, rank ``r`` takes its ``r``-th slice of ``batch_size`` examples, and DDP or FSDP2
(:mod:`.sharding`, ``train.distributed``) average the gradients, each rank's loss weighted by its
share of the examples (a rank left without any in a short last batch runs one with weight 0, so
that every rank makes the same collective calls). Rank 0 alone holds the folder, logs, evaluates
into the log and writes checkpoints; a checkpoint holds every rank's RNG state and resuming
restores each rank's own.
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

from ..data.packing import batch_tokens
from ..errors import ConfigError
from ..optimizers import create_loraplus_optimizer
from ..precision import warn_if_slow_bf16
from . import distributed, metrics, sharding, speedups
from . import state as ckpt
from .config import TrainConfig, resolve_lr, resolve_warmup
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
    """Train ``model``'s trainable parameters on ``examples`` (lists of token ids, see peftkit.data).

    ``weigh(examples)``: how much a list of examples counts in ``loss_fn``'s mean, which weighs each
    rank's loss in a run on several processes: their number (the default), or the number of loss
    tokens for a loss averaged over tokens (then two ranks of ``b`` examples match one process of
    ``2b`` whatever the lengths)."""

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
        weigh: Callable[[list[dict]], float] = len,
    ):
        if not examples:
            raise ValueError("no training examples: check the data file and the task's column names")
        # train.lr / train.warmup_ratio unset: the adapter method's defaults
        config = resolve_warmup(resolve_lr(config, model), model)
        self.model, self.examples, self.collate, self.cfg = model, examples, collate, config
        self.out = Path(output_dir)
        self.eval_fn, self.weigh = eval_fn, weigh
        self.world = distributed.current()
        self.show_progress = show_progress and self.world.main
        # issue 19: the chunked loss, fp32 trainable tensors beside a bf16 base, torch.compile
        self.loss_fn = speedups.training_loss(loss_fn, config, default_loss, self.world.active)
        speedups.check_precision(model, config.precision)
        if config.bf16:  # autocast to bf16 on hardware that emulates it would crawl: say so
            warn_if_slow_bf16("train.bf16 (autocast)", self.world.device.type)
        if config.compile:
            speedups.compile_model(model)
        if not any(p.requires_grad for p in model.parameters()):
            raise ValueError("the model has no trainable parameters")
        n_batches = math.ceil(len(examples) / (config.batch_size * self.world.size))
        self.steps_per_epoch = math.ceil(n_batches / config.grad_accum)
        self.engine = self._wrap() if self.world.active else model  # what forward and backward run through
        self.params = [p for p in model.parameters() if p.requires_grad]  # FSDP2 shards, when sharded
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
        """The (global) micro-batches of optimizer step ``step``: a pure function of (seed, epoch, step)."""
        epoch, within = divmod(step, self.steps_per_epoch)
        g = torch.Generator().manual_seed(self.cfg.seed * 100_003 + epoch)
        order = torch.randperm(len(self.examples), generator=g).tolist()
        bs, acc = self.cfg.batch_size * self.world.size, self.cfg.grad_accum
        starts = range((within * acc) * bs, min((within + 1) * acc * bs, len(order)), bs)
        return [[self.examples[i] for i in order[s : s + bs]] for s in starts]

    def _share(self, examples: list[dict]) -> tuple[list[dict], float]:
        """This rank's slice of a global micro-batch and the weight of its mean loss: the rank's share
        of the micro-batch (by ``weigh``) times the number of ranks, which the gradient averaging
        divides by again. A rank left without examples runs the first one with weight 0 (its
        collectives stay in step)."""
        if not self.world.active:
            return examples, 1.0
        bs, rank = self.cfg.batch_size, self.world.rank
        mine = examples[rank * bs : (rank + 1) * bs]
        if not mine:
            return examples[:1], 0.0
        whole = self.weigh(examples)
        share = self.weigh(mine) / whole if whole else len(mine) / len(examples)
        return mine, self.world.size * share

    def _batch(self, examples: list[dict]) -> dict:
        return distributed.to_device(self.collate(examples), self.world.device)

    # ---- several processes -----------------------------------------------------------------------------
    def _wrap(self) -> nn.Module:
        """DDP or FSDP2 around the model (``train.distributed``); FSDP2 watches one forward pass of
        this rank's first batch to find the adapter modules to shard apart from the frozen weights."""
        first, _ = self._share(self._micro_batches(0)[0])

        def trial() -> torch.Tensor:
            return self.loss_fn(self.model, self._batch(first))

        return sharding.wrap(self.model, self.cfg.distributed, self.world, trial)

    def _gradient_sync(self, last: bool):
        """Gradients are averaged over the ranks once per step, after its last micro-batch."""
        return contextlib.nullcontext() if last or not self.world.active else sharding.no_sync(self.engine)

    def _check_same_data(self) -> None:
        digests = distributed.gather(self.data_digest, self.world)
        other = next((r for r, d in enumerate(digests) if d != digests[0]), None)
        if other is not None:
            raise ConfigError(
                "data",
                f"rank {other} reads other training examples than rank 0: every machine of the run needs "
                "the same data files (data.train, data.eval), tokenizer and task settings",
            )

    # ---- one step --------------------------------------------------------------------------------
    def _objective(self, batch: dict, weight: float) -> torch.Tensor:
        loss = self.loss_fn(self.engine, batch)
        if weight != 1.0:
            loss = loss * weight
        return loss + _regularizer(self.model)

    def _step(self, step: int) -> tuple[float, int]:
        self.engine.train()
        micro = self._micro_batches(step)
        total_loss, tokens = 0.0, 0
        for i, examples in enumerate(micro):
            mine, weight = self._share(examples)
            batch = self._batch(mine)
            with self._gradient_sync(last=i + 1 == len(micro)), sharding.quiet_views(self.engine):
                with (
                    torch.autocast(self.world.device.type, dtype=torch.bfloat16, enabled=self.cfg.bf16),
                    _own_loss_terms(self.model),
                ):
                    loss = self._objective(batch, weight)
                (loss / len(micro)).backward()
            total_loss += loss.item() / len(micro)
            tokens += batch_tokens(batch, len(mine)) if weight else 0
        if self.world.active:  # each rank logged its weighted part of the mean: their sum is the mean
            total_loss, tokens = distributed.total([total_loss / self.world.size, tokens], self.world)
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
        claim = lambda: claim_run_folder(self.out, resume=resume, overwrite=overwrite)  # noqa: E731
        with distributed.held_on_main(claim, self.world):
            try:
                return self._train(resume)
            except BaseException as err:
                if self.world.active and distributed.peer_failure(err):
                    raise self._lost() from err
                raise

    def _lost(self) -> distributed.RankLost:
        root = self.out / "checkpoints"
        done = ckpt.complete_checkpoints(root) if self.world.main else []
        newest = done[-1].name if done else None
        return distributed.RankLost(distributed.lost_message(self.world, str(root), newest))

    def _train(self, resume: bool) -> TrainResult:
        torch.manual_seed(self.cfg.seed + self.world.rank)  # rank-own dropout draws, rank 0 as one process
        if self.world.active:
            self._check_same_data()
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
            metrics = distributed.from_main(self.eval_fn(self.model), self.world)  # all ranks stop alike
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
        if self.world.main:
            metrics.append_row(self.metrics_path, row)
        self.rows_written += 1

    def history(self) -> list[dict]:
        """The rows of metrics.jsonl (rank 0 writes it; other ranks get none)."""
        return metrics.read_rows(self.metrics_path)[0] if self.world.main else []

    def _start_metrics(self, saved: dict | None) -> None:
        """A fresh run starts an empty log; a resumed one keeps exactly the rows written before its
        checkpoint (later rows are logged again), as a new file renamed over the old one."""
        self.rows_written = distributed.on_main(lambda: self._reset_metrics(saved), self.world)

    def _reset_metrics(self, saved: dict | None) -> int:
        if saved is None:
            metrics.write_rows(self.metrics_path, [])
            return 0
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
        return len(kept)

    def _save(self, step: int) -> None:
        """Rank 0 writes the checkpoint; under FSDP2 every rank first helps gather the adapter and
        its optimizer state whole (the frozen base is never gathered)."""
        extra = {
            "optimizer": sharding.full_optimizer_state(self.optimizer),
            "scheduler": self.scheduler.state_dict(),
            "best": self.best,
            "bad_evals": self.bad_evals,
            "total": self.total,
            "config": self.cfg.to_dict(),
            "data": self.data_digest,
            "metrics_rows": self.rows_written,
            "base_dtype": str(speedups.frozen_dtype(self.model)),  # what train.precision resolved to
        }
        if self.world.active:
            extra |= {"world_size": self.world.size, "rank_rng": distributed.gather(_rank_rng(), self.world)}
        root, keep = self.out / "checkpoints", self.cfg.keep_checkpoints
        with sharding.gathered(self.model):
            distributed.on_main(lambda: ckpt.save_checkpoint(root, step, self.model, extra, keep), self.world)

    @property
    def data_digest(self) -> str:
        if self._data_digest is None:
            self._data_digest = examples_digest(self.examples)
        return self._data_digest

    def _resume(self) -> dict:
        """Restore the newest readable checkpoint after checking that this run may continue it (rank 0
        reads and checks it, every rank restores it, each its own RNG state)."""
        checkpoint = distributed.on_main(self._read_checkpoint, self.world)
        saved = ckpt.apply_checkpoint(checkpoint, self.model)
        self.optimizer.load_state_dict(sharding.local_optimizer_state(saved["optimizer"], self.optimizer))
        self.scheduler.load_state_dict(saved["scheduler"])
        self.best, self.bad_evals = saved["best"], saved["bad_evals"]
        if self.world.active:
            _set_rank_rng(saved["rank_rng"][self.world.rank])
        return saved

    def _read_checkpoint(self) -> ckpt.Checkpoint:
        checkpoint = ckpt.read_latest(self.out / "checkpoints")
        self._check_resumable(checkpoint)
        return checkpoint

    def _check_resumable(self, checkpoint: ckpt.Checkpoint) -> None:
        saved, where = checkpoint.state, f"checkpoint {checkpoint.path}"
        if "config" in saved:  # written by peftkit >= the version that checks it
            written = type(self.cfg).as_written(saved["config"])  # fields added since the checkpoint
            resume_changes({"train": written}, {"train": self.cfg.to_dict()}, where)
        if saved.get("world_size", 1) != self.world.size:
            raise ConfigError(
                "--resume",
                f"{where} was written by a run on {saved.get('world_size', 1)} process(es), this one has "
                f"{self.world.size}: the global batch and each rank's data depend on it; resume with as many "
                "(torchrun --nnodes x --nproc-per-node)",
            )
        speedups.check_resumed_precision(saved.get("base_dtype"), self.model, where)
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


def _rank_rng() -> dict:
    """This rank's RNG states (its dropout draws differ from the other ranks')."""
    state = ckpt.rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rank_rng(state: dict) -> None:
    ckpt.set_rng_state(state)
    if "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"])


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
