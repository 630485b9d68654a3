"""Bottleneck adapter config (Houlsby et al. 2019; Pfeiffer et al. 2021; He et al. 2022)."""

from __future__ import annotations

from dataclasses import dataclass

from ...config import PeftConfig, check_choice, check_positive_int
from ...errors import ConfigError

PLACEMENTS = ("houlsby", "pfeiffer", "parallel")
ACTIVATIONS = ("relu", "gelu", "swish")
INITS = ("identity", "near_identity")

# which architecture slots (peftkit.slots) each placement puts an adapter after
PLACEMENT_SLOTS = {
    "houlsby": ("attention_output", "ffn_output"),
    "pfeiffer": ("ffn_output",),
    "parallel": ("ffn_output",),
}


@dataclass
class BottleneckConfig(PeftConfig):
    """A bottleneck adapter ``h <- h + s * W_up f(W_down LN(h))`` in every transformer layer.

    Where it goes comes from the model's architecture slots (:mod:`peftkit.slots`), not from
    ``target_modules``; ``layers_to_transform`` picks layers.

    Args:
        placement: ``"houlsby"``: after the attention output and after the FFN output (Houlsby et
            al. 2019, fig. 2); ``"pfeiffer"``: after the FFN output only (Pfeiffer et al. 2021,
            AdapterFusion sec. 3.1); ``"parallel"``: beside the FFN, reading the FFN's input and
            adding ``s *`` its output to the FFN's output (He et al. 2022, sec. 3).
        reduction_factor: bottleneck width = hidden size // reduction_factor (default 16).
        bottleneck_size: the width itself (instead of ``reduction_factor``).
        non_linearity: ``f``: ``"relu"``, ``"gelu"`` or ``"swish"``.
        adapter_layernorm: a LayerNorm on the adapter's input (``LN`` above; identity when false).
        scaling: ``s``; He et al. use 4 for parallel adapters.
        init_weights: ``"identity"``: ``W_down ~ N(0, 0.01^2)``, ``W_up = 0`` and zero biases, so the
            adapter starts as the exact identity; ``"near_identity"``: both matrices
            ``~ N(0, 0.01^2)`` truncated at 2 sigma (Houlsby et al. 2019, sec. 2.1).
    """

    placement: str = "pfeiffer"
    reduction_factor: float | None = None
    bottleneck_size: int | None = None
    non_linearity: str = "relu"
    adapter_layernorm: bool = False
    scaling: float = 1.0
    init_weights: str = "identity"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("placement", self.placement, PLACEMENTS)
        check_choice("non_linearity", self.non_linearity, ACTIVATIONS)
        check_choice("init_weights", self.init_weights, INITS)
        for name in ("target_modules", "exclude_modules"):
            if getattr(self, name) is not None:
                raise ConfigError(
                    name,
                    "bottleneck adapters are placed by architecture slots: choose `placement` "
                    "(houlsby, pfeiffer, parallel) and `layers_to_transform`, not module names",
                )
        if self.reduction_factor is not None and self.bottleneck_size is not None:
            raise ConfigError("bottleneck_size", "give reduction_factor or bottleneck_size, not both")
        if self.bottleneck_size is not None:
            check_positive_int("bottleneck_size", self.bottleneck_size)
        if self.reduction_factor is not None and self.reduction_factor < 1:
            raise ConfigError(
                "reduction_factor",
                f"must be >= 1 (the width is hidden size // reduction_factor), got {self.reduction_factor!r}",
            )

    def width_for(self, hidden: int) -> int:
        """The bottleneck width for a hidden size."""
        if self.bottleneck_size is not None:
            return self.bottleneck_size
        return max(1, int(hidden // (self.reduction_factor or 16)))

    @property
    def slots(self) -> tuple[str, ...]:
        return PLACEMENT_SLOTS[self.placement]
