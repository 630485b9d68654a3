"""LoRA config (Hu et al. 2021, sec. 4.1): ``h = W x + (alpha / r) * B A x``, with peft's options: DoRA
(``use_dora``), a bias on B (``lora_bias``) and the initialisations (random, Gaussian, PiSSA, OLoRA)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from ...config import PeftConfig, check_choice, check_positive, check_positive_int, check_range, check_regex
from ...errors import ConfigError

INITS = ("kaiming", "gaussian", "pissa", "olora")  # and False (peft: B random too) and "pissa_niter_<n>"
# inits that take their factors out of the base weight, which then holds only the residual
RESIDUAL_INITS = ("pissa", "olora")
PISSA_NITER = re.compile(r"pissa_niter_([1-9]\d*)")
BIASES = ("none", "all", "lora_only")


def is_residual_init(init: str | bool) -> bool:
    """PiSSA (``"pissa"``, ``"pissa_niter_<n>"``) and OLoRA take A and B out of the base weight."""
    return isinstance(init, str) and (init in RESIDUAL_INITS or PISSA_NITER.fullmatch(init) is not None)


def _is_ids(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and all(
        isinstance(i, int) and not isinstance(i, bool) for i in value
    )


def check_token_indices(value: Any) -> list[int] | dict[str, list[int]]:
    """``trainable_token_indices``: a non-empty list of token ids, or ``{module name: list}``."""
    if _is_ids(value) and value:
        return list(value)
    keys_ok = isinstance(value, dict) and value and all(isinstance(k, str) and k for k in value)
    if keys_ok and all(_is_ids(v) and v for v in value.values()):
        return {k: list(v) for k, v in value.items()}
    raise ConfigError(
        "trainable_token_indices",
        f"expected a non-empty list of token ids or {{module name: list of token ids}}, got {value!r}",
    )


def check_layer_map(value: Any) -> list[list[int]]:
    """``layer_replication``: a non-empty list of ``[start, end]`` layer ranges with ``0 <= start < end``."""
    ok = isinstance(value, (list, tuple)) and value
    ok = ok and all(_is_ids(pair) and len(pair) == 2 and 0 <= pair[0] < pair[1] for pair in value)
    if not ok:
        raise ConfigError(
            "layer_replication",
            f"expected a list of [start, end] layer ranges with 0 <= start < end, got {value!r}",
        )
    return [list(pair) for pair in value]


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
        init_lora_weights: ``"kaiming"`` (A Kaiming-uniform, B = 0; peft's ``True``), ``"gaussian"``
            (A ~ N(0, 1/r), B = 0), ``False`` (A and B both random: not an identity at init, for tests),
            ``"pissa"`` (A, B from the top-r SVD of W; W keeps the residual), ``"pissa_niter_<n>"`` (the same
            from a randomised SVD with n subspace iterations) or ``"olora"`` (A, B from the QR decomposition
            of W; W keeps the residual).
        rank_pattern / alpha_pattern: per-module overrides, keys are name suffixes or regexes.
        bias: which biases also train: ``"none"``, ``"all"``, or ``"lora_only"`` (of adapted layers).
        use_dora: weight-decomposed LoRA (DoRA, Liu et al. 2024): a trained magnitude per output unit
            times the unit-norm direction of ``W + s B A``.
        lora_bias: give ``B`` a trained bias (zero at init); it merges into the base layer's bias.
        fan_in_fan_out: whether the adapted layers store their weight ``(d_in, d_out)`` (GPT-2's Conv1D).
            Read from each layer's type: a value that contradicts it is corrected with a warning (as peft).
        trainable_token_indices: token ids whose rows of the input embedding train (the rest stay frozen), or
            ``{module name: ids}`` for other embeddings; an output embedding tied to a trained one follows
            its rows (:mod:`peftkit.trainable_tokens`).
        layer_replication: ``[[start, end), ...]`` ranges of the base's transformer layers stacked into a
            deeper model whose copies share base weights, each copy with its own LoRA
            (:mod:`peftkit.replication`); such adapters cannot be merged.
    """

    r: int = 8
    lora_alpha: float = 8
    lora_dropout: float = 0.0
    use_rslora: bool = False
    init_lora_weights: str | bool = "kaiming"  # True: peft's name for "kaiming"
    rank_pattern: dict[str, int] = field(default_factory=dict)
    alpha_pattern: dict[str, float] = field(default_factory=dict)
    bias: str = "none"
    use_dora: bool = False
    lora_bias: bool = False
    fan_in_fan_out: bool = False
    trainable_token_indices: list[int] | dict[str, list[int]] | None = None
    layer_replication: list[list[int]] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.init_lora_weights is True:
            self.init_lora_weights = "kaiming"
        check_positive_int("r", self.r)
        check_positive("lora_alpha", self.lora_alpha)
        check_range("lora_dropout", self.lora_dropout, 0.0, 1.0)
        if self.init_lora_weights is not False and not PISSA_NITER.fullmatch(str(self.init_lora_weights)):
            check_choice("init_lora_weights", self.init_lora_weights, (*INITS, False, "pissa_niter_<n>"))
        check_choice("bias", self.bias, BIASES)
        for key, value in self.rank_pattern.items():
            check_regex(f"rank_pattern[{key!r}]", key)
            check_positive_int(f"rank_pattern[{key!r}]", value)
        for key, value in self.alpha_pattern.items():
            check_regex(f"alpha_pattern[{key!r}]", key)
            check_positive(f"alpha_pattern[{key!r}]", value)
        self._check_combinations()
        if self.trainable_token_indices is not None:
            self.trainable_token_indices = check_token_indices(self.trainable_token_indices)
        if self.layer_replication is not None:
            self.layer_replication = check_layer_map(self.layer_replication)

    def _check_combinations(self) -> None:
        """Options that exclude each other (peft refuses the first two the same way)."""
        if self.lora_bias and self.init_lora_weights not in ("kaiming", False):
            raise ConfigError(
                "lora_bias",
                f"lora_bias=True works with init_lora_weights=True or False, not {self.init_lora_weights!r}",
            )
        if self.lora_bias and self.use_dora:
            raise ConfigError("lora_bias", "lora_bias=True is not supported with DoRA: set use_dora=False")
        if self.use_dora and self.residual_init:
            raise ConfigError(
                "use_dora",
                f"DoRA with init_lora_weights={self.init_lora_weights!r} is not supported: the adapter could "
                "not be saved for the original base (DoRA's rescaling is not a low-rank update)",
            )

    @property
    def residual_init(self) -> bool:
        """Whether the init takes A and B out of the base weight (PiSSA, OLoRA), leaving the residual."""
        return is_residual_init(self.init_lora_weights)

    def rank_for(self, module_name: str) -> int:
        return pattern_lookup(self.rank_pattern, module_name, self.r)

    def alpha_for(self, module_name: str) -> float:
        return pattern_lookup(self.alpha_pattern, module_name, self.lora_alpha)

    def scaling_for(self, module_name: str) -> float:
        r, alpha = self.rank_for(module_name), self.alpha_for(module_name)
        return alpha / math.sqrt(r) if self.use_rslora else alpha / r
