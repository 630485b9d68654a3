"""Continuous batching: one thread owns the model; requests join and leave a running batch between steps.

Each :meth:`Scheduler.step`:

1. runs queued model changes (adapter load/unload) and drops the rows of cancelled requests;
2. admits waiting requests while the batch has room for all their choices: they are prefilled
   together (left-padded, each row with its own adapter), their first tokens picked, and their rows
   merged into the running batch (:class:`~peftkit.serve.batch.RunningBatch`);
3. feeds every running row its last token (one forward for all rows, whatever their adapters and
   methods), picks each row's next token with its own request's decoding options, and retires the
   rows that finished.

So a short request never waits for a long one to finish: it joins at the next step and leaves as
soon as it is done. Beam and contrastive search re-select or repeat rows at every step, which does
not fit a shared batch: such a request runs alone, with the engine's own loop, when it is admitted
(the running rows pause meanwhile).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager

import torch

from ..decoding import ModelStepper
from ..decoding import generate as engine_generate
from ..decoding.processors import apply_penalties
from ..decoding.search import pick
from ..model import PeftModel
from ..rows import BASE_ROW
from .adapters import AdapterTable
from .batch import RunningBatch, check_cache_layout, row_slots
from .jobs import Choice, Failed, Job
from .metrics import Metrics
from .protocol import ApiError

log = logging.getLogger("peftkit.serve")
Row = tuple[Job, Choice]


class Cancelled(Exception):
    """Raised inside a solo run whose client went away."""


class Scheduler:
    """Decodes submitted :class:`Job` s; ``max_batch`` rows at most, ``max_queue`` jobs waiting."""

    def __init__(self, table: AdapterTable, max_batch: int = 32, max_queue: int = 256, metrics=None):
        self.table, self.max_batch, self.max_queue = table, max_batch, max_queue
        self.metrics = metrics or Metrics()
        self.waiting: deque[Job] = deque()
        self.commands: deque[tuple[Callable[[], object], Future]] = deque()
        self.wake = threading.Condition()
        self.running: RunningBatch | None = None
        self.rows: list[Row] = []  # row i of the running batch
        self.thread: threading.Thread | None = None
        self.stopping = threading.Event()

    # ---- from any thread ------------------------------------------------------------------------
    def submit(self, job: Job) -> None:
        """Queue ``job``; a full queue is refused (429). ``job.adapter`` must be acquired already."""
        with self.wake:
            if len(self.waiting) >= self.max_queue:
                raise ApiError(
                    429,
                    f"the server's queue is full ({self.max_queue} waiting); retry later",
                    code="rate_limit_exceeded",
                )
            self.waiting.append(job)
            self.metrics.gauge(self.metrics.queue, len(self.waiting))
            self.wake.notify()

    def call(self, fn: Callable[[], object]) -> Future:
        """Run ``fn`` on the scheduler thread between two steps (model changes)."""
        future: Future = Future()
        with self.wake:
            self.commands.append((fn, future))
            self.wake.notify()
        return future

    def nudge(self) -> None:
        with self.wake:
            self.wake.notify()

    def start(self) -> None:
        self.thread = threading.Thread(target=self._loop, name="peftkit-scheduler", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.nudge()
        if self.thread is not None:
            self.thread.join(timeout=30)

    def _loop(self) -> None:
        while not self.stopping.is_set():
            if not self.step():
                with self.wake:
                    if not (self.waiting or self.commands or self.stopping.is_set()):
                        self.wake.wait(timeout=0.5)

    # ---- the scheduler thread ---------------------------------------------------------------------
    def step(self) -> bool:
        """One round (see the module docstring); False when there was nothing to do."""
        busy = self._run_commands()
        self._drop_cancelled()
        solo, joining = self._admit()
        with torch.no_grad():
            for job in solo:
                self._run_solo(job)
            if joining:
                self._join(joining)
            if self.running is not None:
                self._decode()
        self.metrics.gauge(self.metrics.running, len(self.rows))
        return busy or bool(solo or joining or self.rows)

    def _run_commands(self) -> bool:
        with self.wake:
            commands, self.commands = list(self.commands), deque()
        for fn, future in commands:
            try:
                future.set_result(fn())
            except Exception as err:  # handed to the caller, who answers the client
                future.set_exception(err)
        return bool(commands)

    def _admit(self) -> tuple[list[Job], list[Job]]:
        """Waiting jobs that start now: at most one solo job, and the shared ones that fit."""
        solo, joining, free = [], [], self.max_batch - len(self.rows)
        with self.wake:
            while self.waiting:
                job = self.waiting[0]
                if job.cancelled:
                    self.waiting.popleft()
                    self._end(job)
                elif job.solo and not solo and not joining:
                    solo.append(self.waiting.popleft())
                elif not job.solo and job.n <= free:
                    free -= job.n
                    joining.append(self.waiting.popleft())
                else:
                    break  # first come, first served: nobody overtakes the head of the queue
            self.metrics.gauge(self.metrics.queue, len(self.waiting))
        return solo, joining

    def _forward_kwargs(self, names: list[str]) -> dict:
        return {"adapter_names": names} if hasattr(self.table.model, "prompt_encoder") else {}

    def _join(self, jobs: list[Job]) -> None:
        """Prefill ``jobs`` together, pick their first tokens, merge their live rows into the batch."""
        rows = [(job, choice) for job in jobs for choice in job.choices]
        names = [job.adapter for job, _ in rows]
        prompts = [job.prompt[0] for job, _ in rows]
        width = max(len(p) for p in prompts)
        pad = self.table.tokenizer.pad_token_id or 0
        ids = torch.stack([torch.cat([p.new_full((width - len(p),), pad), p]) for p in prompts])  # (B, L)
        mask = torch.stack([torch.cat([p.new_zeros(width - len(p)), torch.ones_like(p)]) for p in prompts])
        try:
            stepper = ModelStepper(self.table.model, **self._forward_kwargs(names))
            logits = stepper.prefill(ids, mask).logits  # (B, V)
            if not stepper.cached:
                raise RuntimeError("the model returned no KV cache")
            check_cache_layout(stepper.cache)
            batch = RunningBatch(stepper, names, [row_slots(self.table.model, n) for n in names])
        except Exception as err:
            self._fail(jobs, err)
            return
        for job in jobs:
            self.metrics.count(self.metrics.prompt_tokens, job.prompt.shape[1], model=self._label(job))
        self._pick(rows, logits)
        live = [i for i, (_, c) in enumerate(rows) if c.finish is None]
        self._finish_jobs(jobs)
        if not live:
            return
        batch.keep(live)
        if self.running is None:
            self.running, self.rows = batch, [rows[i] for i in live]
        else:
            self.running.merge(batch)
            self.rows += [rows[i] for i in live]

    def _decode(self) -> None:
        """One step for every running row; retire the rows that finished."""
        last = torch.tensor([c.tokens[-1] for _, c in self.rows], dtype=torch.long)
        self.metrics.count(self.metrics.batch, len(self.rows))
        try:
            logits = self.running.step(self.table.model, last)
        except Exception as err:
            jobs = list(dict.fromkeys(job for job, _ in self.rows))
            self.running, self.rows = None, []
            self._fail(jobs, err)
            return
        self._pick(self.rows, logits)
        self._finish_jobs(list(dict.fromkeys(job for job, _ in self.rows)))
        self._retire(lambda job, choice: choice.finish is None)  # cancelled rows go at the next step

    def _pick(self, rows: list[Row], logits: torch.Tensor) -> None:
        """Each job's rows get their next tokens from its own decoding options (penalties, warpers)."""
        by_job: dict[Job, list[int]] = {}
        for i, (job, _) in enumerate(rows):
            by_job.setdefault(job, []).append(i)
        for job, index in by_job.items():
            choices = [rows[i][1] for i in index]
            seqs = job.sequences(choices)  # (k, L + t)
            step = len(choices[0].tokens)
            scores = apply_penalties(
                logits[index], seqs, torch.ones_like(seqs, dtype=torch.bool), step, job.config
            )
            if job.config.strategy == "greedy":
                tokens = scores.argmax(dim=-1).tolist()
            else:  # each row draws from its own generator: independent of the batch it shares
                tokens = [
                    int(pick(scores[k : k + 1], job.config, c.generator)) for k, c in enumerate(choices)
                ]
            for choice, token in zip(choices, tokens, strict=True):
                gap = time.monotonic() - choice.last_time
                had_tokens = bool(choice.tokens)
                job.append(choice, int(token), self.table.decoder)
                self._observe_token(job, gap if had_tokens else None)

    def _observe_token(self, job: Job, gap: float | None) -> None:
        self.metrics.count(self.metrics.generation_tokens, model=self._label(job))
        if gap is not None:
            self.metrics.count(self.metrics.per_token, gap)

    def _label(self, job: Job) -> str:
        return self.table.base_name if job.adapter == BASE_ROW else job.adapter

    def _retire(self, keep: Callable[[Job, Choice], bool]) -> None:
        live = [i for i, (job, choice) in enumerate(self.rows) if keep(job, choice)]
        if len(live) == len(self.rows):
            return
        if not live:
            self.running, self.rows = None, []
            return
        self.running.keep(live)
        self.rows = [self.rows[i] for i in live]

    def _drop_cancelled(self) -> None:
        cancelled = list(dict.fromkeys(job for job, _ in self.rows if job.cancelled))
        if cancelled:
            self._retire(lambda job, choice: not job.cancelled)
            for job in cancelled:
                self._end(job)

    def _finish_jobs(self, jobs: list[Job]) -> None:
        for job in jobs:
            if job.finished:
                if not job.cancelled:
                    job.close()
                self._end(job)

    def _end(self, job: Job) -> None:
        """A job leaves for good (finished, failed or cancelled): its adapter may now be unloaded."""
        if job.first_token is not None and job.finished:
            self.metrics.count(self.metrics.ttft, job.first_token - job.submitted)
            self.metrics.count(self.metrics.latency, time.monotonic() - job.submitted)
        self.table.release(job.adapter)

    def _fail(self, jobs: list[Job], err: Exception) -> None:
        log.exception("decoding failed for %d request(s)", len(jobs), exc_info=err)
        for job in jobs:
            job.sink(Failed(f"decoding failed: {err}"))
            self._end(job)

    # ---- beam and contrastive search: a batch of their own ------------------------------------------
    def _run_solo(self, job: Job) -> None:
        beam = job.config.strategy == "beam"
        ids = job.prompt if beam else job.prompt.repeat(job.n, 1)  # beams: n best of one input
        streamer = None if beam else self._streamer(job)

        def hook(step: int, sequences: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
            if job.cancelled or self.stopping.is_set():
                raise Cancelled
            return logits

        try:
            self.metrics.count(self.metrics.prompt_tokens, job.prompt.shape[1], model=self._label(job))
            with self._only(job.adapter):
                out = engine_generate(
                    self.table.model,
                    ids,
                    None,
                    job.config,
                    tokenizer=self.table.decoder,
                    streamer=streamer,
                    logits_hook=hook,
                )
        except Cancelled:
            self._end(job)
            return
        except Exception as err:
            self._fail([job], err)
            return
        for choice, new in zip(job.choices, out.new_tokens.tolist(), strict=True):
            for token in new:  # beams: their tokens are only final now
                if choice.finish is not None:
                    break
                job.append(choice, token, self.table.decoder)
                self._observe_token(job, None)
        self._finish_jobs([job])

    @contextmanager
    def _only(self, adapter: str) -> Iterator[None]:
        """Run with one adapter active (or none): beams and contrastive candidates change the number
        of rows between steps, which per-row ``adapter_names`` of some methods cannot follow."""
        model = self.table.model
        if not isinstance(model, PeftModel):
            yield
        elif adapter == BASE_ROW:
            with model.disable_adapter():
                yield
        else:
            model.set_adapter(adapter)
            yield

    def _streamer(self, job: Job):
        def stream(tokens: torch.Tensor, finished: torch.Tensor) -> None:
            for choice, token in zip(job.choices, tokens.tolist(), strict=True):
                if choice.finish is None:
                    job.append(choice, token, self.table.decoder)
                    self._observe_token(job, None)

        return stream
