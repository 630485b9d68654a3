"""LoRA config (Hu et al. 2021, sec. 4.1): ``h = W x + (alpha / r) * B A x``."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from ...config import PeftConfig, check_choice, check_positive, check_positive_int, check_range, check_regex

INITS = ("kaiming", "gaussian", "pissa")
BIASES = ("none", "all", "lora_only")


def pattern_lookup(pattern: dict, module_name: str, default):
    """peft's rule: a key matches a module whose name ends with it (regex allowed)."""
    for key, value in pattern.items():
        if re.match(rf"(.*\.)?({key})$", module_name):
            return value
    return default


@dataclass
class LoraConfig(PeftConfig):
    """Low-rank adaptation.

    Args:
        r: rank of ``B A``.
        lora_alpha: scale numerator; the update is scaled by ``lora_alpha / r``.
        lora_dropout: dropout on the adapter's input, in [0, 1).
        use_rslora: scale by ``lora_alpha / sqrt(r)`` (rank-stabilised LoRA).
        init_lora_weights: ``"kaiming"`` (A Kaiming-uniform, B = 0), ``"gaussian"`` (A ~ N(0, 1/r),
            B = 0) or ``"pissa"`` (A, B from the top-r SVD of W; W keeps the residual).
        rank_pattern / alpha_pattern: per-module overrides, keys are name suffixes or regexes.
        bias: which biases also train: ``"none"``, ``"all"``, or ``"lora_only"`` (of adapted layers).
    """

    r: int = 8
    lora_alpha: float = 8
    lora_dropout: float = 0.0
    use_rslora: bool = False
    init_lora_weights: str | bool = "kaiming"  # True: peft's name for "kaiming"
    rank_pattern: dict[str, int] = field(default_factory=dict)
    alpha_pattern: dict[str, float] = field(default_factory=dict)
    bias: str = "none"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.init_lora_weights is True:
            self.init_lora_weights = "kaiming"
        check_positive_int("r", self.r)
        check_positive("lora_alpha", self.lora_alpha)
        check_range("lora_dropout", self.lora_dropout, 0.0, 1.0)
        check_choice("init_lora_weights", self.init_lora_weights, INITS)
        check_choice("bias", self.bias, BIASES)
        for key, value in self.rank_pattern.items():
            check_regex(f"rank_pattern[{key!r}]", key)
            check_positive_int(f"rank_pattern[{key!r}]", value)
        for key, value in self.alpha_pattern.items():
            check_regex(f"alpha_pattern[{key!r}]", key)
            check_positive(f"alpha_pattern[{key!r}]", value)

    def rank_for(self, module_name: str) -> int:
        return pattern_lookup(self.rank_pattern, module_name, self.r)

    def alpha_for(self, module_name: str) -> float:
        return pattern_lookup(self.alpha_pattern, module_name, self.lora_alpha)

    def scaling_for(self, module_name: str) -> float:
        r, alpha = self.rank_for(module_name), self.alpha_for(module_name)
        return alpha / math.sqrt(r) if self.use_rslora else alpha / r
