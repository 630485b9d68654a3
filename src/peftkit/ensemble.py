"""Prompt ensembles: several adapters for one task trained in the same batches, predicting together.

Each batch is tiled once per member and every block runs with its own adapter through the mixed-batch
path (``adapter_names``), so K prompts train in one forward/backward pass on identical examples
(the prompt ensembles of Lester et al. 2021, sec. 6). Predictions combine the members' class
probabilities by their mean, or by majority vote (ties broken by the mean probability).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from .config import check_choice
from .errors import ConfigError

VOTES = ("mean", "majority")


class PromptEnsemble(nn.Module):
    """Wraps a :class:`~peftkit.PeftModel` whose adapters ``names`` are the ensemble's members.

    ``forward(**batch)`` returns the mean of the members' losses and, as ``logits``, log-scores of
    the combined prediction ``(B, C)``; ``member_logits(**batch)`` gives each member's ``(K, B, C)``.
    """

    def __init__(self, model: nn.Module, names: list[str], vote: str = "mean"):
        super().__init__()
        check_choice("vote", vote, VOTES)
        if len(names) < 2 or len(set(names)) != len(names):
            raise ConfigError("names", f"an ensemble needs two or more distinct adapters, got {names!r}")
        self.model, self.names, self.vote = model, list(names), vote
        model.set_adapter(self.names)  # every member trains

    def _run(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        K = len(self.names)
        tiled = {k: _tile(v, K) for k, v in batch.items()}  # (K*B, ...): block k is member k's
        out = self.model(**tiled, adapter_names=self.names)
        B = next(v for v in batch.values() if isinstance(v, torch.Tensor)).shape[0]
        return out.logits.view(K, B, *out.logits.shape[1:]), out.get("loss")  # (K, B, C)

    def member_logits(self, **batch) -> torch.Tensor:
        return self._run(batch)[0]

    def forward(self, **batch) -> SequenceClassifierOutput:
        members, loss = self._run(batch)  # loss: the mean over K*B rows = the members' mean loss
        return SequenceClassifierOutput(loss=loss, logits=combine(members, self.vote))


def _tile(value, k: int):
    return value.repeat(k, *([1] * (value.dim() - 1))) if isinstance(value, torch.Tensor) else value


def combine(members: torch.Tensor, vote: str = "mean") -> torch.Tensor:
    """``(K, B, C)`` member logits -> ``(B, C)`` scores whose argmax is the ensemble's prediction."""
    probs = members.float().softmax(-1).mean(0)  # (B, C)
    if vote == "mean":
        return probs.log()
    votes = nn.functional.one_hot(members.argmax(-1), members.shape[-1]).sum(0).float()  # (B, C)
    return votes + probs / 2  # a vote outweighs any probability; equal votes fall back to the mean


@torch.no_grad()
def ensemble_accuracy(ensemble: PromptEnsemble, batches: Iterable[dict]) -> dict[str, float]:
    """Accuracy of every member, of the mean-probability ensemble and of the majority vote."""
    was_training = ensemble.training
    ensemble.eval()
    hits: dict[str, int] = {}
    total = 0
    for batch in batches:
        labels = batch["labels"]
        members = ensemble.member_logits(**batch)  # (K, B, C)
        preds = {n: members[k].argmax(-1) for k, n in enumerate(ensemble.names)}
        preds |= {f"ensemble_{v}": combine(members, v).argmax(-1) for v in VOTES}
        for name, p in preds.items():
            hits[name] = hits.get(name, 0) + int((p.cpu() == labels.cpu()).sum())
        total += len(labels)
    ensemble.train(was_training)
    return {name: n / max(total, 1) for name, n in hits.items()}
