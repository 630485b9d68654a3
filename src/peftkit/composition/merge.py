"""Weighted merging of LoRA adapters into a new LoRA adapter on the same model.

Three combinations (``w_i`` may be negative: task negation, Ilharco et al. 2023):

* ``linear`` (LoRAHub, Huang et al. 2023): ``A = sum w_i A_i``, ``B = sum w_i B_i``, each weighted;
  ranks must be equal. The delta is ``B A``, which has cross terms ``w_i w_j B_i A_j``.
* ``cat``: ranks add, ``A = [w_i A_i; ...]``, ``B = [B_1, ..., B_n]``, so ``B A = sum w_i B_i A_i``
  exactly (the weighted sum of the deltas).
* ``svd``: the exact weighted delta sum truncated to ``svd_rank`` by its top singular triplets
  (the best rank-k approximation in the Frobenius norm, Eckart-Young).

Each source's scale ``s_i = alpha_i / r_i`` is folded into its factors (``sqrt(s_i)`` on each for
``linear``, ``s_i`` on ``A`` for ``cat``), so sources may have different ranks and alphas and the
merged adapter has scale 1 (``lora_alpha = r`` per module).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

import torch

from ..config import PeftConfig, check_finite
from ..errors import AdapterError, ConfigError
from ..methods.lora import LoraConfig, LoraEmbedding, LoraLinear

COMBINATIONS = ("linear", "cat", "svd")


@dataclass
class Factors:
    """One module's LoRA factors with the scale folded in: the delta is ``B @ A``."""

    A: torch.Tensor  # (r, d_in)
    B: torch.Tensor  # (d_out, r)


def read_factors(layer: LoraLinear | LoraEmbedding, name: str) -> Factors:
    """``(A, B)`` of adapter ``name`` with ``delta = B @ A`` (the layer's orientation is its own)."""
    if isinstance(layer, LoraLinear):
        A, B = layer.lora_A[name].weight, layer.lora_B[name].weight
    else:
        A, B = layer.lora_embedding_A[name], layer.lora_embedding_B[name]
    return Factors(A.detach().float(), B.detach().float())


def write_factors(layer: LoraLinear | LoraEmbedding, name: str, f: Factors) -> None:
    if isinstance(layer, LoraLinear):
        A, B = layer.lora_A[name].weight, layer.lora_B[name].weight
    else:
        A, B = layer.lora_embedding_A[name], layer.lora_embedding_B[name]
    with torch.no_grad():
        A.copy_(f.A.to(A.dtype))
        B.copy_(f.B.to(B.dtype))


def combine(factors: list[Factors], scales: list[float], weights: list[float], how: str, rank: int | None):
    """The merged factors of one module (scale 1); ``how`` is one of :data:`COMBINATIONS`."""
    if how == "linear":
        A = sum(w * s**0.5 * f.A for f, s, w in zip(factors, scales, weights))  # (r, d_in)
        B = sum(w * s**0.5 * f.B for f, s, w in zip(factors, scales, weights))  # (d_out, r)
        return Factors(A, B)
    if how == "cat":
        A = torch.cat([w * s * f.A for f, s, w in zip(factors, scales, weights)], 0)  # (sum r_i, d_in)
        B = torch.cat([f.B for f in factors], 1)  # (d_out, sum r_i)
        return Factors(A, B)
    delta = sum(w * s * f.B @ f.A for f, s, w in zip(factors, scales, weights))  # (d_out, d_in)
    U, S, Vh = torch.linalg.svd(delta, full_matrices=False)
    k = min(rank, S.numel())
    root = S[:k].sqrt()
    return Factors(root[:, None] * Vh[:k], U[:, :k] * root[None, :])  # (k, d_in), (d_out, k)


def merged_rank(ranks: list[int], how: str, svd_rank: int | None) -> int:
    if how == "cat":
        return sum(ranks)
    if how == "svd":
        return svd_rank
    return ranks[0]


def _check(model, adapters: list[str], weights: list[float], how: str, svd_rank: int | None) -> None:
    if how not in COMBINATIONS:
        raise ConfigError("combination", f"must be one of {list(COMBINATIONS)}, got {how!r}")
    if not adapters:
        raise ConfigError("adapters", "name at least one adapter to merge")
    if len(weights) != len(adapters):
        raise ConfigError("weights", f"{len(weights)} weights for {len(adapters)} adapters: give one each")
    check_finite("weights", list(weights))
    if how == "svd" and (not isinstance(svd_rank, int) or svd_rank <= 0):
        raise ConfigError("svd_rank", f"the svd combination needs a positive target rank, got {svd_rank!r}")
    model.check_known(adapters)
    for name in adapters:
        _check_source(name, model.peft_config[name])


def _check_source(name: str, config: PeftConfig) -> None:
    """A source whose A and B factors alone describe it (plain LoRA: nothing a weighting would drop)."""
    if not isinstance(config, LoraConfig):
        raise AdapterError(f"adapter {name!r} is {config.method}: only LoRA adapters merge here")
    if config.residual_init:
        raise AdapterError(
            f"adapter {name!r} is {config.init_lora_weights} (its base holds a residual); reload it saved"
        )
    if config.use_dora or config.lora_bias:
        raise AdapterError(
            f"adapter {name!r} has {'DoRA magnitudes' if config.use_dora else 'a bias on B'}, which "
            "weighted merging of A and B factors would drop; merge plain LoRA adapters"
        )
    if config.modules_to_save:
        raise AdapterError(
            f"adapter {name!r} trains whole modules ({config.modules_to_save}), which cannot be "
            "weighted; merge adapters without modules_to_save"
        )
    if config.trainable_token_indices is not None:
        raise AdapterError(
            f"adapter {name!r} trains embedding rows (trainable_token_indices), which cannot be "
            "weighted; merge adapters without trainable_token_indices"
        )


def _module_plan(model, adapters: list[str], how: str) -> dict[str, list[str]]:
    """Each targeted module path and the source adapters present there."""
    plan: dict[str, list[str]] = {}
    for path, layer in model.layers():
        present = [a for a in adapters if a in layer.adapter_names()]
        if present:
            if not isinstance(layer, (LoraLinear, LoraEmbedding)):
                raise AdapterError(f"{path} holds a {type(layer).__name__}, not a LoRA layer")
            plan[path] = present
    if how == "linear":
        partial = [p for p, present in plan.items() if len(present) != len(adapters)]
        if partial:
            raise AdapterError(
                f"linear merging needs every adapter on the same modules; {partial[:3]} lack some "
                "(use combination='cat' or 'svd', which treat a missing adapter as zero)"
            )
    return plan


def add_weighted_adapter(
    model,
    adapters: list[str],
    weights: list[float],
    adapter_name: str,
    combination: str = "linear",
    svd_rank: int | None = None,
) -> LoraConfig:
    """Add LoRA adapter ``adapter_name`` to ``model`` (a PeftModel) merging ``adapters`` with ``weights``.

    Returns the new adapter's config (not made active: call ``set_adapter``). The sources stay.
    """
    _check(model, adapters, weights, combination, svd_rank)
    plan = _module_plan(model, adapters, combination)
    layers = dict(model.layers())
    ranks = {}
    for path, present in plan.items():
        source_ranks = [read_factors(layers[path], a).A.shape[0] for a in present]
        if combination == "linear" and len(set(source_ranks)) > 1:
            raise AdapterError(
                f"linear merging needs equal ranks; {path} has ranks {dict(zip(present, source_ranks))} "
                "(use combination='cat' or 'svd')"
            )
        ranks[path] = merged_rank(source_ranks, combination, svd_rank)
    config = _merged_config(ranks)
    model.add_adapter(adapter_name, config)
    write_weighted(model, adapters, weights, adapter_name, combination, svd_rank)
    return config


def write_weighted(
    model, adapters: list[str], weights: list[float], target: str, combination: str, svd_rank: int | None
) -> None:
    """Overwrite the factors of existing adapter ``target`` with the merge (LoRAHub calls this per step)."""
    weight_of = dict(zip(adapters, weights))
    for _path, layer in model.layers():
        if target not in layer.adapter_names():
            continue
        present = [a for a in adapters if a in layer.adapter_names()]
        factors = [read_factors(layer, a) for a in present]
        scales = [layer.scaling[a] for a in present]
        merged = combine(factors, scales, [weight_of[a] for a in present], combination, svd_rank)
        if combination == "svd":
            merged = pad_rank(merged, read_factors(layer, target).A.shape[0])
        write_factors(layer, target, merged)


def pad_rank(f: Factors, rank: int) -> Factors:
    """SVD of a delta of rank below the target: zero rows/columns fill the rest (exactly the same delta)."""
    missing = rank - f.A.shape[0]
    if missing <= 0:
        return f
    A = torch.cat([f.A, f.A.new_zeros(missing, f.A.shape[1])], 0)
    B = torch.cat([f.B, f.B.new_zeros(f.B.shape[0], missing)], 1)
    return Factors(A, B)


def _merged_config(ranks: dict[str, int]) -> LoraConfig:
    """Scale 1 everywhere (``lora_alpha = r`` per module), the most common rank as ``r``."""
    r = Counter(ranks.values()).most_common(1)[0][0]
    pattern = {exact_pattern(p): k for p, k in ranks.items() if k != r}
    return LoraConfig(
        r=r,
        lora_alpha=r,
        target_modules=sorted(ranks),
        rank_pattern=pattern,
        alpha_pattern=dict(pattern),
    )


def exact_pattern(path: str) -> str:
    """A rank_pattern key matching this module path only (keys are suffix regexes)."""
    return re.escape(path)
