"""Reading a fusion's attention: how much each site weighs each adapter, on a batch."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ...errors import AdapterError
from ...layer import adapter_layers
from ..bottleneck.layer import BottleneckLayer


@dataclass
class FusionMap:
    """Mean fusion weights: ``weights[i, n]`` is site ``sites[i]``'s weight on ``adapters[n]``."""

    fusion: str
    sites: list[str]
    adapters: list[str]
    weights: torch.Tensor  # (S, N), rows sum to 1
    tokens: int  # how many (unmasked) positions the means are over

    def table(self) -> str:
        width = max(len(s) for s in self.sites)
        head = " " * width + "  " + "  ".join(f"{a:>10}" for a in self.adapters)
        rows = [
            f"{s:<{width}}  " + "  ".join(f"{w:10.3f}" for w in row)
            for s, row in zip(self.sites, self.weights.tolist())
        ]
        return "\n".join([head, *rows])


@torch.no_grad()
def fusion_attention(model: nn.Module, batch: dict, fusion: str) -> FusionMap:
    """Run ``batch`` through fusion ``fusion`` (whatever is active) and average its weights over
    rows and tokens (padding excluded when the batch has an ``attention_mask`` of matching shape)."""
    sites = [
        (p, m) for p, m in adapter_layers(model) if isinstance(m, BottleneckLayer) and fusion in m.fusion
    ]
    if not sites:
        raise AdapterError(f"no fusion named {fusion!r} in this model")
    rows = next(v for v in batch.values() if isinstance(v, torch.Tensor)).shape[0]
    for _, layer in sites:
        layer.record_fusion = True
    try:
        model(**batch, adapter_names=[fusion] * rows)
        mask = batch.get("attention_mask")
        weights = [_mean(layer.fusion_weights[fusion], mask) for _, layer in sites]
        tokens = int(mask.sum()) if mask is not None else rows
    finally:
        for _, layer in sites:
            layer.record_fusion = False
            layer.fusion_weights.pop(fusion, None)
    return FusionMap(
        fusion,
        _short([p for p, _ in sites]),
        list(sites[0][1].fusion[fusion].adapter_names),
        torch.stack(weights),
        tokens,
    )


def average(maps: list[FusionMap]) -> FusionMap:
    """Maps of several batches as one, each weighted by its token count."""
    total = sum(m.tokens for m in maps)
    weights = sum(m.weights * m.tokens for m in maps) / max(total, 1)  # (S, N)
    return FusionMap(maps[0].fusion, maps[0].sites, maps[0].adapters, weights, total)


def _mean(weights: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """(B, T, N) -> (N,), averaged over the tokens the mask keeps."""
    flat = weights.float().reshape(-1, weights.shape[-1])  # (B*T, N)
    if mask is not None and mask.shape == weights.shape[:-1]:
        flat = flat[mask.reshape(-1).bool()]
    return flat.mean(0)


def _short(paths: list[str]) -> list[str]:
    """Paths without the prefix they all share (``bert.encoder.layer.``)."""
    if len(paths) < 2:
        return paths
    parts = [p.split(".") for p in paths]
    n = 0
    while all(len(p) > n + 1 and p[n] == parts[0][n] for p in parts):
        n += 1
    return [".".join(p[n:]) for p in parts]
