"""What a decoding run does: the strategy, its knobs and when to stop, checked when built."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

from ..config import check_choice, check_fields
from ..errors import ConfigError

STRATEGIES = ("greedy", "sample", "beam", "contrastive")


@dataclass
class DecodingConfig:
    """Settings of :func:`peftkit.decoding.generate`.

    Args:
        strategy: ``greedy``; ``sample`` (temperature, then top-k, then top-p, then a draw);
            ``beam`` (``num_beams``, ``length_penalty``, ``early_stopping``); ``contrastive``
            (``top_k`` candidates, ``penalty_alpha``).
        max_new_tokens: stop after this many new tokens.
        min_new_tokens: end-of-sequence tokens are forbidden before this many new tokens.
        temperature: logits are divided by it before sampling (``sample`` only).
        top_k: keep the k largest logits (0: off); for ``contrastive`` the number of candidates.
        top_p: keep the smallest set of tokens whose probability reaches p (1.0: off).
        num_beams: beams kept per input (``beam``).
        length_penalty: a finished beam scores ``sum log p / length ** length_penalty``.
        early_stopping: ``True`` stops a row once ``num_beams`` hypotheses are finished; ``False``
            stops when no running beam can beat the worst finished one at the current length;
            ``"never"`` compares against the best score a beam could reach at ``max_new_tokens``.
        num_return_sequences: how many of the best beams to return per input (``beam``).
        penalty_alpha: weight of the degeneration penalty (``contrastive``).
        repetition_penalty: divides positive (multiplies negative) logits of tokens already in the
            row (prompt included, padding excluded); 1.0: off.
        no_repeat_ngram_size: forbid a token that would repeat an n-gram of the row (0: off).
        eos_token_id: one id or a list; a row ends when it emits one (``None``: never).
        pad_token_id: written after a row has ended (defaults to the first EOS id, else 0).
        stop_strings: a row also ends once its new text contains one of these (needs a tokenizer).
        seed: seeds a private random generator (``sample``): same seed, same output.
    """

    strategy: str = "greedy"
    max_new_tokens: int = 64
    min_new_tokens: int = 0
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    num_beams: int = 1
    length_penalty: float = 1.0
    early_stopping: bool | str = False
    num_return_sequences: int = 1
    penalty_alpha: float = 0.6
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    stop_strings: list[str] | str = field(default_factory=list)  # one string is read as a list
    seed: int | None = None

    def __post_init__(self) -> None:
        check_fields(self)
        check_choice("strategy", self.strategy, STRATEGIES)
        self._check_counts()
        self._check_floats()
        if self.early_stopping not in (True, False, "never"):
            raise ConfigError(
                "early_stopping", f"expected True, False or 'never', got {self.early_stopping!r}"
            )
        if isinstance(self.eos_token_id, int):
            self.eos_token_id = [self.eos_token_id]
        if self.eos_token_id is not None and not all(isinstance(i, int) for i in self.eos_token_id):
            raise ConfigError("eos_token_id", f"expected an int or a list of ints, got {self.eos_token_id!r}")
        if isinstance(self.stop_strings, str):
            self.stop_strings = [self.stop_strings]
        if any(not isinstance(s, str) or not s for s in self.stop_strings):
            raise ConfigError("stop_strings", "every stop string must be a non-empty string")
        self._check_strategy_fit()

    def _check_counts(self) -> None:
        for name, low in (("max_new_tokens", 1), ("num_beams", 1), ("num_return_sequences", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or value < low:
                raise ConfigError(name, f"must be an integer >= {low}, got {value!r}")
        for name in ("min_new_tokens", "top_k", "no_repeat_ngram_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ConfigError(name, f"must be an integer >= 0, got {value!r}")

    def _check_floats(self) -> None:
        if not self.temperature > 0:
            raise ConfigError(
                "temperature", f"must be > 0 (use strategy='greedy' for argmax), got {self.temperature}"
            )
        if not 0 < self.top_p <= 1:
            raise ConfigError("top_p", f"must be in (0, 1], got {self.top_p}")
        if not 0 <= self.penalty_alpha <= 1:
            raise ConfigError("penalty_alpha", f"must be in [0, 1], got {self.penalty_alpha}")
        if not self.repetition_penalty > 0:
            raise ConfigError(
                "repetition_penalty", f"must be > 0 (1.0 is off), got {self.repetition_penalty}"
            )

    def _check_strategy_fit(self) -> None:
        beam = self.strategy == "beam"
        if self.num_beams > 1 and not beam:
            raise ConfigError("num_beams", f"num_beams={self.num_beams} needs strategy='beam'")
        if self.num_return_sequences > self.num_beams and beam:
            raise ConfigError(
                "num_return_sequences", f"{self.num_return_sequences} > num_beams={self.num_beams}"
            )
        if self.num_return_sequences > 1 and not beam:
            raise ConfigError(
                "num_return_sequences", "more than one sequence per input needs strategy='beam'"
            )
        if self.strategy == "contrastive" and self.top_k < 2:
            raise ConfigError("top_k", "contrastive search needs top_k >= 2 candidates (4 is usual)")

    @property
    def pad_id(self) -> int:
        if self.pad_token_id is not None:
            return self.pad_token_id
        return self.eos_token_id[0] if self.eos_token_id else 0

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> DecodingConfig:
        """Build from ``transformers``-style keywords (``do_sample``, ``num_beams``, ``penalty_alpha``)."""
        kwargs = dict(kwargs)
        do_sample = kwargs.pop("do_sample", None)
        if "strategy" not in kwargs:
            if kwargs.get("num_beams", 1) > 1:
                kwargs["strategy"] = "beam"
            elif kwargs.get("penalty_alpha") and kwargs.get("top_k", 0) > 1:
                kwargs["strategy"] = "contrastive"
            elif do_sample:
                kwargs["strategy"] = "sample"
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise ConfigError(
                unknown[0], f"unknown decoding option; known options: {', '.join(sorted(known))}"
            )
        return cls(**{k: v for k, v in kwargs.items() if v is not None})

    def replace(self, **changes: Any) -> DecodingConfig:
        return replace(self, **changes)
