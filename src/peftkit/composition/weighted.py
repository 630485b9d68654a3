"""peft's ``add_weighted_adapter``: a new LoRA adapter merged from existing ones, with peft's combinations and
semantics (``PeftModel.add_weighted_adapter`` calls this).

Every source's scale ``s_i`` is folded in and the new adapter has scale 1 (``lora_alpha = r``):

* ``linear``, ``ties``, ``dare_linear``, ``dare_ties``, ``magnitude_prune``: the factors are merged
  separately (:mod:`.task_arithmetic`), ``A`` with weights ``sign(w_i) sqrt(|w_i s_i|)`` and ``B`` with
  ``sqrt(|w_i s_i|)``; one source with weight ``w`` gives exactly ``w dW`` (a negative weight negates),
  several give cross terms ``B_i A_j``, so this is an approximation. Ranks must be equal.
* ``cat``: ranks add, ``A = [w_i s_i A_i; ...]``, ``B = [B_1, ..., B_n]``: exactly ``sum w_i dW_i``.
* ``svd``, ``ties_svd``, ``dare_linear_svd``, ``dare_ties_svd``, ``magnitude_prune_svd``: the deltas
  ``dW_i = s_i B_i A_i`` are merged whole, then truncated to ``svd_rank`` (default: the largest source
  rank) by their top singular triplets, ``B = U S``, ``A = V^T`` (Eckart-Young).

One source always combines ``linear``. (IA)^3 adapters merge as peft merges them: the new vector is
``sum w_i l_i`` (:func:`add_weighted_ia3`). peftkit's own weighted merge (LoRAHub's weights on both factors)
is :func:`peftkit.composition.add_weighted_adapter`.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import torch

from ..config import check_choice, check_finite
from ..errors import AdapterError, ConfigError
from ..methods.ia3 import IA3Config
from ..methods.lora import LoraConfig, LoraEmbedding, LoraLinear
from ..modules_to_save import ModulesToSaveWrapper
from . import task_arithmetic
from .merge import Factors, exact_pattern, pad_rank, read_factors, write_factors

FACTOR_WISE = ("linear", "ties", "dare_linear", "dare_ties", "magnitude_prune")
DELTA_WISE = ("svd", "ties_svd", "dare_linear_svd", "dare_ties_svd", "magnitude_prune_svd")
COMBINATION_TYPES = (*FACTOR_WISE, "cat", *DELTA_WISE)


@dataclass(frozen=True)
class Options:
    """How a weighted merge runs (peft's keyword arguments)."""

    combination: str
    svd_rank: int | None = None
    svd_clamp: float | None = None
    svd_full_matrices: bool = True
    svd_driver: str | None = None
    density: float | None = None
    majority_sign_method: str = "total"


def add_weighted_adapter(
    model, adapters: list[str], weights: list[float], adapter_name: str, options: Options
):
    """Add an adapter ``adapter_name`` to ``model`` (a PeftModel) merging LoRA (or (IA)^3) ``adapters`` with
    ``weights`` (not made active). The sources stay."""
    if adapters and all(isinstance(model.peft_config.get(a), IA3Config) for a in adapters):
        return add_weighted_ia3(model, adapters, weights, adapter_name)
    _check(model, adapters, weights, adapter_name, options)
    if len(adapters) == 1:
        options = Options(**{**options.__dict__, "combination": "linear"})
    config = _merged_config(model, adapters, options)
    model.add_adapter(adapter_name, config)
    with torch.no_grad():
        for _, layer in model.layers():
            if adapter_name in layer.adapter_names() and isinstance(layer, (LoraLinear, LoraEmbedding)):
                _write(layer, adapters, weights, adapter_name, options)


def _check(model, adapters: list[str], weights: list[float], name: str, options: Options) -> None:
    check_choice("combination_type", options.combination, COMBINATION_TYPES)
    _check_sources(model, adapters, weights, name)
    for adapter in adapters:
        config = model.peft_config[adapter]
        if not isinstance(config, LoraConfig):
            raise AdapterError(
                f"adapter {adapter!r} is {config.method}: LoRA (or all (IA)^3) adapters merge here"
            )
        if getattr(config, "residual_init", config.init_lora_weights == "pissa"):
            raise AdapterError(
                f"adapter {adapter!r} rewrote its base weights (init_lora_weights); reload it saved"
            )


def _check_sources(model, adapters: list[str], weights: list[float], name: str) -> None:
    """What every weighted merge needs: known sources, one finite weight each, a new name, and no module
    that two sources train whole (``modules_to_save``: there is no weighting a whole module), and no
    source training embedding rows (``trainable_token_indices``: rows are replaced, not summed)."""
    if not adapters:
        raise ConfigError("adapters", "name at least one adapter to merge")
    if len(weights) != len(adapters):
        raise ConfigError("weights", f"{len(weights)} weights for {len(adapters)} adapters: give one each")
    check_finite("weights", [float(w) for w in weights])
    model.check_known(adapters)
    if name in model.peft_config:
        raise AdapterError(f"adapter {name!r} exists; delete_adapter() it first or choose another name")
    rows = [a for a in adapters if getattr(model.peft_config[a], "trainable_token_indices", None) is not None]
    if rows:
        raise AdapterError(
            f"adapters {rows} train embedding rows (trainable_token_indices), which cannot be weighted; "
            "add weighted adapters from adapters without trainable_token_indices"
        )
    shared = [
        path
        for path, layer in model.layers()
        if isinstance(layer, ModulesToSaveWrapper) and sum(a in layer.modules_to_save for a in adapters) > 1
    ]
    if shared:
        raise AdapterError(
            "Cannot add weighted adapters if they target the same module with modules_to_save, but found "
            f"{len(shared)} such instance(s) ({shared[0]})."
        )


def _rank(config: LoraConfig) -> int:
    """peft's rank of a source: ``r``, or the largest in ``rank_pattern``."""
    return max(config.r, *config.rank_pattern.values()) if config.rank_pattern else config.r


def _merged_config(model, adapters: list[str], options: Options) -> LoraConfig:
    """The first source's config with the new rank(s), scale 1 and every source's targets."""
    configs = [model.peft_config[a] for a in adapters]
    ranks = [_rank(c) for c in configs]
    how = options.combination
    if how in FACTOR_WISE and len(set(ranks)) != 1:
        raise AdapterError(
            "All adapters must have the same r value when using combination_type linear, ties, dare_ties or "
            f"dare_linear (ranks {dict(zip(adapters, ranks))}; use combination_type='cat' or 'svd')."
        )
    if how in DELTA_WISE:
        per_module = dict.fromkeys(_module_ranks(model, adapters), options.svd_rank or max(ranks))
    elif how == "cat":
        per_module = _module_ranks(model, adapters)
    else:
        per_module = dict.fromkeys(_module_ranks(model, adapters), ranks[0])
    r = Counter(per_module.values()).most_common(1)[0][0]
    pattern = {exact_pattern(p): k for p, k in per_module.items() if k != r}
    return configs[0].replace(
        r=r,
        lora_alpha=r,
        use_rslora=False,
        target_modules=_union_targets(configs),
        rank_pattern=pattern,
        alpha_pattern=dict(pattern),
    )


def _module_ranks(model, adapters: list[str]) -> dict[str, int]:
    """Each LoRA layer some source adapts, with the sum of the sources' ranks there (``cat``'s rank)."""
    ranks: dict[str, int] = {}
    for path, layer in model.layers():
        if isinstance(layer, (LoraLinear, LoraEmbedding)):
            present = [a for a in adapters if a in layer.adapter_names()]
            if present:
                ranks[path] = sum(read_factors(layer, a).A.shape[0] for a in present)
    return ranks


def _union_targets(configs: list, field: str = "target_modules") -> list[str] | str:
    """Every source's modules: the union of lists, or the alternation of regexes (not a mix of both)."""
    values = [getattr(c, field) or [] for c in configs]
    kinds = {isinstance(v, str) for v in values}
    if len(kinds) > 1:
        raise AdapterError(
            f"all adapter configs should follow the same {field} type. Combining adapters with "
            f"`{field}` type being a mix of list/set and string is not supported."
        )
    if kinds == {True}:
        return "|".join(f"({v})" for v in values)
    return sorted({t for v in values for t in v})


def add_weighted_ia3(model, adapters: list[str], weights: list[float], adapter_name: str) -> None:
    """(IA)^3 adapters merged as peft merges them: a new adapter on every source's modules whose vector is
    ``sum w_i l_i`` where a source adapts the module (not made active)."""
    _check_sources(model, adapters, weights, adapter_name)
    configs = [model.peft_config[a] for a in adapters]
    config = configs[0].replace(
        target_modules=_union_targets(configs),
        feedforward_modules=_union_targets(configs, "feedforward_modules"),
    )
    model.add_adapter(adapter_name, config)
    with torch.no_grad():
        for _, layer in model.layers():
            if adapter_name not in getattr(layer, "ia3_l", {}):
                continue
            target = layer.ia3_l[adapter_name]
            target.zero_()
            for adapter, weight in zip(adapters, weights):
                if adapter in layer.ia3_l:
                    target.add_(float(weight) * layer.ia3_l[adapter])


def _write(layer, adapters: list[str], weights: list[float], target: str, options: Options) -> None:
    present = [(a, w) for a, w in zip(adapters, weights) if a in layer.adapter_names()]
    rank = read_factors(layer, target).A.shape[0]  # the new adapter's rank here
    factors = [read_factors(layer, a) for a, _ in present]
    scaled = [float(w) * layer.scaling[a] for a, w in present]  # w_i s_i
    how = options.combination
    if how == "cat":
        merged = Factors(
            torch.cat([ws * f.A for f, ws in zip(factors, scaled)], 0),  # (sum r_i, d_in)
            torch.cat([f.B for f in factors], 1),  # (d_out, sum r_i)
        )
    elif how in FACTOR_WISE:
        merged = _factor_wise(factors, scaled, options)
    else:
        merged = _delta_wise(factors, scaled, options, rank)
    write_factors(layer, target, pad_rank(merged, rank))


def _factor_wise(factors: list[Factors], scaled: list[float], options: Options) -> Factors:
    """A and B merged apart; the sign goes on A only, so one negative source negates its delta."""
    w_a = torch.tensor([math.copysign(math.sqrt(abs(ws)), ws) for ws in scaled])
    w_b = torch.tensor([math.sqrt(abs(ws)) for ws in scaled])
    how, density, sign = options.combination, options.density, options.majority_sign_method
    A = task_arithmetic.merge(how, [f.A for f in factors], w_a, density, sign)  # (r, d_in)
    B = task_arithmetic.merge(how, [f.B for f in factors], w_b, density, sign)  # (d_out, r)
    return Factors(A, B)


def _delta_wise(factors: list[Factors], scaled: list[float], options: Options, rank: int) -> Factors:
    """The merged delta's top ``rank`` singular triplets: ``B = U S`` (d_out, k), ``A = V^T`` (k, d_in)."""
    how = options.combination.removesuffix("_svd")
    how = "linear" if how == "svd" else how
    deltas = [f.B @ f.A for f in factors]  # (d_out, d_in) each, the scale is in the weights
    delta = task_arithmetic.merge(
        how, deltas, torch.tensor(scaled), options.density, options.majority_sign_method
    )
    U, S, Vh = torch.linalg.svd(delta, full_matrices=options.svd_full_matrices, driver=options.svd_driver)
    k = min(rank, len(S))
    B, A = U[:, :k] * S[:k], Vh[:k]
    if options.svd_clamp is not None:
        bound = torch.quantile(torch.cat([B.flatten(), A.flatten()]), options.svd_clamp)
        B, A = B.clamp(-bound, bound), A.clamp(-bound, bound)
    return Factors(A, B)
