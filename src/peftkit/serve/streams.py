"""From scheduler events to OpenAI responses: whole JSON bodies or server-sent event chunks.

A request's jobs (one per prompt) report to one :class:`Channel`; choice ``j`` of prompt ``i`` is
choice ``i * n + j`` of the response, as OpenAI numbers them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from .jobs import Done, Event, Failed, Finish, Job


class Channel:
    """Thread-safe: the scheduler thread puts ``(job index, event)``, the event loop reads them."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop, self.queue = loop, asyncio.Queue()

    def sink(self, job_index: int):
        def put(event: Event) -> None:
            with contextlib.suppress(RuntimeError):  # the loop has closed (shutdown): nobody listens
                self.loop.call_soon_threadsafe(self.queue.put_nowait, (job_index, event))

        return put


@dataclass
class Answer:
    """What a response says so far about one choice."""

    text: str = ""
    tokens: list[int] = field(default_factory=list)
    finish: str | None = None


class Response:
    """The response to one request being assembled from its jobs' events."""

    def __init__(self, kind: str, model: str, jobs: list[Job], return_token_ids: bool):
        self.kind, self.model, self.jobs = kind, model, jobs  # kind: "chat" or "text"
        self.with_ids = return_token_ids
        self.id = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self.answers = [Answer() for job in jobs for _ in job.choices]
        self.usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        self.pending = set(range(len(jobs)))
        self.error: str | None = None

    def index(self, job_index: int, choice: int) -> int:
        return sum(j.n for j in self.jobs[:job_index]) + choice

    def apply(self, job_index: int, event: Event) -> dict[str, Any] | None:
        """Record ``event``; returns the stream choice it produces (None: nothing to send)."""
        if isinstance(event, Done):
            self.pending.discard(job_index)
            self.usage["prompt_tokens"] += event.prompt_tokens
            self.usage["completion_tokens"] += event.completion_tokens
            self.usage["total_tokens"] = self.usage["prompt_tokens"] + self.usage["completion_tokens"]
            return None
        if isinstance(event, Failed):
            self.pending.discard(job_index)
            self.error = event.message
            return None
        i = self.index(job_index, event.index)
        answer = self.answers[i]
        if isinstance(event, Finish):
            answer.finish = event.reason
            return self._choice(i, "", event.reason)
        answer.text += event.text
        answer.tokens.append(event.token)
        if not event.text and not self.with_ids:
            return None
        return self._choice(i, event.text, None, [event.token])

    def _choice(self, i: int, text: str, finish: str | None, tokens: list[int] | None = None) -> dict:
        if self.kind == "chat":
            body = {"index": i, "delta": {"content": text} if text else {}, "finish_reason": finish}
        else:
            body = {"index": i, "text": text, "finish_reason": finish}
        body["logprobs"] = None
        if self.with_ids and tokens is not None:
            body["token_ids"] = tokens
        return body

    # ---- bodies -------------------------------------------------------------------------------------
    def _head(self, chunk: bool) -> dict[str, Any]:
        kinds = {("chat", False): "chat.completion", ("chat", True): "chat.completion.chunk"}
        kind = kinds.get((self.kind, chunk), "text_completion")
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def body(self) -> dict[str, Any]:
        choices = []
        for i, a in enumerate(self.answers):
            if self.kind == "chat":
                choice = {"index": i, "message": {"role": "assistant", "content": a.text}}
            else:
                choice = {"index": i, "text": a.text}
            choice.update(finish_reason=a.finish, logprobs=None)
            if self.with_ids:
                choice["token_ids"] = a.tokens
            choices.append(choice)
        return {**self._head(False), "choices": choices, "usage": self.usage}

    def chunk(self, choices: list[dict], usage: bool = False) -> str:
        body = {**self._head(True), "choices": choices}
        if usage:
            body["usage"] = self.usage
        return f"data: {json.dumps(body)}\n\n"

    def opening(self) -> str | None:
        """Chat streams open with each choice's role (OpenAI's first chunk)."""
        if self.kind != "chat":
            return None
        roles = [{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None,
                  "logprobs": None} for i in range(len(self.answers))]  # fmt: skip
        return self.chunk(roles)
