"""Parameter accounting: where a model's parameters live, the seeds' estimate, and adapter cost.

The estimate (REFERENCE.md, "Parameter counting"): a transformer layer holds about ``12 d^2``
parameters (attention ``4 d^2``, FFN ``8 d^2`` when ``d_ff = 4 d``) and the embedding ``V d``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from .config import PeftConfig

# config attribute names for (hidden size, layers, vocab) across families
_DIMS = {
    "d": ("hidden_size", "n_embd", "d_model"),
    "L": ("num_hidden_layers", "n_layer", "num_layers"),
    "V": ("vocab_size",),
}


def human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return f"{n:.1f} GiB"


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in module.parameters()}.values())


@dataclass(frozen=True)
class Estimate:
    d: int
    L: int
    V: int

    @property
    def total(self) -> int:
        return 12 * self.d**2 * self.L + self.V * self.d

    def __str__(self) -> str:
        return f"12*d^2*L + V*d = 12*{self.d}^2*{self.L} + {self.V}*{self.d} = {self.total:,}"


def seed_estimate(config) -> Estimate | None:
    """The ``12 d^2 L + V d`` estimate from a transformers config (None if a size is missing)."""
    dims = {}
    for key, names in _DIMS.items():
        dims[key] = next(
            (getattr(config, n) for n in names if isinstance(getattr(config, n, None), int)), None
        )
    if None in dims.values():
        return None
    if getattr(config, "is_encoder_decoder", False):  # encoder + decoder stacks
        dims["L"] += getattr(config, "num_decoder_layers", dims["L"])
    return Estimate(**dims)


def tree_lines(module: nn.Module, depth: int = 3, indent: str = "") -> list[str]:
    """Module tree with parameter counts; runs of identical blocks are shown once with a count."""
    lines: list[str] = []
    for name, child in module.named_children():
        n = count(child)
        if not n:
            continue
        if isinstance(child, nn.ModuleList) and len(child) and len({type(c) for c in child}) == 1:
            each = count(child[0])
            lines.append(f"{indent}{name}: {len(child)} x {type(child[0]).__name__}  {n:,} ({each:,} each)")
            if depth > 1:
                lines += tree_lines(child[0], depth - 1, indent + "    ")
            continue
        lines.append(f"{indent}{name}: {type(child).__name__}  {n:,}")
        if depth > 1:
            lines += tree_lines(child, depth - 1, indent + "  ")
    return lines


@dataclass(frozen=True)
class AdapterCost:
    params: int
    modules: int
    bytes: int

    def describe(self, base_params: int, method: str) -> str:
        return (
            f"{method} adds {self.params:,} parameters on {self.modules} modules "
            f"({100 * self.params / base_params:.3f}% of the base), {human_bytes(self.bytes)} as fp32"
        )


def adapter_cost(model: nn.Module, config: PeftConfig) -> AdapterCost:
    """What ``config`` would add to ``model``; the model is copied, never modified."""
    from .model import get_peft_model

    if getattr(config, "residual_init", False):  # counting needs no SVD or QR of the base
        config = config.replace(init_lora_weights="kaiming")
    peft_model = get_peft_model(copy.deepcopy(model), config.replace(inference_mode=False))
    state = peft_model.adapter_state_dict("default")
    params = sum(t.numel() for t in state.values())
    return AdapterCost(params, len(peft_model.targets["default"]), params * 4)


def model_on_meta(config) -> nn.Module:
    """Build a transformers model from its config without allocating weights."""
    from transformers import AutoModel, AutoModelForCausalLM

    auto = AutoModelForCausalLM if _is_causal(config) else AutoModel
    with torch.device("meta"):
        return auto.from_config(config)


def _is_causal(config) -> bool:
    return any(a.endswith("ForCausalLM") for a in (getattr(config, "architectures", None) or []))
