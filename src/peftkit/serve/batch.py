"""A running batch that rows join and leave between decoding steps (continuous batching).

A :class:`~peftkit.decoding.ModelStepper` normally decodes one fixed batch. Here its state (the KV
cache, the real-token mask, the tokens fed and the per-row ``adapter_names``) is rewritten between
steps: rows prefilled together join the running rows, finished rows leave.

The cache of a batch whose rows use virtual-token adapters has three regions along the sequence
(see :func:`peftkit.virtual.transform_inputs`, which rebuilds that layout's mask on every call)::

    [ P prefix slots ][ T embedding slots ][ R real tokens ]
      right-aligned     right-aligned        left-padded

``P`` is the longest key/value prefix of any row (prefix tuning, P-tuning v2), ``T`` the most
prepended virtual embeddings (prompt tuning, P-tuning, AdaPtLoRA's prompts); a row's own slots sit
at the right end of each region and every other slot is masked. Joining two batches left-pads each
region of the shorter one with masked zeros; leaving drops rows (``index_select``), then the columns
no remaining row uses: the left end of the prefix and embedding regions when the widest rows left,
and leading real-token columns that are padding for every row. Positions come from each row's own
mask (real tokens counted from 0, shifted by the row's virtual tokens), so padding changes nothing a
row computes: each row decodes what it would decode alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..decoding import ModelStepper
from ..errors import ConfigError
from ..rows import BASE_ROW


@dataclass(frozen=True)
class Slots:
    """Virtual slots one row holds in the cache: a key/value prefix and prepended embeddings."""

    prefix: int = 0
    embedded: int = 0


def row_slots(model: nn.Module, adapter: str) -> Slots:
    """The slots adapter ``adapter`` (``BASE_ROW``: none) gives a row of ``model``."""
    inputs = getattr(model, "prompt_encoder", None)
    if adapter == BASE_ROW or inputs is None or adapter not in inputs:
        return Slots()
    unit = inputs[adapter]
    if unit.writes_cache:
        return Slots(prefix=unit.num_virtual_tokens)
    if unit.replaces_tokens() is not None:  # P-tuning templates: placeholders among the real tokens
        return Slots()
    return Slots(embedded=unit.num_virtual_tokens)


def check_cache_layout(cache) -> None:
    """Rows can only be merged in a cache of plain per-layer key/value tensors (``DynamicLayer``)."""
    from transformers.cache_utils import DynamicLayer

    layers = getattr(cache, "layers", None)
    if not layers or any(type(layer) is not DynamicLayer for layer in layers):
        kinds = sorted({type(layer).__name__ for layer in layers or []}) or [type(cache).__name__]
        raise ConfigError(
            "model",
            f"continuous batching needs a cache of plain key/value layers (DynamicLayer); this model's "
            f"cache holds {kinds} (sliding-window, linear-attention and quantised caches are not supported)",
        )


def _pad_left(t: torch.Tensor, width: int, dim: int, value: float = 0) -> torch.Tensor:
    """Left-pad ``t`` along ``dim`` to ``width`` entries."""
    missing = width - t.shape[dim]
    if missing <= 0:
        return t
    pad = [0, 0] * (t.dim() - 1 - dim % t.dim()) + [missing, 0]
    return F.pad(t, pad, value=value)


class RunningBatch:
    """Rows decoding together; ``stepper`` holds their cache, real-token mask and tokens.

    ``names[i]`` is row ``i``'s adapter (``BASE_ROW``: none), ``slots[i]`` its virtual slots.
    """

    def __init__(self, stepper: ModelStepper, names: list[str], slots: list[Slots]):
        self.stepper, self.names, self.slots = stepper, list(names), list(slots)
        self._check_length()

    # ---- layout ---------------------------------------------------------------------------------
    @property
    def size(self) -> int:
        return len(self.names)

    @property
    def regions(self) -> tuple[int, int, int]:
        """``(P, T, R)``: widths of the prefix, embedding and real-token regions."""
        prefix = max((s.prefix for s in self.slots), default=0)
        embedded = max((s.embedded for s in self.slots), default=0)
        return prefix, embedded, self.stepper.mask.shape[1]

    def _check_length(self) -> None:
        length = sum(self.regions)
        for layer in self.stepper.cache.layers:
            if layer.keys.shape[-2] != length:
                raise RuntimeError(
                    f"cache holds {layer.keys.shape[-2]} positions, the layout {self.regions} expects "
                    f"{length}: the model wrote virtual tokens where peftkit.virtual does not"
                )

    # ---- decoding ---------------------------------------------------------------------------------
    def step(self, model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per row ``(B,)``; returns next-token logits ``(B, V)``."""
        self.stepper.model = model  # the wrapper may have changed (first adapter loaded)
        if hasattr(model, "prompt_encoder"):
            self.stepper.forward_kwargs["adapter_names"] = list(self.names)
        out = self.stepper.step(tokens)
        if not self.stepper.cached:
            raise RuntimeError("the model stopped filling its KV cache; rows cannot share a batch")
        return out.logits

    # ---- joining and leaving ----------------------------------------------------------------------
    def merge(self, other: RunningBatch) -> None:
        """Append ``other``'s rows (after this batch's), padding every region to the wider of the two."""
        mine, theirs = self.regions, other.regions
        widths = tuple(max(a, b) for a, b in zip(mine, theirs, strict=True))
        for own, new in zip(self.stepper.cache.layers, other.stepper.cache.layers, strict=True):
            own.keys = torch.cat(
                [_regions_padded(own.keys, mine, widths), _regions_padded(new.keys, theirs, widths)]
            )
            own.values = torch.cat(
                [_regions_padded(own.values, mine, widths), _regions_padded(new.values, theirs, widths)]
            )
        a, b = self.stepper, other.stepper
        a.mask = torch.cat([_pad_left(a.mask, widths[2], 1), _pad_left(b.mask, widths[2], 1)])
        a.tokens = torch.cat([_pad_left(a.tokens, widths[2], 1), _pad_left(b.tokens, widths[2], 1)])
        self.names += other.names
        self.slots += other.slots
        self._check_length()

    def keep(self, rows: list[int]) -> None:
        """Keep only ``rows`` (in order), then drop the columns no remaining row uses."""
        before = self.regions
        index = torch.tensor(rows, dtype=torch.long, device=self.stepper.mask.device)
        self.stepper.reorder(index)
        self.names = [self.names[i] for i in rows]
        self.slots = [self.slots[i] for i in rows]
        prefix, embedded, _ = self.regions
        unused = ~self.stepper.mask.bool().any(dim=0)  # (R,) columns that are padding in every row
        lead = int(unused.long().cumprod(0).sum())  # leading such columns
        columns = torch.cat(
            [
                torch.arange(before[0] - prefix, before[0]),
                torch.arange(before[0] + before[1] - embedded, before[0] + before[1]),
                torch.arange(before[0] + before[1] + lead, sum(before)),
            ]
        ).to(index.device)
        if len(columns) < sum(before):
            for layer in self.stepper.cache.layers:
                layer.keys = layer.keys.index_select(-2, columns)
                layer.values = layer.values.index_select(-2, columns)
            self.stepper.mask = self.stepper.mask[:, lead:]
            self.stepper.tokens = self.stepper.tokens[:, lead:]
        self._check_length()


def _regions_padded(t: torch.Tensor, have: tuple[int, int, int], want: tuple[int, int, int]) -> torch.Tensor:
    """``t (B, H, P + T + R, hd)`` with each region left-padded to the widths ``want``."""
    parts = torch.split(t, list(have), dim=-2)
    return torch.cat([_pad_left(p, w, -2) for p, w in zip(parts, want, strict=True)], dim=-2)
