"""Virtual tokens as a stage of the model: the one object in :class:`~peftkit.PeftModel` that owns every
virtual-token adapter (prompt, prefix, P-tuning, AdaPtLoRA's task prompts).

The stage is a ``ModuleDict`` of :class:`~.adapter.InputAdapter` by adapter name (so its parameters,
``state_dict`` and deletion are the module system's), registered as ``prompt_encoder``: peft's
attribute name, so parameter names match peft's (``prompt_encoder.default.embedding.weight``). On a
forward it looks up each row's adapter from the current routing (:mod:`peftkit.rows`: per-row
adapter names and tasks) and hands the rows to the layout engine (:mod:`.layout`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from ..errors import AdapterError
from ..nn_types import replace_parameters
from ..rows import current_rows
from .adapter import PEFT_KEY, InputAdapter
from .layout import forward_with_virtual_tokens


class VirtualTokenStage(nn.ModuleDict):
    """Every adapter's virtual tokens, by adapter name; ``disabled`` runs the bare input.

    ``peft_forward = True`` gives peft's forward where peftkit's differs by design: positions counted
    ``0 .. V + L - 1`` in every row (peftkit counts a row's real tokens, so padding changes nothing) and a
    causal LM's logits for the virtual tokens too (peftkit returns the real tokens', aligned with the
    labels). Decoding is the same either way."""

    def __init__(self) -> None:
        super().__init__()
        self.disabled = False
        self.peft_forward = False

    # ---- adapters ----------------------------------------------------------------------------------
    def add(self, name: str, adapter: InputAdapter | None) -> None:
        if adapter is not None:
            self[name] = adapter

    def delete(self, name: str) -> None:
        if name in self:
            del self[name]

    def adapter_parameters(self, name: str) -> Iterator[nn.Parameter]:
        if name in self:
            yield from self[name].parameters()

    def to_meta(self, name: str) -> None:
        """Adapter ``name``'s tensors on the meta device (``low_cpu_mem_usage``: weights to be loaded)."""
        if name in self:
            replace_parameters(self[name], lambda t: torch.empty_like(t, device="meta"))

    def materialize(self, name: str, device: torch.device) -> None:
        """Storage on ``device`` for adapter ``name``'s meta tensors (values to be loaded)."""
        if name in self:
            replace_parameters(self[name], lambda t: torch.empty_like(t, device=device) if t.is_meta else t)

    def adapter_state_dict(self, name: str) -> dict[str, torch.Tensor]:
        """peft's ``{"prompt_embeddings": ...}`` of adapter ``name`` (empty when it adds no tokens)."""
        return self[name].peft_state_dict() if name in self else {}

    def load_adapter_state_dict(self, name: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Load ``name``'s tensor from ``state``; returns the rest (the layers' tensors)."""
        if name not in self:
            return state
        rest = dict(state)
        self[name].load_peft_state_dict({PEFT_KEY: rest.pop(PEFT_KEY, None)})
        return rest

    # ---- forward -----------------------------------------------------------------------------------
    def run(self, model: nn.Module, args: tuple, kwargs: dict[str, Any], active: list[str]) -> Any:
        """``model(*args, **kwargs)`` with each row's virtual tokens in place (none: the plain call)."""
        rows = self.row_adapters(active, batch_size(args, kwargs))
        if rows is None:
            return model(*args, **kwargs)
        return forward_with_virtual_tokens(model, args, kwargs, rows, self.peft_forward)

    def row_adapters(self, active: list[str], batch: int | None) -> list[InputAdapter | None] | None:
        """Each row's virtual-token adapter (None: none), seen through the row's task; None when no
        row of the batch has one."""
        if self.disabled or not len(self) or batch is None:
            return None
        routing = current_rows()
        names = routing.adapter_rows(batch) if routing.mixed else self.active_one(active) * batch
        if not names:
            return None
        tasks = routing.task_rows(batch)
        rows = [self[n].for_task(t) if n in self else None for n, t in zip(names, tasks, strict=True)]
        return rows if any(r is not None for r in rows) else None

    def active_one(self, active: list[str]) -> list[str]:
        """The one active adapter with virtual tokens (as a one-name list), or an empty list."""
        mine = [n for n in active if n in self]
        if len(mine) > 1:
            raise AdapterError(
                f"adapters {mine} each add virtual tokens; activate one, or give each row its adapter "
                "with adapter_names="
            )
        return mine


def batch_size(args: tuple, kwargs: dict[str, Any]) -> int | None:
    """The number of rows of a forward, read from its input ids or embeddings, else its attention mask or
    decoder inputs (an encoder-decoder's later decoding steps pass ``encoder_outputs`` and no input ids);
    None: no such input."""
    for key in ("input_ids", "inputs_embeds", "attention_mask", "decoder_input_ids", "decoder_inputs_embeds"):
        ref = kwargs.get(key)
        if isinstance(ref, torch.Tensor):
            return ref.shape[0]
    return args[0].shape[0] if args and isinstance(args[0], torch.Tensor) else None
