"""The (IA)^3 layer (Liu et al. 2022, sec. 3.3, eq. in fig. 1): a learned vector rescales the layer's output
(keys, values: ``l * (W x + b)``) or, on a feed-forward layer, its input (``W (l * x) + b``).

peft's shapes and key: ``ia3_l`` is ``(d_out, 1)`` for an output vector and ``(1, d_in)`` for an input one.
Several active adapters multiply. Merging folds the vector into the weight (rows for an output vector,
with the bias; columns for an input one), and unmerging divides it back out, which a zero entry forbids.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ...errors import AdapterError
from ...layer import AdapterLayer
from ...nn_types import is_conv1d, linear_dims
from ...rows import mix_rows
from .config import IA3Config


class IA3Linear(AdapterLayer):
    """(IA)^3 on ``nn.Linear`` (4-bit included) and GPT-2's ``Conv1D`` (weight stored ``(d_in, d_out)``)."""

    adapter_containers = ("ia3_l",)

    def __init__(self, base_layer: nn.Module):
        super().__init__(base_layer)
        self.fan_in_fan_out = is_conv1d(base_layer)
        self.in_features, self.out_features = linear_dims(base_layer)
        self.ia3_l = nn.ParameterDict()
        self.feedforward: dict[str, bool] = {}  # adapter -> rescales the input (else the output)

    def add(self, name: str, config: IA3Config, module_name: str) -> None:
        feedforward = config.is_feedforward(module_name)
        shape = (1, self.in_features) if feedforward else (self.out_features, 1)
        draw = torch.ones if config.init_ia3_weights else torch.randn
        self.ia3_l[name] = nn.Parameter(draw(shape, **self.new_tensor_kwargs()))
        self.feedforward[name] = feedforward

    def scales(self, names: list[str]) -> tuple[torch.Tensor | float, torch.Tensor | float]:
        """The products of the named adapters' input vectors ``(d_in,)`` and output vectors ``(d_out,)``."""
        inputs = [self.ia3_l[n].flatten() for n in names if self.feedforward[n]]
        outputs = [self.ia3_l[n].flatten() for n in names if not self.feedforward[n]]
        return math.prod(inputs, start=1.0), math.prod(outputs, start=1.0)

    # ---- forward: the base run on rescaled inputs, its output rescaled ------------------------------
    def adapted(self, x: torch.Tensor, names: list[str], *args, **kwargs) -> torch.Tensor:
        scale_in, scale_out = self.scales(names)
        if isinstance(scale_in, torch.Tensor):
            x = (x.to(scale_in.dtype) * scale_in).to(x.dtype)  # (..., d_in)
        out = self.base(x, *args, **kwargs)
        return (out * scale_out).to(out.dtype) if isinstance(scale_out, torch.Tensor) else out

    def mixed_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """Each adapter's rows are run with it and written over the base output (a product, not a sum)."""

        def rows_output(name: str, rows: torch.Tensor) -> torch.Tensor:
            return self.adapted(x[rows], [name], *args, **kwargs)

        out = self.base(x, *args, **kwargs)
        return mix_rows(out, self.adapter_names(), rows_output, add=False, source=x)

    # ---- merging: W <- W * l (rows, and the bias, for an output vector; columns for an input one) ------
    def weight_factor(self, name: str) -> torch.Tensor:
        """``ia3_l`` broadcast against the base weight in its own layout."""
        vector = self.ia3_l[name]  # (d_out, 1) or (1, d_in): the (d_out, d_in) layout
        return vector.T if self.fan_in_fan_out else vector

    def merge_one(self, name: str) -> None:
        self._dequantize_base()
        self._fold(name, torch.mul)

    def unmerge_one(self, name: str) -> None:
        if bool((self.ia3_l[name] == 0).any()):
            raise AdapterError(
                f"adapter {name!r} has a zero entry in ia3_l, so the merged weight cannot be divided back: "
                "reload the base model instead of unmerging"
            )
        self._fold(name, torch.div)

    @torch.no_grad()
    def _fold(self, name: str, op) -> None:
        weight = self.base.weight
        weight.copy_(op(weight, self.weight_factor(name).to(weight.dtype)))
        if not self.feedforward[name] and self.bias is not None:
            self.bias.copy_(op(self.bias, self.ia3_l[name].flatten().to(self.bias.dtype)))

    def delete(self, name: str) -> None:
        super().delete(name)
        self.feedforward.pop(name, None)
