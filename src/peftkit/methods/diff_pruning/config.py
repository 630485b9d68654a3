"""Learned sparse diff (``diff_pruning``): the mask is the top-k of trained scores, or L0 gates."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ...config import check_choice, check_range
from ...errors import ConfigError
from ..sparse_delta import SparseDelta, SparseDeltaConfig
from .layer import HardConcreteDelta, TopKDelta

MASKS = ("topk", "hard_concrete")


@dataclass
class DiffPruningConfig(SparseDeltaConfig):
    """Diff pruning (Guo et al. 2021): a learned sparse diff, with a top-k or an L0 (hard-concrete) mask.

    ``mask="topk"`` (the default): each targeted parameter ``W0`` gets a dense diff ``D`` and a
    score ``S`` of its shape; the model
    runs with ``W0 + M * D`` where ``M`` keeps the ``density`` fraction of entries with the highest
    scores (per tensor, so the density is exact at every step, training ends at it, and no pruning
    pass is needed afterwards). ``M`` is a hard top-k with no gradient of its own; the
    straight-through estimator (as in movement pruning, Sanh et al. 2020) gives ``S`` the gradient
    ``dL/dS = dL/dW * D`` and ``D`` the dense ``dL/dW``, so entries outside the mask keep learning
    and enter it when their score overtakes. Scores start as small uniform noise. Only ``M * D``
    is saved (flat indices + values), and it merges exactly.

    ``mask="hard_concrete"`` (the paper's relaxation, Louizos et al. 2018): ``D`` and a gate logit
    per entry; training runs with ``W0 + z * D``, ``z`` a stochastic hard-concrete gate, and the
    loss gains ``l0_weight * max(0, E[fraction of z != 0] - density)`` per tensor, which brings the
    expected density from ``init_density`` down to the target. Outside training (eval, merge,
    save) the gates are deterministic and only the ``density`` fraction with the highest logits is
    kept, so the saved diff has at most the target density (the paper's final projection, by gate).

    Args:
        density: fraction of each targeted parameter tensor that may differ from the base, in (0, 1].
        mask: ``"topk"`` (straight-through top-k scores) or ``"hard_concrete"`` (L0 gates).
        l0_weight: weight of the hard-concrete density penalty (``>= 0``).
        init_density: expected fraction of non-zero hard-concrete gates at the start, in (0, 1).
            At 0.5 (the default) every deterministic gate starts at 0.1, open; at a low value they
            start closed (0) outside training until the task loss opens them.
    """

    density: float = 0.01
    mask: str = "topk"
    l0_weight: float = 1.0
    init_density: float = 0.5
    learned: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("density", self.density, 0.0, 1.0, hi_inclusive=True)
        if self.density <= 0:
            raise ConfigError("density", f"must be above 0, got {self.density!r}")
        check_choice("mask", self.mask, MASKS)
        if self.l0_weight < 0:
            raise ConfigError("l0_weight", f"must be a number >= 0, got {self.l0_weight!r}")
        check_range("init_density", self.init_density, 0.0, 1.0)
        if self.init_density <= 0:
            raise ConfigError("init_density", f"must be above 0, got {self.init_density!r}")

    def make_delta(self, params: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]) -> SparseDelta:
        chosen = {p: params[p] for p in masks}
        if self.mask == "hard_concrete":
            return HardConcreteDelta(chosen, self.density, self.init_density)
        return TopKDelta(chosen, self.density)
