"""Prefix tuning config (Li & Liang 2021, sec. 4): ``h_i = P_theta[i]`` for prefix positions, every layer."""

from __future__ import annotations

from dataclasses import dataclass

from ...config import check_positive_int
from ...input_adapter import PromptLearningConfig


@dataclass
class PrefixTuningConfig(PromptLearningConfig):
    """Prefix tuning.

    Args:
        prefix_projection: reparametrise the prefix through an MLP while training
            (``P = MLP(P')``, sec. 4.3: more stable optimisation); :func:`eject` bakes it in.
        encoder_hidden_size: the MLP's hidden width.
    """

    prefix_projection: bool = False
    encoder_hidden_size: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.encoder_hidden_size is not None:
            check_positive_int("encoder_hidden_size", self.encoder_hidden_size)
