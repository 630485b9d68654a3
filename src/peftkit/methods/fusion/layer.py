"""The AdapterFusion module of one site (Pfeiffer et al. 2021, sec. 3.2, eq. 3-5).

It holds only the fusion's own parameters; the site's :class:`BottleneckLayer` feeds it the
site output ``h`` and the fused adapters' outputs, and adds the returned context to ``h``.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import FusionConfig

QK_INIT_STD = 0.02


class FusionAttention(nn.Module):
    """Attention over adapters: the query from ``h``, keys and values from each adapter's output."""

    def __init__(self, hidden: int, config: FusionConfig, **kw) -> None:
        super().__init__()
        self.adapter_names = list(config.adapter_names)
        self.temperature = float(config.temperature)
        self.query = nn.Linear(hidden, hidden, **kw)
        self.key = nn.Linear(hidden, hidden, **kw)
        self.value = nn.Linear(hidden, hidden, **kw) if config.fusion_type == "dynamic" else None
        with torch.no_grad():
            for linear in (self.query, self.key):
                nn.init.normal_(linear.weight, std=QK_INIT_STD)
                nn.init.zeros_(linear.bias)
            if self.value is not None:  # identity: at init the fusion is a weighted mean of the adapters
                self.value.weight.copy_(torch.eye(hidden, **kw))
                nn.init.zeros_(self.value.bias)

    def forward(self, h: torch.Tensor, ups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``h``: (..., d) the site output; ``ups``: (..., N, d) what each adapter adds.
        Returns the context to add to ``h`` (..., d) and the attention weights (..., N)."""
        q = self.query(h)  # (..., d)
        k = self.key(ups)  # (..., N, d)
        scores = (k @ q.unsqueeze(-1)).squeeze(-1) / self.temperature  # (..., N)
        weights = scores.softmax(-1)  # (..., N), sums to 1 over adapters
        values = self.value(ups) if self.value is not None else ups  # (..., N, d)
        context = (weights.unsqueeze(-1) * values).sum(-2)  # (..., d)
        return context, weights
