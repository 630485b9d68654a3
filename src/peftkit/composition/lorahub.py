"""LoRAHub (Huang et al. 2023): compose N LoRA adapters for an unseen task from a few examples.

The composed adapter merges the sources with weights ``w`` (``A = sum w_i A_i``, ``B = sum w_i B_i``,
:func:`~peftkit.composition.merge.add_weighted_adapter`'s ``linear``); ``w`` is found without
gradients by nevergrad's ``NGOpt`` (as the reference does: 40 steps, bounds [-1.5, 1.5], start at
0), minimising the few-shot loss plus ``l1 * mean |w|`` (sec. 3). Same seed, same weights.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ..config import check_choice, check_fields, check_positive_int
from ..errors import ConfigError
from .merge import COMBINATIONS, add_weighted_adapter, write_weighted


@dataclass
class LoraHubConfig:
    """Search settings.

    Args:
        budget: loss evaluations the optimiser may spend (the reference: 40).
        lower, upper: bounds of every weight (the reference: -1.5, 1.5).
        l1: weight of the ``mean |w|`` penalty (the reference: 0.05).
        seed: the optimiser's random state; the same seed gives the same weights.
        combination: how a candidate ``w`` merges the adapters (``linear`` as LoRAHub, or ``cat``).
        batch_size: few-shot examples per forward pass when scoring a candidate.
    """

    budget: int = 40
    lower: float = -1.5
    upper: float = 1.5
    l1: float = 0.05
    seed: int = 0
    combination: str = "linear"
    batch_size: int = 8

    def __post_init__(self) -> None:
        check_fields(self)
        check_positive_int("budget", self.budget)
        check_positive_int("batch_size", self.batch_size)
        if not self.lower < 0 < self.upper:
            raise ConfigError(
                "lower/upper", f"need lower < 0 < upper (search starts at 0), got {self.lower}, {self.upper}"
            )
        if self.l1 < 0:
            raise ConfigError("l1", f"must be >= 0, got {self.l1!r}")
        check_choice("combination", self.combination, tuple(c for c in COMBINATIONS if c != "svd"))


@dataclass
class LoraHubResult:
    adapters: list[str]
    weights: list[float]
    loss: float  # few-shot loss of the chosen weights (no penalty)
    objective: float  # loss + l1 * mean|w|
    history: list[dict[str, Any]] = field(default_factory=list)  # each evaluation: step, weights, loss

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def few_shot_loss(model, batches: list[dict[str, torch.Tensor]]) -> float:
    """Mean token loss of the model's active adapter over ``batches`` (each with ``labels``)."""
    total, tokens = 0.0, 0
    with torch.no_grad():
        for batch in batches:
            n = int((batch["labels"][:, 1:] != -100).sum())
            total += float(model(**batch).loss) * n
            tokens += n
    if not tokens:
        raise ConfigError("examples", "the few-shot examples have no target tokens to score")
    return total / tokens


def lorahub_search(
    model,
    adapters: list[str],
    batches: list[dict[str, torch.Tensor]],
    config: LoraHubConfig | None = None,
    adapter_name: str = "lorahub",
    progress: bool = True,
) -> LoraHubResult:
    """Find merge weights for ``adapters`` (LoRA adapters of the PeftModel ``model``) on ``batches``.

    Leaves ``adapter_name`` in ``model`` holding the chosen composition, active.
    """
    try:
        import nevergrad as ng
    except ImportError as err:
        raise ImportError(
            "LoRAHub's search needs nevergrad: pip install nevergrad (or peftkit[compose])"
        ) from err
    import numpy as np
    from tqdm import tqdm

    config = config or LoraHubConfig()
    n = len(adapters)
    add_weighted_adapter(model, adapters, [0.0] * n, adapter_name, combination=config.combination)
    model.set_adapter(adapter_name)
    model.eval()
    history: list[dict[str, Any]] = []

    def objective(weights: np.ndarray) -> float:
        w = [float(x) for x in weights]
        write_weighted(model, adapters, w, adapter_name, config.combination, None)
        loss = few_shot_loss(model, batches)
        value = loss + config.l1 * sum(abs(x) for x in w) / n
        history.append({"step": len(history), "weights": w, "loss": loss, "objective": value})
        return value if math.isfinite(value) else float("inf")

    param = ng.p.Array(init=np.zeros(n), lower=config.lower, upper=config.upper)
    param.random_state = np.random.RandomState(config.seed)
    optimizer = ng.optimizers.NGOpt(parametrization=param, budget=config.budget, num_workers=1)
    bar = tqdm(range(config.budget), desc="lorahub", disable=not progress)
    for _ in bar:
        candidate = optimizer.ask()
        value = objective(candidate.value)
        optimizer.tell(candidate, value)
        bar.set_postfix(loss=f"{history[-1]['loss']:.4f}", best=f"{min(h['objective'] for h in history):.4f}")
    best = [float(x) for x in optimizer.provide_recommendation().value]
    objective(np.array(best))  # leaves the adapter holding the chosen weights
    chosen = history.pop()  # the re-evaluation of the recommendation is not a search step
    return LoraHubResult(list(adapters), best, chosen["loss"], chosen["objective"], history)


def few_shot_batches(
    tokenizer,
    records: list[dict[str, Any]],
    batch_size: int = 8,
    input_column: str = "input",
    output_column: str = "output",
    system_prompt: str | None = None,
    max_length: int = 256,
) -> list[dict[str, torch.Tensor]]:
    """Few-shot records -> padded batches scored as in SFT training (loss on the output tokens only)."""
    from ..data import Collator, TaskSpec
    from ..data.sft import sft_row_encoder

    spec = TaskSpec(
        type="sft",
        prompt_column=input_column,
        response_column=output_column,
        system_prompt=system_prompt,
        max_length=max_length,
    )
    encode = sft_row_encoder(tokenizer, spec)
    examples = []
    for i, record in enumerate(records):
        row = encode(record, i)
        if row.example is None:
            raise ConfigError("examples", f"example {i + 1}: {row.dropped}")
        examples.append(row.example)
    if not examples:
        raise ConfigError("examples", "no examples given: LoRAHub needs a few (the paper uses 5)")
    collate = Collator(tokenizer.pad_token_id)
    return [collate(examples[i : i + batch_size]) for i in range(0, len(examples), batch_size)]
