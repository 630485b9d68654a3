"""DoRA: weight-decomposed low-rank adaptation (Liu et al. 2024), as a LoRA option (``use_dora=True``).

The adapted weight is split into a magnitude and a direction (sec. 4.1, eq. 5):

    W' = m * (W + s B A) / ||W + s B A||_c

``m`` (``lora_magnitude_vector``, one entry per output unit) starts at ``||W||_c``, so ``W' = W`` at init;
``||.||_c`` is the norm of each output unit's weights (a row of a ``(d_out, d_in)`` linear weight, a column
of a ``(V, d)`` embedding table). The norm is treated as a constant in the backward pass (sec. 4.3, "we
suggest treating ||V + dV||_c as a constant, thereby detaching it from the gradient graph"), as peft does.

The forward pass never builds ``W'``: with ``g = m / ||W + s B A||_c`` (per unit),

    W' x = g * (W x) + g * s B A x,   so the change to the base output is   (g - 1) * W x + g * s B A x.

That is an additive delta of the layer's input alone, so mixed batches, disabling and several adapters run
through the same :class:`~peftkit.layer.AdapterLayer` paths as LoRA. Merging writes ``W'`` itself and keeps
``||W + s B A||_c`` to undo it exactly (peft's approach: a vector, not a second weight).
"""

from __future__ import annotations

import torch
from torch import nn


def unit_norm(weight: torch.Tensor) -> torch.Tensor:
    """``||.||_c``: ``(units, fan) -> (units,)``, the L2 norm of each output unit's weights."""
    return torch.linalg.norm(weight, dim=1)


def dora_scale(magnitude: torch.Tensor, weight: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
    """``g = m / ||W + s B A||_c`` per unit ``(units,)``, the norm detached (sec. 4.3)."""
    norm = unit_norm(weight + update.detach()).detach()  # (units,)
    return magnitude / norm


class DoraParts(nn.Module):
    """The DoRA half of a LoRA layer: ``lora_magnitude_vector`` (peft's name and key) per DoRA adapter.

    A layer mixing this in lists ``"lora_magnitude_vector"`` in its ``adapter_containers`` and gives, for
    one adapter, its weight and its scaled update in the *unit layout* (one row per output unit):
    :meth:`unit_weight` and :meth:`unit_update`. Everything else (init, the delta, merge) is here.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.lora_magnitude_vector = nn.ParameterDict()  # adapter -> m (units,)
        self.merged_norms: dict[str, torch.Tensor] = {}  # adapter merged -> ||W + s B A||_c at merge time

    def unit_weight(self) -> torch.Tensor:  # pragma: no cover - abstract
        """The base weight, ``(units, fan)``, in full precision (dequantised when 4-bit)."""
        raise NotImplementedError

    def unit_update(self, name: str) -> torch.Tensor:  # pragma: no cover - abstract
        """``s B A`` of adapter ``name`` in the unit layout ``(units, fan)``."""
        raise NotImplementedError

    def from_units(self, weight: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """A ``(units, fan)`` tensor in the base weight's own layout."""
        raise NotImplementedError

    def is_dora(self, name: str) -> bool:
        return name in self.lora_magnitude_vector

    @torch.no_grad()
    def add_magnitude(self, name: str) -> None:
        """``m = ||W + s B A||_c``: the adapted weight is unchanged at init (eq. 5), whatever ``B A`` is."""
        weight, update = self._units(name)
        self.lora_magnitude_vector[name] = nn.Parameter(unit_norm(weight + update))  # (units,)

    def _units(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The base weight and adapter ``name``'s ``s B A`` in the unit layout, in the adapter's dtype."""
        update = self.unit_update(name)
        return self.unit_weight().to(update.dtype), update

    def dora_delta(self, name: str, base_out: torch.Tensor, lora_out: torch.Tensor) -> torch.Tensor:
        """``(g - 1) * W x + g * s B A x`` from ``W x`` (no bias) and ``s B A x``: ``(..., units)``."""
        weight, update = self._units(name)
        g = dora_scale(self.lora_magnitude_vector[name], weight, update).to(lora_out.dtype)  # (units,)
        return (g - 1) * base_out + g * lora_out

    # ---- merging: W <- g (W + s B A), undone with the norm kept -------------------------------------
    def merge_one(self, name: str) -> None:
        if not self.is_dora(name):
            return super().merge_one(name)
        self._dequantize_base()
        with torch.no_grad():
            weight, update = self._units(name)
            norm = unit_norm(weight + update)  # (units,)
            g = self.lora_magnitude_vector[name] / norm
            self._write_units(g[:, None] * (weight + update))
        self.merged_norms[name] = norm

    def unmerge_one(self, name: str) -> None:
        if not self.is_dora(name):
            return super().unmerge_one(name)
        g = self.lora_magnitude_vector[name] / self.merged_norms.pop(name)
        with torch.no_grad():
            weight, update = self._units(name)
            self._write_units(weight / g[:, None] - update)

    def _write_units(self, weight: torch.Tensor) -> None:
        base = self.base.weight
        base.copy_(self.from_units(weight).to(base.dtype))

    def dora_delta_weight(self, name: str) -> torch.Tensor:
        """What merging adapter ``name`` now would add to the base weight: ``W' - W``, in its layout."""
        weight, update = self._units(name)
        g = self.lora_magnitude_vector[name] / unit_norm(weight + update)
        return self.from_units(g[:, None] * (weight + update) - weight)

    def delete(self, name: str) -> None:
        super().delete(name)
        self.merged_norms.pop(name, None)
