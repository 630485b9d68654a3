"""One request as the scheduler sees it: a prompt, an adapter, a decoding config and ``n`` choices.

The scheduler thread reports what happens through the job's ``sink`` (a callable taking one event);
the web layer turns the events into an OpenAI response or a stream of server-sent events.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..decoding import DecodingConfig, cut_at_stop_string


@dataclass
class Delta:
    """New text (possibly empty) and the token that produced it, for choice ``index``."""

    index: int
    text: str
    token: int


@dataclass
class Finish:
    index: int
    reason: str  # "stop" (end token or stop string) or "length" (token budget)


@dataclass
class Done:
    """Every choice has finished; the usage counts of the whole request."""

    prompt_tokens: int
    completion_tokens: int


@dataclass
class Failed:
    message: str


Event = Delta | Finish | Done | Failed
Sink = Callable[[Event], None]


@dataclass
class Choice:
    """One output sequence of a job: its tokens, its text so far and how much of it was sent."""

    index: int
    generator: torch.Generator | None = None
    tokens: list[int] = field(default_factory=list)
    sent: int = 0  # characters of the text already reported
    finish: str | None = None
    last_time: float = 0.0  # when its previous token came (per-token latency)


def held_back(text: str, stops: list[str]) -> int:
    """Characters at the end of ``text`` that may still become a stop string (not sent yet)."""
    longest = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:n]):
                longest = n
                break
    return longest


class Job:
    """A request: ``prompt`` token ids, ``adapter`` (a row label: an adapter name or ``BASE_ROW``)."""

    def __init__(
        self,
        prompt: list[int],
        adapter: str,
        config: DecodingConfig,
        sink: Sink,
        n: int = 1,
        seed: int | None = None,
    ):
        self.prompt = torch.tensor([prompt], dtype=torch.long)  # (1, L)
        self.adapter, self.config, self.sink = adapter, config, sink
        self.solo = config.strategy in ("beam", "contrastive")  # decoded as a batch of its own
        self.choices = [Choice(i, _generator(config, seed, i)) for i in range(n)]
        self.cancelled = False
        self.submitted = time.monotonic()
        self.first_token: float | None = None

    @property
    def n(self) -> int:
        return len(self.choices)

    @property
    def finished(self) -> bool:
        return all(c.finish is not None for c in self.choices)

    def cancel(self) -> None:
        """The client went away: the scheduler drops the job's rows before its next step."""
        self.cancelled = True

    def sequences(self, choices: list[Choice]) -> torch.Tensor:
        """``(k, L + t)``: prompt and tokens so far of ``choices`` (all at the same step)."""
        new = torch.tensor([c.tokens for c in choices], dtype=torch.long).view(len(choices), -1)
        return torch.cat([self.prompt.expand(len(choices), -1), new], dim=1)

    def append(self, choice: Choice, token: int, tokenizer) -> None:
        """Add ``token`` to ``choice``, report the text it completes, and whether the choice ended."""
        now = time.monotonic()
        if self.first_token is None:
            self.first_token = now
        choice.tokens.append(token)
        choice.last_time = now
        stops = self.config.stop_strings
        text = tokenizer.decode(choice.tokens, skip_special_tokens=True)
        cut = cut_at_stop_string(text, stops)
        if len(cut) < len(text) or any(s in text for s in stops):
            choice.finish, text = "stop", cut
        elif token in (self.config.eos_token_id or []):
            choice.finish = "stop"
        elif len(choice.tokens) >= self.config.max_new_tokens:
            choice.finish = "length"
        if choice.finish is None:
            text = text.rstrip("\ufffd")  # wait for the rest of a multi-byte character
            text = text[: len(text) - held_back(text, stops)]
        self.sink(Delta(choice.index, text[choice.sent :], token))
        choice.sent = max(choice.sent, len(text))
        if choice.finish is not None:
            self.sink(Finish(choice.index, choice.finish))

    def close(self) -> None:
        """Report the usage once every choice has finished."""
        completion = sum(len(c.tokens) for c in self.choices)
        self.sink(Done(self.prompt.shape[1], completion))


def _generator(config: DecodingConfig, seed: int | None, index: int) -> torch.Generator | None:
    """Sampling rows draw from their own generator: choice ``i`` of a request with ``seed`` uses
    ``seed + i``, so choice 0 equals ``peftkit generate --seed seed``; no seed: a fresh random one."""
    if config.strategy != "sample":
        return None
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed((seed + index) % 2**64)  # torch's seed range, negatives as torch maps them
    return generator
