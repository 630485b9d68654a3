"""Merging task tensors (peft's ``merge_utils``): the rules ``add_weighted_adapter`` applies to LoRA factors
or to whole deltas. Each takes ``tensors`` (n of the same shape) and ``weights (n,)`` and returns one tensor.

* task arithmetic (Ilharco et al. 2023): ``sum w_i T_i``;
* magnitude pruning: keep each tensor's ``density`` fraction of largest entries, then task arithmetic;
* TIES (Yadav et al. 2023, sec. 3): trim as above, elect each entry's sign (the sign of the summed entries,
  or of the summed signs), then average the weighted entries that agree with it (disjoint merge);
* DARE (Yu et al. 2024, sec. 3): drop entries at random, keeping each with probability ``density`` and
  rescaling the kept ones by ``1 / density``; then task arithmetic (``dare_linear``) or TIES' sign
  election and disjoint merge (``dare_ties``). DARE draws from torch's global generator.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

from ..config import check_choice
from ..errors import ConfigError

SIGN_METHODS = ("total", "frequency")


def _weighted(tensors: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``(n, ...) * (n,)``: each tensor times its weight."""
    return tensors * weights.view(weights.shape + (1,) * (tensors.dim() - 1))


def magnitude_mask(tensor: torch.Tensor, density: float) -> torch.Tensor:
    """The tensor with all but its ``int(density * numel)`` largest-magnitude entries zeroed."""
    k = int(density * tensor.numel())
    keep = torch.zeros(tensor.numel(), dtype=tensor.dtype, device=tensor.device)
    keep[torch.topk(tensor.abs().reshape(-1), k=k).indices] = 1
    return tensor * keep.view(tensor.shape)


def random_mask(tensor: torch.Tensor, density: float) -> torch.Tensor:
    """DARE's drop: each entry kept with probability ``density`` and rescaled by ``1 / density``."""
    return tensor * torch.bernoulli(torch.full_like(tensor, density)) / density


def prune(tensors: list[torch.Tensor], density: float, how: Callable) -> torch.Tensor:
    """``(n, ...)``: every tensor pruned by ``how`` (a density of 1 or more keeps everything, as peft)."""
    if density >= 1:
        warnings.warn(
            f"The density {density} is greater than or equal to 1, no pruning will be performed.",
            stacklevel=3,
        )
        return torch.stack(tensors)
    return torch.stack([how(t, density) for t in tensors])


def majority_sign(tensors: torch.Tensor, method: str) -> torch.Tensor:
    """TIES' elected sign: a mask ``(n, ...)`` of the entries whose sign is the majority's."""
    sign = tensors.sign()
    votes = tensors.sum(dim=0) if method == "total" else sign.sum(dim=0)
    return sign == torch.where(votes >= 0, 1, -1)


def disjoint_merge(tensors: torch.Tensor, agree: torch.Tensor) -> torch.Tensor:
    """The mean of the entries that agree with the elected sign (0 where none does)."""
    return (tensors * agree).sum(dim=0) / agree.sum(dim=0).clamp(min=1.0)


def merge(
    kind: str,
    tensors: list[torch.Tensor],
    weights: torch.Tensor,
    density: float | None = None,
    sign_method: str = "total",
) -> torch.Tensor:
    """Merge ``tensors`` by ``kind``: ``linear`` (task arithmetic), ``magnitude_prune``, ``ties``,
    ``dare_linear`` or ``dare_ties``."""
    if kind == "linear":
        return _weighted(torch.stack(tensors), weights).sum(dim=0)
    if density is None or not density >= 0:
        raise ConfigError("density", f"combination {kind!r} needs a density in [0, 1], got {density!r}")
    check_choice("majority_sign_method", sign_method, SIGN_METHODS)
    pruned = prune(tensors, density, random_mask if kind.startswith("dare") else magnitude_mask)
    weighted = _weighted(pruned, weights)
    if kind in ("ties", "dare_ties"):
        return disjoint_merge(weighted, majority_sign(pruned, sign_method))
    return weighted.sum(dim=0)
