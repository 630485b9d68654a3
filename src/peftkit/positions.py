"""Position ids counted over real tokens: the one place peftkit computes them (the decoding stepper
for every model, the virtual-token stage for rows with virtual tokens, which shifts them by the
row's number of virtual tokens)."""

from __future__ import annotations

import torch


def real_positions(mask: torch.Tensor) -> torch.Tensor:
    """``(B, T)``: each real token's index among the real tokens of its row; padding sits at 0, so
    left and right padding give a row the same positions."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)
