"""Evaluation metrics: classification (accuracy, macro-F1), generation (exact match, BLEU) and
causal-LM perplexity.

Every function checks that predictions and references line up and raises a ``ValueError``
naming both lengths when they do not. ``sacrebleu`` is imported only when :func:`bleu` runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

IGNORE_INDEX = -100  # label value excluded from the loss, as in Hugging Face models


def check_lengths(a_name: str, a: Sequence, b_name: str, b: Sequence) -> None:
    """Raise ``ValueError`` unless ``a`` and ``b`` are equally long and not empty."""
    if len(a) != len(b):
        raise ValueError(f"{a_name} has {len(a)} items but {b_name} has {len(b)}; they must pair up")
    if not a:
        raise ValueError(f"{a_name} and {b_name} are empty: nothing to score")


# ---- classification ----------------------------------------------------------------------------
def accuracy(preds: Sequence[Hashable], labels: Sequence[Hashable]) -> float:
    """Fraction of predictions equal to their label."""
    check_lengths("preds", preds, "labels", labels)
    return sum(p == y for p, y in zip(preds, labels)) / len(labels)


def class_f1(preds: Sequence[Hashable], labels: Sequence[Hashable], cls: Hashable) -> float | None:
    """F1 of one class, ``2 tp / (2 tp + fp + fn)``; None when the class is neither predicted nor true."""
    tp = sum(p == cls and y == cls for p, y in zip(preds, labels))
    fp = sum(p == cls and y != cls for p, y in zip(preds, labels))
    fn = sum(p != cls and y == cls for p, y in zip(preds, labels))
    if tp + fp + fn == 0:
        return None
    return 2 * tp / (2 * tp + fp + fn)  # tp = 0 gives 0: zero division counts as 0 F1


def macro_f1(
    preds: Sequence[Hashable], labels: Sequence[Hashable], labels_set: Iterable[Hashable] | None = None
) -> float:
    """Unweighted mean of per-class F1 over the classes in ``labels`` (and ``labels_set`` if given).

    A class with no predicted and no true example is skipped; a class predicted but never right
    scores 0. Predictions of a class outside that set count only as misses of the true class.
    """
    check_lengths("preds", preds, "labels", labels)
    classes = dict.fromkeys([*labels, *(labels_set or ())])  # first-seen order, deterministic
    scores = [f for c in classes if (f := class_f1(preds, labels, c)) is not None]
    return sum(scores) / len(scores)


# ---- generation ----------------------------------------------------------------------------------
def exact_match(
    preds: Sequence[str],
    refs: Sequence[str | Sequence[str]],
    normalize: Callable[[str], str] = str.strip,
) -> float:
    """Fraction of predictions equal (after ``normalize``) to their reference, or to any of them
    when ``refs[i]`` is a list of references."""
    check_lengths("preds", preds, "refs", refs)
    hits = 0
    for pred, ref in zip(preds, refs):
        options = [ref] if isinstance(ref, str) else ref
        hits += normalize(pred) in {normalize(r) for r in options}
    return hits / len(preds)


def group_references(inputs: Sequence[str], refs: Sequence[str]) -> tuple[list[str], list[list[str]]]:
    """Gather the references that share an input (E2E: one meaning representation, several texts).

    Returns the distinct inputs in first-seen order and, for each, its references in order.
    """
    check_lengths("inputs", inputs, "refs", refs)
    groups: dict[str, list[str]] = {}
    for source, ref in zip(inputs, refs):
        groups.setdefault(source, []).append(ref)
    return list(groups), list(groups.values())


def bleu(hyps: Sequence[str], refs: Sequence[Sequence[str]]) -> float:
    """Corpus BLEU (sacrebleu, 0-100, default 13a tokenisation) with any number of references per
    hypothesis: ``refs[i]`` lists the references of ``hyps[i]``.

    sacrebleu wants reference *streams* (stream ``j`` holds every hypothesis's ``j``-th reference);
    a hypothesis with fewer references gets ``None`` in the later streams, which sacrebleu documents
    as "no reference here" for a variable number of references.
    """
    try:
        import sacrebleu
    except ImportError as err:
        raise ImportError("bleu() needs sacrebleu: pip install sacrebleu") from err
    check_lengths("hyps", hyps, "refs", refs)
    empty = [i for i, r in enumerate(refs) if isinstance(r, str) or not r]
    if empty:
        raise ValueError(f"refs[{empty[0]}] must be a non-empty list of reference strings")
    width = max(len(r) for r in refs)
    streams = [[r[j] if j < len(r) else None for r in refs] for j in range(width)]  # (width, N)
    return float(sacrebleu.corpus_bleu(list(hyps), streams).score)


# ---- language modelling --------------------------------------------------------------------------
def batch_nll(model: nn.Module, batch: Mapping[str, Any]) -> tuple[float, int]:
    """Summed next-token NLL over label tokens != -100, and how many tokens that was.

    ``labels`` default to ``input_ids`` with padding (``attention_mask == 0``) ignored. Logits at
    position ``t`` predict the label at ``t + 1``, as Hugging Face's causal-LM loss shifts them.
    """
    device = next(model.parameters()).device
    inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    labels = inputs.pop("labels", None)
    if labels is None:
        labels = inputs["input_ids"].clone()  # (B, T)
        if "attention_mask" in inputs:
            labels[inputs["attention_mask"] == 0] = IGNORE_INDEX
    out = model(**inputs)
    logits = out if isinstance(out, torch.Tensor) else out.logits  # (B, T, V)
    shift_logits = logits[:, :-1].float()  # (B, T-1, V)
    shift_labels = labels[:, 1:]  # (B, T-1)
    nll = F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.shape[-1]),  # (B*(T-1), V)
        shift_labels.reshape(-1),  # (B*(T-1),)
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    return nll.item(), int((shift_labels != IGNORE_INDEX).sum())


def perplexity(model: nn.Module, batches: Iterable[Mapping[str, Any]]) -> float:
    """``exp`` of the token-weighted mean NLL over every batch (each a dict of model inputs, with
    optional ``labels``). The model runs in eval mode under ``torch.no_grad``; its mode is restored."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        with torch.no_grad():
            for batch in batches:
                nll, n = batch_nll(model, batch)
                total, count = total + nll, count + n
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("perplexity: no label token != -100 in the batches")
    return math.exp(total / count)
