"""Registration of rule-based selection (the injection is every sparse-delta method's)."""

from __future__ import annotations

from torch import nn

from ...errors import TargetError
from ...registry import register_method
from ...targeting import layer_index
from ..sparse_delta import SparseDeltaMethod
from .config import SelectionConfig


@register_method("selection", config=SelectionConfig)
class SelectionMethod(SparseDeltaMethod):
    """``last_k_layers`` keeps targets inside the last ``last_k`` layers; ``smallest_magnitude`` all."""

    def targets(self, model: nn.Module, config: SelectionConfig) -> list[str]:
        paths = super().targets(model, config)
        if config.rule != "last_k_layers":
            return paths
        index = {p: layer_index(p, config.layers_pattern) for p in paths}
        layered = [i for i in index.values() if i is not None]
        if not layered:
            raise TargetError(
                "selection: rule last_k_layers found no module inside a numbered layer list "
                "(e.g. model.layers.3); set layers_pattern, or use rule smallest_magnitude"
            )
        first = max(layered) + 1 - config.last_k
        return [p for p in paths if index[p] is not None and index[p] >= first]
