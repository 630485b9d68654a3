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
through the same :class:`~peftkit.layer.AdapterLayer` paths as LoRA. Merging adds that delta to the weight
(one adapter: ``W <- W'``) and keeps ``g``, a vector, to take it back out (as peft keeps the norm).
"""

from __future__ import annotations

from collections.abc import Callable

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

    A layer mixing this in lists ``"lora_magnitude_vector"`` in its ``adapter_containers`` and gives its
    weight and an adapter's scaled update in the *unit layout* (one row per output unit):
    :meth:`unit_weight` and :meth:`unit_update`. Everything else (init, the delta, merging) is here.

    Merging adds the same delta the forward pass adds, ``(g - 1) W + g s B A``, with ``W`` the base
    weight *without* merged adapters (:meth:`unmerged_weight`), so any mix of merged LoRA and DoRA
    adapters gives the unmerged outputs, and unmerging takes each delta back out.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.lora_magnitude_vector = nn.ParameterDict()  # adapter -> m (units,)
        self.merged_scales: dict[str, torch.Tensor] = {}  # DoRA adapter merged -> its g (units,)

    def unit_weight(self) -> torch.Tensor:  # pragma: no cover - abstract
        """The base weight as it is now, ``(units, fan)``, full precision (dequantised when 4-bit)."""
        raise NotImplementedError

    def unit_update(self, name: str) -> torch.Tensor:  # pragma: no cover - abstract
        """``s B A`` of adapter ``name`` in the unit layout ``(units, fan)``."""
        raise NotImplementedError

    def from_units(self, weight: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """A ``(units, fan)`` tensor in the base weight's own layout."""
        raise NotImplementedError

    def is_dora(self, name: str) -> bool:
        return name in self.lora_magnitude_vector

    def unmerged_weight(self, dtype: torch.dtype) -> torch.Tensor:
        """``W``: the base weight without the merged adapters, ``(units, fan)`` in ``dtype``."""
        weight = self.unit_weight().to(dtype)
        if not self.merged:
            return weight
        rows, known = self._merged_parts(self.merged, weight)
        return (weight - known) / rows[:, None]

    def _merged_parts(self, names: list[str], like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """With adapters ``names`` merged the weight is ``rows * W + known``: ``rows = 1 + sum_D (g_D - 1)``
        over the DoRA ones (``g`` itself for one, so a small ``g`` loses no precision), ``known`` the sum
        of ``s B A`` (LoRA) and ``g s B A`` (DoRA)."""
        rows: torch.Tensor | None = None
        known = torch.zeros_like(like)
        for name in names:
            g, update = self.merged_scales.get(name), self.unit_update(name).detach().to(like.dtype)
            if g is None:
                known = known + update
                continue
            known = known + g[:, None] * update
            rows = g if rows is None else rows + (g - 1)
        return (torch.ones_like(like[:, 0]) if rows is None else rows), known  # (units,), (units, fan)

    def _units(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The unmerged base weight and adapter ``name``'s ``s B A`` in the unit layout, adapter dtype."""
        update = self.unit_update(name)
        return self.unmerged_weight(update.dtype), update

    @torch.no_grad()
    def add_magnitude(self, name: str) -> None:
        """``m = ||W + s B A||_c``: the adapted weight is unchanged at init (eq. 5), whatever ``B A`` is."""
        weight, update = self._units(name)
        self.lora_magnitude_vector[name] = nn.Parameter(unit_norm(weight + update))  # (units,)

    def dora_delta(
        self, name: str, lora_out: torch.Tensor, apply: Callable[[torch.Tensor], torch.Tensor]
    ) -> torch.Tensor:
        """``(g - 1) * W x + g * s B A x``, ``(..., units)``, from ``s B A x`` and ``apply(W) = W x``."""
        weight, update = self._units(name)
        g = dora_scale(self.lora_magnitude_vector[name], weight, update).to(lora_out.dtype)  # (units,)
        return (g - 1) * apply(weight) + g * lora_out

    # ---- merging: the weight becomes rows * W + known with this adapter's g and g s B A included ------
    def merge_one(self, name: str) -> None:
        if not self.is_dora(name):
            return super().merge_one(name)
        self._dequantize_base()
        with torch.no_grad():
            weight, update = self._units(name)
            self.merged_scales[name] = self.lora_magnitude_vector[name].detach() / unit_norm(weight + update)
            self._write_units(weight, [*self.merged, name])

    def unmerge_one(self, name: str) -> None:
        if not self.is_dora(name):
            return super().unmerge_one(name)
        with torch.no_grad():
            weight, _ = self._units(name)
            self._write_units(weight, [n for n in self.merged if n != name])
        del self.merged_scales[name]

    def _write_units(self, unmerged: torch.Tensor, names: list[str]) -> None:
        """Write ``rows * W + known`` for adapters ``names`` merged into the base weight."""
        rows, known = self._merged_parts(names, unmerged)
        base = self.base.weight
        base.copy_(self.from_units(rows[:, None] * unmerged + known).to(base.dtype))

    def dora_delta_weight(self, name: str) -> torch.Tensor:
        """What merging adapter ``name`` adds to the base weight, ``(g - 1) W + g s B A``, in its layout."""
        weight, update = self._units(name)
        g = self.lora_magnitude_vector[name] / unit_norm(weight + update)
        return self.from_units((g - 1)[:, None] * weight + g[:, None] * update)

    def delete(self, name: str) -> None:
        super().delete(name)
        self.merged_scales.pop(name, None)
