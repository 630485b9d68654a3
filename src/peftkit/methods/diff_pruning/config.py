"""Learned sparse diff (``diff_pruning``): the mask is the top-k of trained scores."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ...config import check_range
from ...errors import ConfigError
from ..selection.config import SparseDeltaConfig


@dataclass
class DiffPruningConfig(SparseDeltaConfig):
    """Diff pruning (Guo et al. 2021) with straight-through top-k scores in place of the L0 gate.

    Each targeted parameter ``W0`` gets a dense diff ``D`` and a score ``S`` of its shape; the model
    runs with ``W0 + M * D`` where ``M`` keeps the ``density`` fraction of entries with the highest
    scores (per tensor, so the density is exact at every step, training ends at it, and no pruning
    pass is needed afterwards). ``M`` is a hard top-k with no gradient of its own; the
    straight-through estimator (as in movement pruning, Sanh et al. 2020) gives ``S`` the gradient
    ``dL/dS = dL/dW * D`` and ``D`` the dense ``dL/dW``, so entries outside the mask keep learning
    and enter it when their score overtakes. Scores start as small uniform noise. Only ``M * D``
    is saved (flat indices + values), and it merges exactly.

    Args:
        density: fraction of each targeted parameter tensor that may differ from the base, in (0, 1].
    """

    density: float = 0.01
    learned: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("density", self.density, 0.0, 1.0, hi_inclusive=True)
        if self.density <= 0:
            raise ConfigError("density", f"must be above 0, got {self.density!r}")
