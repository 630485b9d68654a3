"""BitFit (Ben Zaken et al. 2022): train only the bias terms of the model."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..sparse_delta import SparseDeltaConfig


@dataclass
class BitFitConfig(SparseDeltaConfig):
    """Only bias terms train (about 0.08% of BERT-large's parameters, sec. 3).

    With ``target_modules=None`` every module that has a bias of its own (linear layers, layer
    norms, ...) is adapted, except ``modules_to_save``; the targeting fields narrow that. Each bias
    gets a delta (zero at init), so the adapter saves, merges, disables and mixes rows like any
    other; a model without biases (Llama-family layers) is an error.
    """

    def parameter_masks(self, module: nn.Module, module_name: str) -> dict[str, torch.Tensor]:
        return {
            p: torch.ones_like(t, dtype=torch.bool)
            for p, t in module.named_parameters()
            if p.rsplit(".", 1)[-1] == "bias"
        }
