"""When a row is done: an end-of-sequence id, a stop string in its new text, or the token budget."""

from __future__ import annotations

import torch

from ..errors import ConfigError
from .config import DecodingConfig


class StopRule:
    """Checks rows after each new token. Stop strings are matched in the decoded *new* text only."""

    def __init__(self, config: DecodingConfig, prompt_length: int, tokenizer=None):
        if config.stop_strings and tokenizer is None:
            raise ConfigError("stop_strings", "stop strings need a tokenizer: pass tokenizer= to generate()")
        self.eos = config.eos_token_id or []
        self.stop_strings = config.stop_strings
        self.prompt_length = prompt_length
        self.tokenizer = tokenizer
        self._eos_tensor: torch.Tensor | None = None

    def hits(self, sequences: torch.Tensor) -> torch.Tensor:
        """``(N,)`` bool: rows whose last token ends them (``sequences (N, T)``)."""
        done = torch.zeros(sequences.shape[0], dtype=torch.bool, device=sequences.device)
        if self.eos:
            if self._eos_tensor is None:
                self._eos_tensor = torch.tensor(self.eos, device=sequences.device)
            done |= torch.isin(sequences[:, -1], self._eos_tensor)
        if self.stop_strings:
            done |= self._stop_string_hits(sequences)
        return done

    def _stop_string_hits(self, sequences: torch.Tensor) -> torch.Tensor:
        texts = self.tokenizer.batch_decode(sequences[:, self.prompt_length :], skip_special_tokens=True)
        hits = [any(s in text for s in self.stop_strings) for text in texts]
        return torch.tensor(hits, dtype=torch.bool, device=sequences.device)


def cut_at_stop_string(text: str, stop_strings: list[str]) -> str:
    """The text before the earliest stop string (the whole text when none occurs)."""
    cuts = [text.find(s) for s in stop_strings if s in text]
    return text[: min(cuts)] if cuts else text
