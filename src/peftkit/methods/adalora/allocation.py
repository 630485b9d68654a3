"""AdaLoRA's budget: a cubic schedule of how many triplets survive, and the global ranking that
decides which ones (Zhang et al. 2023, sec. 3.2-3.3, Algorithm 1)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ...errors import AdapterError
from ...layer import adapter_layers
from ...targeting import layer_index
from .config import AdaLoraConfig
from .layer import AdaLoraLinear


@dataclass(frozen=True)
class RankBudget:
    """``b(t)``: ``init`` triplets until ``tinit``, then a cubic fall to ``target`` at
    ``total - tfinal`` (eq. 12), then ``target``. Steps count optimizer steps taken (1, 2, ...)."""

    init: int
    target: int
    tinit: int
    tfinal: int
    total: int
    every: int

    def at(self, t: int) -> tuple[int, bool]:
        """(budget after step ``t``, whether to re-allocate at ``t``)."""
        end = self.total - self.tfinal
        if t <= self.tinit:
            return self.init, False
        if t >= end:
            return self.target, t == end
        left = 1 - (t - self.tinit) / (end - self.tinit)
        return int((self.init - self.target) * left**3 + self.target), t % self.every == 0


def adalora_layers(model: nn.Module, name: str) -> list[tuple[str, AdaLoraLinear]]:
    return [(p, la) for p, la in adapter_layers(model) if isinstance(la, AdaLoraLinear) and name in la.lora_E]


def budget_for(model: nn.Module, config: AdaLoraConfig, name: str) -> RankBudget:
    layers = adalora_layers(model, name)
    pruned = [p for p, la in layers if la.lora_E[name].shape[0] != config.init_r]
    if pruned:
        raise AdapterError(
            f"adapter {name!r} was loaded already pruned ({pruned[0]} has rank "
            f"{layers[0][1].lora_E[name].shape[0]} < init_r); AdaLoRA allocation starts from init_r"
        )
    if config.total_step is None:
        raise AdapterError(f"adapter {name!r}: set total_step (the trainer sets it when training starts)")
    return RankBudget(
        init=config.init_r * len(layers),
        target=config.target_r * len(layers),
        tinit=config.tinit,
        tfinal=config.tfinal,
        total=config.total_step,
        every=config.deltaT,
    )


def allocate(model: nn.Module, config: AdaLoraConfig, name: str, step: int) -> None:
    """After optimizer step ``step`` (0-based): update importance while pruning, re-allocate when due,
    and zero the masked singular values. The allocation is mirrored in ``config.rank_pattern``."""
    layers = adalora_layers(model, name)
    budget = budget_for(model, config, name)
    t = step + 1
    end = budget.total - budget.tfinal
    if t < end:
        for _, layer in layers:
            layer.update_importance(name, config.beta1, config.beta2)
    size, due = budget.at(t)
    if due:
        _mask_to_budget(layers, name, size)
        config.rank_pattern = _pattern(layers, name)
        if t == end:
            for _, layer in layers:
                layer.reset_importance(name)
    for _, layer in layers:
        layer.apply_mask(name)


def _mask_to_budget(layers: list[tuple[str, AdaLoraLinear]], name: str, budget: int) -> None:
    """Keep the ``budget`` highest-scoring triplets across all modules; mask the rest."""
    scores = [layer.triplet_scores(name) for _, layer in layers]
    if any(s is None for s in scores):
        return  # no gradient seen yet: nothing to rank by
    every = torch.cat(scores)  # (sum of ranks,)
    drop = every.numel() - budget
    if drop <= 0:
        keep = [torch.ones_like(s, dtype=torch.bool) for s in scores]
    else:
        threshold = torch.kthvalue(every, drop).values
        keep = [s > threshold for s in scores]
    for (_, layer), mask in zip(layers, keep):
        layer.rank_mask(name).copy_(mask)


def _pattern(layers: list[tuple[str, AdaLoraLinear]], name: str) -> dict[str, list[bool]]:
    return {f"{p}.lora_E": la.rank_mask(name).tolist() for p, la in layers}


def start_schedule(model: nn.Module, config: AdaLoraConfig, name: str, length: int) -> None:
    """Record the budget schedule's length in the layers' buffers when training starts. A run that
    resumes from a checkpoint finds the saved length there: another length is an error (the budget
    would follow another curve), and ``config.rank_pattern`` is restored from the saved masks."""
    layers = adalora_layers(model, name)
    started = {int(la.allocation[name].total_step) for _, la in layers} - {0}
    if started and started != {length}:
        raise AdapterError(
            f"adalora adapter {name!r}: its budget schedule runs over {sorted(started)[0]} steps (restored "
            f"from the checkpoint), this run takes {length}; resume with the same number of steps"
        )
    for _, layer in layers:
        layer.allocation[name].total_step.fill_(length)
    if not all(bool(la.rank_mask(name).all()) for _, la in layers):
        config.rank_pattern = _pattern(layers, name)


def schedule_started(model: nn.Module, name: str) -> bool:
    """Whether :func:`start_schedule` ran for adapter ``name`` (its layers hold the schedule's length)."""
    return any(int(la.allocation[name].total_step) for _, la in adalora_layers(model, name))


def orthogonal_penalty(model: nn.Module, name: str, form: str = "squared") -> torch.Tensor | None:
    """``R(P, Q)`` of adapter ``name`` (see ``AdaLoraConfig.orth_reg_form``): the mean over modules of
    ``||P^T P - I||_F^2 + ||Q Q^T - I||_F^2`` (``"squared"``, the paper), or the mean over every P and Q of
    the unsquared norms (``"peft"``)."""
    pairs = [la.orthogonality(name) for _, la in adalora_layers(model, name) if la.lora_E[name].numel()]
    if not pairs:
        return None
    if form == "peft":
        return torch.stack([torch.linalg.matrix_norm(m) for pair in pairs for m in pair]).mean()
    return torch.stack([p.square().sum() + q.square().sum() for p, q in pairs]).mean()


def rank_map(model: nn.Module, name: str) -> tuple[list[str], list[str], list[list[float]]]:
    """Final ranks as a grid: rows are transformer layers, columns module names (NaN: not adapted)."""
    cells: dict[tuple[str, str], int] = {}
    for path, layer in adalora_layers(model, name):
        index = layer_index(path)
        row = str(index) if index is not None else "outside layers"
        cells[(row, _column(path, index))] = layer.rank(name)
    rows = sorted({r for r, _ in cells}, key=lambda s: (not s.isdigit(), int(s) if s.isdigit() else 0))
    cols = sorted({c for _, c in cells})
    grid = [[float(cells.get((r, c), float("nan"))) for c in cols] for r in rows]
    return rows, cols, grid


def _column(path: str, index: int | None) -> str:
    """``model.layers.3.self_attn.q_proj`` -> ``self_attn.q_proj`` (the part after the layer index)."""
    if index is None:
        return path
    parts = path.split(".")
    at = next(i for i, part in enumerate(parts) if part == str(index))
    return ".".join(parts[at + 1 :]) or path
