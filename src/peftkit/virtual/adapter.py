"""The virtual-token adapter protocol: what one adapter contributes to a row (see :mod:`.layout` for
where it goes), and the reparametrised prompt the prompt methods share."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch
from torch import nn

from ..errors import AdapterError

PEFT_KEY = "prompt_embeddings"  # peft's single tensor for every prompt-learning method


class InputAdapter(nn.Module):
    """One adapter's virtual tokens. Subclasses produce them; :func:`transform_inputs` places them."""

    writes_cache: ClassVar[bool] = False  # True: a per-layer key/value prefix; False: input embeddings

    def __init__(self, num_virtual_tokens: int):
        super().__init__()
        self.num_virtual_tokens = num_virtual_tokens

    def virtual_embeddings(self) -> torch.Tensor:
        """``(V, d)`` embeddings prepended to the input (``writes_cache = False``)."""
        raise NotImplementedError  # pragma: no cover - abstract

    def virtual_batch(self, rows: int) -> torch.Tensor:
        """``(rows, V, d)``: the virtual embeddings of ``rows`` rows that all use this adapter, one view
        of them as peft repeats its prompt: their gradient sums the rows' in peft's order."""
        return self.virtual_embeddings().expand(rows, -1, -1)

    def prefix(self) -> torch.Tensor:
        """``(layers, 2, kv_heads, V, head_dim)`` keys and values (``writes_cache = True``)."""
        raise NotImplementedError  # pragma: no cover - abstract

    def prefix_batch(self, rows: int) -> torch.Tensor:
        """``(layers, 2, rows, kv_heads, V, head_dim)``: the prefix of ``rows`` rows that all use this
        adapter (``writes_cache = True``)."""
        return self.prefix().unsqueeze(2).expand(-1, -1, rows, -1, -1, -1)

    def for_task(self, task: str | None) -> InputAdapter:
        """What a row of task ``task`` receives (task-conditioned adapters such as AdaPtLoRA's prompts
        answer with that task's view); most adapters serve every task alike."""
        return self

    def replaces_tokens(self) -> int | None:
        """A token id whose positions receive the virtual embeddings instead of a prepended block."""
        return None

    def peft_state_dict(self) -> dict[str, torch.Tensor]:
        """peft's ``{"prompt_embeddings": ...}``: what inference needs, reparametrisation baked in."""
        raise NotImplementedError  # pragma: no cover - abstract

    def load_peft_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        raise NotImplementedError  # pragma: no cover - abstract


def check_shape(name: str, value: torch.Tensor, expected: tuple[int, ...]) -> None:
    if tuple(value.shape) != expected:
        raise AdapterError(
            f"{name} has shape {tuple(value.shape)} in the checkpoint but the model needs {expected} "
            "(a different base model or num_virtual_tokens?)"
        )


class ReparametrisedPrompt(InputAdapter):
    """Virtual vectors ``embedding.weight`` (peft's name), optionally produced by a trainable ``head``
    (an MLP or LSTM) while training; :meth:`eject` bakes the head's output into flat vectors.

    ``make_head`` is called after the embedding is drawn: peft's order of random draws, so one seed
    starts both libraries from the same vectors and head."""

    def __init__(
        self, num_virtual_tokens: int, rows: int, width: int, make_head: Callable[[], nn.Module] | None, dtype
    ):
        super().__init__(num_virtual_tokens)
        self.embedding = nn.Embedding(rows, width, dtype=dtype)  # (rows, width)
        self.head = make_head() if make_head is not None else None

    def encoded(self) -> torch.Tensor:
        """All virtual vectors ``(rows, out_width)``: the head's output, or the flat vectors."""
        w = self.embedding.weight
        return self.head(w) if self.head is not None else w

    def encoded_rows(self, rows: int) -> torch.Tensor:
        """``(rows, V, out_width)``: :meth:`encoded` for each of ``rows`` rows, computed as peft computes
        a prefix: the vectors looked up and the head run for every row, so that their gradients sum over
        the batch in peft's order (one reduction over ``rows x V`` rows). The head's work grows with
        ``rows``, as peft's does (``bench/prefix_rows.py``: a training step 1.18x the time of the MLP run
        once at batch 32 of short sentences on MiniLM, 0.99x at batch 8 x 107 on SmolLM2)."""
        ids = torch.arange(self.embedding.num_embeddings, device=self.embedding.weight.device)
        w = self.embedding(ids.expand(rows, -1))  # (rows, V, width)
        return self.head(w) if self.head is not None else w

    @torch.no_grad()
    def eject(self) -> None:
        """Replace embedding + head by the head's output: identical outputs, no reparametrisation."""
        if self.head is None:
            return
        flat = self.encoded().detach().clone()
        self.embedding = nn.Embedding.from_pretrained(flat, freeze=False)
        self.head = None

    def peft_state_dict(self) -> dict[str, torch.Tensor]:
        return {PEFT_KEY: self.encoded().detach()}

    def load_peft_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if state.get(PEFT_KEY) is None:
            raise AdapterError(f"the checkpoint has no {PEFT_KEY!r} tensor (keys: {sorted(state)[:5]})")
        self.eject()  # checkpoints hold the flat vectors
        check_shape(PEFT_KEY, state[PEFT_KEY], tuple(self.embedding.weight.shape))
        with torch.no_grad():
            self.embedding.weight.copy_(state[PEFT_KEY].to(self.embedding.weight.dtype))
