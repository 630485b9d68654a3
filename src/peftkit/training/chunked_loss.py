"""Cross-entropy of a linear head without the ``(tokens, vocabulary)`` logits.

The plain causal-LM loss builds the logits of every token (``B x T x V``), a float32 copy of them,
and keeps the softmax for backward: on SmolLM2 (``V = 49152``) a batch of 8 x 128 tokens is 200 MB
per float32 copy, the largest tensors of a LoRA step. :class:`LinearCrossEntropy` instead walks
the tokens in chunks; for each chunk it computes the logits, their log-sum-exp and, when gradients
are wanted, the gradient of the mean loss with respect to the hidden states (and the head's weight
and bias when they train) right away, so only one chunk's logits ever exist. Backward then only
scales the stored gradients. This is the fused linear cross-entropy of Liger-Kernel (Hsu et al.
2024, arXiv:2410.10989, sec. 3.3); "Cut Your Losses" (Wijmans et al. 2024, arXiv:2411.09009) is the
same idea. For ``L = mean_i [lse(z_i) - z_i[y_i]]`` with ``z_i = W h_i + b``:

    dL/dz_i = (softmax(z_i) - onehot(y_i)) / n,   dL/dh_i = W^T dL/dz_i,
    dL/dW = sum_i dL/dz_i h_i^T,                   dL/db = sum_i dL/dz_i.

Tokens whose label is ``ignore_index`` are dropped before the head, so prompt and padding
positions cost nothing. Logits come out of the matmul in the head's dtype (a bf16 head gives bf16
logits, as the plain loss does) and everything after it (log-sum-exp, softmax, the sums, ``dL/dW``)
is float32.

:func:`causal_lm_loss` applies this to a causal LM: the model runs with ``logits_to_keep`` an empty
index (its head computes nothing) while a hook on its backbone takes the final hidden states; the
chunked loss is then taken against the head's weight. A first-call check compares it with the
model's own loss on a short slice, so a model that changes logits after its head (soft-capping,
scaling) is never trained with a wrong loss.
"""

from __future__ import annotations

import inspect
import logging
import math
import weakref
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
CHUNK_ELEMENTS = 1 << 23  # logits per chunk: 8M (32 MB in float32); V = 49152 gives 170 tokens
LM_LOSSES = ("auto", "chunked", "plain")


def chunk_tokens(vocab: int, elements: int = CHUNK_ELEMENTS) -> int:
    """Tokens per chunk so that one chunk's logits hold about ``elements`` numbers."""
    return max(1, elements // max(vocab, 1))


def _chunk_terms(
    h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One chunk's float32 log-probabilities ``(n, V)``, its targets' ``(n,)`` and its summed loss."""
    logits = F.linear(h, weight, bias)  # (n, V) in the head's dtype, as the plain loss has them
    logp = torch.log_softmax(logits, dim=-1, dtype=torch.float32)  # one pass per row, in cache
    target = logp.gather(1, t[:, None]).squeeze(1)  # (n,)
    return logp, target, -target.sum()


def _loss_only(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor, chunk: int
) -> torch.Tensor:
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    for s in range(0, hidden.shape[0], chunk):
        total += _chunk_terms(hidden[s : s + chunk], weight, bias, targets[s : s + chunk])[2]
    return total


class LinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of ``hidden @ weight.T + bias`` against ``targets``, by chunks of tokens.

    ``hidden`` (N, d), ``weight`` (V, d), ``bias`` (V,) or None, ``targets`` (N,) in ``[0, V)``;
    the sum is divided by ``divisor`` (the number of target tokens for a mean). Gradients are
    computed in forward (see the module docstring) for the inputs that need them. ``softmax -
    onehot`` is written straight in the head's dtype (the plain loss casts ``dL/dz`` to it the same
    way; the target entries are computed in float32 first) and ``1 / divisor`` scales the products.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk: int, divisor: float):
        want_h, want_w, want_b = ctx.needs_input_grad[:3]
        grad_h = torch.empty_like(hidden) if want_h else None  # (N, d)
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if want_w else None
        grad_b = torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device) if want_b else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        rows = torch.arange(min(chunk, hidden.shape[0]), device=hidden.device)
        buffer = None
        for s in range(0, hidden.shape[0], chunk):
            h, t = hidden[s : s + chunk], targets[s : s + chunk]  # (n, d), (n,)
            logp, target, loss = _chunk_terms(h, weight, bias, t)
            total += loss
            if weight.dtype == torch.float32:
                g = logp.exp_()  # softmax, (n, V), in place
            else:
                buffer = (
                    buffer
                    if buffer is not None
                    else torch.empty(logp.shape, dtype=weight.dtype, device=logp.device)
                )
                g = torch.exp(logp, out=buffer[: len(t)])  # softmax, written in the head's dtype
            g[rows[: len(t)], t] = (target.exp() - 1.0).to(g.dtype)  # softmax - onehot = (n/divisor) dL/dz
            if grad_h is not None:
                torch.mm(g, weight, out=grad_h[s : s + chunk]).div_(divisor)  # (n, d)
            if grad_w is not None:
                grad_w.addmm_(g.T.float(), h.float(), alpha=1.0 / divisor)  # (V, d), float32 accumulation
            if grad_b is not None:
                grad_b.add_(g.float().sum(0), alpha=1.0 / divisor)
        ctx.save_for_backward(*(x if x is not None else torch.empty(0) for x in (grad_h, grad_w, grad_b)))
        ctx.present = (grad_h is not None, grad_w is not None, grad_b is not None)
        ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        return total / divisor

    @staticmethod
    def backward(ctx, grad_loss):
        grads = []
        for saved, present, dtype in zip(ctx.saved_tensors, ctx.present, ctx.dtypes):
            grads.append((saved * grad_loss).to(dtype) if present else None)
        return grads[0], grads[1], grads[2], None, None, None


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
    chunk: int | None = None,
) -> torch.Tensor:
    """``F.cross_entropy(F.linear(hidden, weight, bias).float(), targets, ignore_index=...)`` (mean
    over the target tokens) computed by chunks of tokens, never holding all the logits.

    ``hidden`` (..., d), ``targets`` (...); no target token gives NaN, as the plain loss does.
    """
    d, vocab = hidden.shape[-1], weight.shape[0]
    h, t = hidden.reshape(-1, d), targets.reshape(-1)  # (N, d), (N,)
    keep = (t != ignore_index).nonzero().squeeze(1)  # (n,)
    h, t = h.index_select(0, keep), t.index_select(0, keep)  # (n, d), (n,)
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= vocab):
        raise ValueError(f"labels: token ids must lie in [0, {vocab}) or equal ignore_index={ignore_index}")
    if not t.numel():
        return hidden.sum() * float("nan")  # the plain mean over no token
    chunk = chunk or chunk_tokens(vocab)
    if torch.is_autocast_enabled(hidden.device.type):
        dtype = torch.get_autocast_dtype(hidden.device.type)  # what F.linear would compute in
        h, weight = h.to(dtype), weight.to(dtype)
        bias = None if bias is None else bias.to(dtype)
    with torch.autocast(hidden.device.type, enabled=False):
        if not torch.is_grad_enabled():
            return _loss_only(h, weight, bias, t, chunk) / t.numel()
        return LinearCrossEntropy.apply(h, weight, bias, t, chunk, float(t.numel()))


def causal_lm_cross_entropy(
    hidden: torch.Tensor,
    labels: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
    chunk: int | None = None,
) -> torch.Tensor:
    """The causal-LM loss of ``transformers`` (position ``t`` predicts ``labels[t + 1]``, mean over
    the target tokens) from the final hidden states ``(B, T, d)`` and the head's weight ``(V, d)``."""
    return linear_cross_entropy(hidden[:, :-1], weight, labels[:, 1:], bias, ignore_index, chunk)


# ---- a causal LM's training loss through the chunked head --------------------------------------------
class Unsupported(Exception):
    """The model's loss cannot be taken by chunks; the message says why."""


def _hf_model(model: nn.Module) -> nn.Module:
    """The transformers model under ``model``: peftkit's or peft's wrapper unwrapped (a peft model gets
    the same loss as peftkit's, so that the two train alike in one trainer)."""
    from ..model import PeftModel

    if isinstance(model, PeftModel):
        stage = model.prompt_encoder  # the virtual-token stage
        if len(stage) and not stage.disabled and not all(a.writes_cache for a in stage.values()):
            # a prefix (prefix tuning, P-tuning v2) lives in the cache: the hidden states stay the tokens'
            raise Unsupported("prompt tuning and P-tuning v1 put virtual tokens into the sequence")
        return model.get_base_model()
    if _is_peft_model(model):
        config = model.active_peft_config
        kind = getattr(config.peft_type, "value", config.peft_type)  # peft's PeftType, a str enum
        if config.is_prompt_learning and kind != "PREFIX_TUNING":
            raise Unsupported(f"peft's {kind} puts virtual tokens into the sequence")
        if kind not in PEFT_LOSS_UNCHANGED:
            raise Unsupported(
                f"peft's {kind} may change the model's loss in its forward (AdaLoRA adds its "
                f"orthogonality term there); the chunked loss takes peft's {sorted(PEFT_LOSS_UNCHANGED)}"
            )
        return model.get_base_model()
    return model


# peft methods whose forward leaves the loss to the model (the chunked loss replaces only the model's)
PEFT_LOSS_UNCHANGED = frozenset({"LORA", "IA3", "PREFIX_TUNING"})


def _is_peft_model(model: nn.Module) -> bool:
    """A ``peft.PeftModel`` (told apart without importing peft, which peftkit does not need)."""
    return any(
        c.__name__ == "PeftModel" and c.__module__.split(".")[0] == "peft" for c in type(model).__mro__
    )


def lm_parts(model: nn.Module) -> tuple[nn.Module, nn.Linear]:
    """``(backbone, head)`` of a causal LM whose loss the chunked path can take, else :class:`Unsupported`."""
    hf = _hf_model(model)
    try:
        params = inspect.signature(hf.forward).parameters
    except (TypeError, ValueError) as err:
        raise Unsupported(f"{type(hf).__name__}.forward has no readable signature") from err
    if "logits_to_keep" not in params:
        raise Unsupported(f"{type(hf).__name__}.forward takes no logits_to_keep")
    get_head = getattr(hf, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    if type(head) is not nn.Linear:
        kind = "no output head" if head is None else f"an output head of type {type(head).__name__}"
        raise Unsupported(f"{type(hf).__name__} has {kind} (an adapter on the head keeps the plain loss)")
    backbone = getattr(hf, getattr(hf, "base_model_prefix", ""), None)
    if not isinstance(backbone, nn.Module) or backbone is hf:
        raise Unsupported(f"{type(hf).__name__} has no backbone under its base_model_prefix")
    return backbone, head


def _hidden_and_output(model: nn.Module, backbone: nn.Module, inputs: dict[str, Any]):
    """Run ``model`` with no logit position kept; return the backbone's last hidden states too."""
    seen: list[torch.Tensor] = []

    def grab(_module, _args, out):
        seen.append(out[0] if isinstance(out, tuple) else out.last_hidden_state)

    handle = backbone.register_forward_hook(grab)
    device = next((v.device for v in inputs.values() if isinstance(v, torch.Tensor)), None)
    none = torch.zeros(0, dtype=torch.long, device=device)  # no position: the head computes nothing
    try:  # (an int k keeps the last k, a strided slice for which matmul copies the head once per row)
        out = model(**inputs, logits_to_keep=none)
    finally:
        handle.remove()
    if len(seen) != 1:
        raise Unsupported(f"the backbone ran {len(seen)} times in one forward")
    return seen[0], out


def chunked_lm_loss(model: nn.Module, batch: dict[str, Any], chunk: int | None = None) -> torch.Tensor:
    """The causal-LM training loss of ``model(**batch)`` with ``batch["labels"]``, by chunks.

    Raises :class:`Unsupported` when the model is not a plain causal LM (see :func:`lm_parts`).
    """
    backbone, head = lm_parts(model)
    inputs = {"use_cache": False, **{k: v for k, v in batch.items() if k != "labels"}}  # training: no cache
    labels = batch["labels"]  # (B, T)
    hidden, _ = _hidden_and_output(model, backbone, inputs)  # (B, T, d)
    if hidden.shape[:2] != labels.shape:
        raise Unsupported(
            f"hidden states {tuple(hidden.shape[:2])} do not line up with labels {labels.shape}"
        )
    return causal_lm_cross_entropy(hidden, labels.to(hidden.device), head.weight, head.bias, chunk=chunk)


def _row_slice(batch: dict[str, Any], row: int, length: int) -> dict[str, Any]:
    """One row of a batch, its first ``length`` positions (tensors laid out (B, T, ...) or (B, 1, T, T))."""
    rows, width = batch["labels"].shape
    out: dict[str, Any] = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor) and value.dim() == 4 and value.shape[-1] == width:
            out[key] = value[row : row + 1, :, :length, :length]  # a 4D attention mask
        elif isinstance(value, torch.Tensor) and value.dim() >= 2 and value.shape[:2] == (rows, width):
            out[key] = value[row : row + 1, :length]
        elif isinstance(value, (list, tuple)) and len(value) == rows:
            out[key] = list(value[row : row + 1])
        else:
            out[key] = value
    return out


def compare_with_plain(
    model: nn.Module, batch: dict[str, Any], chunk: int | None = None
) -> tuple[float, float]:
    """(chunked, plain) loss, in eval mode, of the first row holding a target token, cut 8 tokens after
    its first target (a few positions: the check costs little). NaNs when no row has a target."""
    targets = batch["labels"][:, 1:] != IGNORE_INDEX  # (B, T-1)
    rows = targets.any(1).nonzero()
    if not len(rows):
        return math.nan, math.nan
    row = int(rows[0])
    first = int(targets[row].nonzero()[0])
    piece = _row_slice(batch, row, min(targets.shape[1] + 1, first + 10))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return chunked_lm_loss(model, piece, chunk).item(), model(**piece).loss.item()
    finally:
        model.train(was_training)


class CausalLMLoss:
    """A ``loss_fn(model, batch)`` for the trainer: the chunked causal-LM loss where it applies.

    ``mode``: ``auto`` uses the chunked loss for models it supports and the model's own loss
    otherwise (logged once per model); ``chunked`` raises :class:`~peftkit.errors.ConfigError` where
    it cannot apply; ``plain`` always calls ``model(**batch).loss``. Before the first chunked step of
    each model the two losses are compared on a short slice of the batch (:func:`compare_with_plain`).
    """

    def __init__(self, mode: str = "auto", chunk: int | None = None, field: str = "train.lm_loss"):
        if mode not in LM_LOSSES:
            raise ConfigError(field, f"got {mode!r}; allowed: {list(LM_LOSSES)}")
        self.mode, self.chunk, self.field = mode, chunk, field
        self.decided: weakref.WeakKeyDictionary[nn.Module, bool] = weakref.WeakKeyDictionary()

    def __call__(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        if self.mode == "plain" or "labels" not in batch:
            return model(**batch).loss
        if model not in self.decided and not self._decide(model, batch):
            return model(**batch).loss  # undecided (no target token in the batch) or unsupported
        if not self.decided[model]:
            return model(**batch).loss
        return chunked_lm_loss(model, batch, self.chunk)

    def _decide(self, model: nn.Module, batch: dict[str, Any]) -> bool:
        """Whether this batch may take the chunked loss; records the answer once it is known."""
        try:
            lm_parts(model)
            ours, plain = compare_with_plain(model, batch, self.chunk)
            if math.isnan(plain):
                return False  # nothing to compare on: decide on a later batch
            if not math.isclose(ours, plain, rel_tol=2e-3, abs_tol=1e-4):
                raise Unsupported(
                    f"the model's own loss on a slice is {plain:.6f}, the chunked loss {ours:.6f} "
                    "(does it transform logits after its head?)"
                )
        except Unsupported as err:
            if self.mode == "chunked":
                raise ConfigError(
                    self.field, f"the chunked loss cannot apply: {err}; use 'auto' or 'plain'"
                ) from err
            logger.info("chunked loss not used: %s; the model's own loss is used instead", err)
            self.decided[model] = False
            return False
        self.decided[model] = True
        return True


causal_lm_loss: Callable[[nn.Module, dict], torch.Tensor] = CausalLMLoss("auto")
