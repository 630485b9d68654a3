"""BitFit's registration: the targets are the modules that hold a bias."""

from __future__ import annotations

from torch import nn

from ...errors import TargetError
from ...registry import register_method
from ...targeting import iter_modules
from ..sparse_delta import SparseDeltaMethod
from .config import BitFitConfig


def has_bias(module: nn.Module) -> bool:
    return any(p.rsplit(".", 1)[-1] == "bias" for p, _ in module.named_parameters())


@register_method("bitfit", config=BitFitConfig)
class BitFitMethod(SparseDeltaMethod):
    def targets(self, model: nn.Module, config: BitFitConfig) -> list[str]:
        try:
            paths = super().targets(model, config)
        except TargetError:
            paths = []
        modules = dict(iter_modules(model))
        with_bias = [p for p in paths if has_bias(modules[p])]
        if not with_bias:
            raise TargetError(
                f"bitfit: {type(model).__name__} has no bias terms in the targeted modules "
                f"(target_modules={config.target_modules!r}); models such as Llama are built without "
                "biases, so BitFit cannot train anything there: use another method (e.g. lora)"
            )
        return with_bias
