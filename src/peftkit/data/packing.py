"""Padding-free batches: several examples packed into one row, each attending only to itself.

A padded batch of SFT examples spends the model's FLOPs on pad tokens (a quarter to a half of the
tokens of E2E batches). :class:`PackingCollator` lays the examples of a batch end to end into as few
rows as fit ``max_tokens`` (first fit, in order), with ``position_ids`` restarting at 0 for each
example, so every example sees the positions it would see alone. Attention is confined to each
example in one of two ways (:data:`ATTENTION_MODES`):

* ``position_ids``: no attention mask; ``transformers`` finds the example boundaries where the
  positions restart (its packed-sequence detection, which also drives varlen flash attention on
  GPUs). It needs ``use_cache=False``, which the batch carries.
* ``mask``: a 4D additive mask ``(R, 1, L, L)``, block-diagonal and causal, in the model's dtype.

:func:`packed_attention` picks the mode a model honours, by behaviour (the logits of two short
sequences packed must equal their logits alone), or refuses the model.

Loss: the first label of every example is set to ``-100``. In a padded row that label is never a
target (position ``t`` predicts ``t + 1``); in a packed row it would be the target of the previous
example's last token. So the packed batch has exactly the padded batch's target tokens, and its
mean loss, per example and in total, is the padded batch's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..decoding.masks import to_additive
from ..errors import ConfigError
from .errors import DataError
from .sft import IGNORE_INDEX

ATTENTION_MODES = ("position_ids", "mask")
PACKING = ("auto", "packed", "padded")  # train.packing: auto packs SFT batches where the model allows it
ROW_TOKENS = 256  # default row budget: attention over a row costs O(L^2), padding O(waste)
PACKABLE = {"input_ids", "labels", "attention_mask"}


class PackedBatch(dict):
    """The model inputs of a packed batch (a plain ``dict`` for ``model(**batch)``), with the number
    of real (non-pad) tokens as an attribute."""

    real_tokens: int = 0


def first_fit(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Indices of the examples in each row: each example goes to the first row with room for it
    (an example longer than ``max_tokens`` gets a row of its own)."""
    rows: list[list[int]] = []
    used: list[int] = []
    for i, n in enumerate(lengths):
        slot = next((r for r, u in enumerate(used) if u + n <= max_tokens), None)
        if slot is None:
            rows.append([i])
            used.append(n)
        else:
            rows[slot].append(i)
            used[slot] += n
    return rows


class PackingCollator:
    """Callable turning a list of SFT examples (``input_ids``, ``labels``, optional all-ones
    ``attention_mask``) into a :class:`PackedBatch`.

    Args:
        pad_token_id: fills the tail of rows shorter than the longest.
        max_tokens: tokens per row (rows are as long as the longest one, at most this unless one
            example is longer).
        attention: ``position_ids`` or ``mask`` (see the module docstring; :func:`packed_attention`
            finds which one a model honours).
        mask_dtype: dtype of the additive mask (the model's) in ``mask`` mode.
    """

    def __init__(
        self,
        pad_token_id: int,
        max_tokens: int = ROW_TOKENS,
        attention: str = "position_ids",
        mask_dtype: torch.dtype = torch.float32,
    ):
        if pad_token_id is None:
            raise ValueError("pad_token_id is None: set tokenizer.pad_token (e.g. to tokenizer.eos_token)")
        if not isinstance(max_tokens, int) or max_tokens < 1:
            raise ConfigError("max_tokens", f"must be a positive integer, got {max_tokens!r}")
        if attention not in ATTENTION_MODES:
            raise ConfigError("attention", f"got {attention!r}; allowed: {list(ATTENTION_MODES)}")
        self.pad_token_id, self.max_tokens = int(pad_token_id), max_tokens
        self.attention, self.mask_dtype = attention, mask_dtype

    def __call__(self, examples: Sequence[dict[str, Any]]) -> PackedBatch:
        if not examples:
            raise ValueError("cannot collate an empty list of examples")
        for i, e in enumerate(examples):
            _check_example(e, i)
        rows = first_fit([len(e["input_ids"]) for e in examples], self.max_tokens)
        width = max(sum(len(examples[i]["input_ids"]) for i in row) for row in rows)
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)  # (R, L)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)  # (R, L)
        segment = torch.full((len(rows), width), -1, dtype=torch.long)  # (R, L) example number, -1: pad
        positions = torch.zeros((len(rows), width), dtype=torch.long)  # (R, L)
        for r, row in enumerate(rows):
            start = 0
            for i in row:
                n = len(examples[i]["input_ids"])
                ids[r, start : start + n] = torch.tensor(examples[i]["input_ids"])
                labels[r, start + 1 : start + n] = torch.tensor(examples[i]["labels"][1:])
                segment[r, start : start + n] = i
                positions[r, start : start + n] = torch.arange(n)
                start += n
            positions[r, start:] = torch.arange(width - start)  # the pad tail: a sequence of its own
        batch = PackedBatch(input_ids=ids, labels=labels, position_ids=positions)
        if self.attention == "mask":
            batch["attention_mask"] = to_additive(block_causal(segment), self.mask_dtype)
        else:
            batch["use_cache"] = False  # transformers looks for packed rows only without a cache
        batch.real_tokens = sum(len(e["input_ids"]) for e in examples)
        return batch


def block_causal(segment: torch.Tensor) -> torch.Tensor:
    """``(R, 1, L, L)`` boolean mask: query ``q`` sees key ``k <= q`` of its own segment (pad tails,
    segment -1, see themselves)."""
    same = segment[:, :, None] == segment[:, None, :]  # (R, L, L)
    causal = torch.ones(segment.shape[1], segment.shape[1], dtype=torch.bool).tril()  # (L, L)
    return (same & causal)[:, None]


def _check_example(example: dict[str, Any], i: int) -> None:
    if "labels" not in example or "input_ids" not in example:
        raise DataError(f"example {i}: packing needs input_ids and labels (an sft task)")
    n = len(example["input_ids"])
    if len(example["labels"]) != n:
        raise DataError(
            f"example {i}: labels ({len(example['labels'])}) and input_ids ({n}) differ in length"
        )
    if any(v != 1 for v in example.get("attention_mask", [1] * n)):
        raise DataError(f"example {i}: its attention_mask has zeros; packing takes unpadded examples only")
    extra = sorted(set(example) - PACKABLE)
    if extra:
        raise DataError(f"example {i}: packing cannot carry the fields {extra}; train without packing")


def batch_tokens(batch: dict[str, Any], examples: int) -> int:
    """Real tokens of a batch: a packed batch's count, a padded batch's attention-mask sum, else the
    number of examples."""
    if isinstance(batch, PackedBatch):
        return batch.real_tokens
    mask = batch.get("attention_mask")
    return int(mask.sum()) if isinstance(mask, torch.Tensor) and mask.dim() == 2 else examples


def _model_dtype(model: nn.Module) -> torch.dtype:
    embed = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    weight = getattr(embed, "weight", None)
    return weight.dtype if isinstance(weight, torch.Tensor) else torch.float32


def _probe_examples(vocab: int) -> list[dict[str, list[int]]]:
    g = torch.Generator().manual_seed(0)
    out = []
    for n in (3, 5):
        ids = torch.randint(0, vocab, (n,), generator=g).tolist()
        out.append({"input_ids": ids, "labels": ids})
    return out


def packed_attention(model: nn.Module, vocab: int | None = None) -> str:
    """The attention mode (``position_ids`` or ``mask``) under which ``model`` computes two packed
    sequences exactly as it computes each alone; raises :class:`~peftkit.errors.ConfigError` when
    neither does. Runs three tiny forwards (eval mode, no gradients)."""
    vocab = vocab or int(getattr(model.config, "vocab_size", 0)) or 2
    examples = _probe_examples(vocab)
    dtype, was_training = _model_dtype(model), model.training
    model.eval()
    try:
        with torch.no_grad():
            alone = [_logits(model, {"input_ids": torch.tensor([e["input_ids"]])}) for e in examples]
            for mode in ATTENTION_MODES:
                batch = PackingCollator(0, 64, mode, dtype)(examples)
                batch.pop("labels")
                packed = _logits(model, batch)[0]  # (8, V)
                if _same(torch.cat([a[0] for a in alone]), packed, dtype):
                    return mode
    finally:
        model.train(was_training)
    raise ConfigError(
        "train.packing",
        f"{type(model).__name__} does not keep packed examples apart (neither by position_ids nor by a "
        "4D mask); train with packing: padded",
    )


def _logits(model: nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
    device = next(model.parameters()).device
    out = model(**{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()})
    return (out if isinstance(out, torch.Tensor) else out.logits).float().cpu()


def _same(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> bool:
    tol = (1e-4 if dtype in (torch.float32, torch.float64) else 3e-2) * float(a.abs().max().clamp(min=1.0))
    return a.shape == b.shape and bool((a - b).abs().max() <= tol)


def training_collator(
    mode: str,
    model: nn.Module,
    examples: Sequence[dict[str, Any]],
    padded: Any,
    pad_token_id: int,
    task_type: str,
    max_length: int = 0,
) -> Any:
    """The collator a run trains with under ``train.packing`` = ``mode``: ``padded`` (the collator
    given), ``packed`` (a :class:`PackingCollator`, or a clear error), or ``auto`` (packed for sft
    examples on a model that keeps packed examples apart, else padded). Rows hold
    ``max(ROW_TOKENS, max_length)`` tokens (``max_length``: the task's example length)."""
    if mode not in PACKING:
        raise ConfigError("train.packing", f"got {mode!r}; allowed: {list(PACKING)}")
    reason = _not_packable(task_type, examples) or _virtual_tokens(model)
    if mode == "padded" or (mode == "auto" and reason):
        return padded
    if reason:
        raise ConfigError("train.packing", f"{reason}; use padded or auto")
    try:
        attention = packed_attention(model)
    except ConfigError:
        if mode == "packed":
            raise
        return padded
    return PackingCollator(pad_token_id, max(ROW_TOKENS, max_length), attention, _model_dtype(model))


def _virtual_tokens(model: nn.Module) -> str | None:
    """Why ``model`` cannot train on packed rows (virtual tokens go before each row, not each
    example), or None."""
    stage = getattr(model, "prompt_encoder", None)  # a PeftModel's virtual-token stage
    if isinstance(stage, nn.Module) and len(stage) and not getattr(stage, "disabled", False):
        return "virtual-token adapters (prompt, prefix, P-tuning) add their tokens per row, not per example"
    return None


def _not_packable(kind: str | None, examples: Sequence[dict[str, Any]]) -> str | None:
    """Why these examples cannot be packed, or None."""
    if kind != "sft":
        return f"packing applies to sft tasks, not {kind}"
    extra = set().union(*(e.keys() for e in examples)) - PACKABLE if examples else set()
    return f"the examples carry fields packing cannot ({sorted(extra)})" if extra else None
