"""A fused LoRA linear for training: ``y = x W0^T + b + s * dropout(x) A^T B^T`` as one autograd node.

Composed of modules (:meth:`LoraLinear.adapter_delta`), the adapter path records dropout, the
input cast, two linears, the scaling and the add, and autograd keeps the dropped input
``dropout(x)`` (a new ``(N, d_in)`` float32 tensor per layer, next to dropout's mask), plus a float32
copy of ``x`` when the base is bf16. :class:`FusedLoraLinear` keeps instead what backward needs once:
the layer input ``x`` as it came in (the same tensor the sibling projections q/k/v or gate/up read,
so no new memory), dropout's boolean mask, and ``u = dropout(x) A^T`` ``(N, r)``; ``dropout(x)`` is
rebuilt from ``x`` and the mask in backward. With the frozen base (Hu et al. 2021, sec. 4.1),
``g = dL/dy`` and ``g_s = s * g``:

    dL/dB = g_s^T u,   dL/dA = (g_s B)^T dropout(x),
    dL/dx = g W0 + dropout'((g_s B) A)         (dropout' : multiply by mask / (1 - p))

Dropout draws its mask with ``torch.native_dropout``, the kernel ``nn.Dropout`` calls, so the fused
and the unfused layer draw the same mask from the same generator state.

:func:`enabled` / :func:`set_enabled` switch the path for every LoRA layer; which layers can take
it is decided by :meth:`LoraLinear._fusable` (training, one active unmerged adapter, a plain
``nn.Linear`` base, no mixed rows, no autocast).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F

_ENABLED = True  # measured faster (see bench/train_speed.py): on unless switched off


def enabled() -> bool:
    """Whether LoRA layers take the fused path where it applies."""
    return _ENABLED


def set_enabled(flag: bool) -> None:
    global _ENABLED
    _ENABLED = bool(flag)


@contextmanager
def fused(flag: bool) -> Iterator[None]:
    """Inside the block the fused path is on (``True``) or off (``False``)."""
    previous = enabled()
    set_enabled(flag)
    try:
        yield
    finally:
        set_enabled(previous)


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, t.shape[-1])  # (N, features)


class FusedLoraLinear(torch.autograd.Function):
    """``x`` (..., d_in) in the base dtype; ``weight`` (d_out, d_in) and ``bias`` frozen; ``A`` (r, d_in)
    and ``B`` (d_out, r) in the adapter dtype; ``scale`` a float, ``p`` the dropout probability."""

    @staticmethod
    def forward(ctx, x, weight, bias, A, B, scale: float, p: float):
        y = F.linear(x, weight, bias)  # (..., d_out)
        xa = x.to(A.dtype)  # (..., d_in): no copy when the base is in the adapter's dtype
        xd, mask = torch.native_dropout(xa, p, True) if p > 0 else (xa, None)
        u = F.linear(xd, A)  # (..., r)
        y += (F.linear(u, B) * scale).to(y.dtype)  # the unfused layer's arithmetic, added in place
        ctx.save_for_backward(x, weight, A, B, u, mask)
        ctx.scale, ctx.p = scale, p
        return y

    @staticmethod
    def backward(ctx, g):
        x, weight, A, B, u, mask = ctx.saved_tensors
        scale, p = ctx.scale, ctx.p
        gs = _flat(g.to(B.dtype) * scale)  # (N, d_out)
        gu = gs @ B  # (N, r)
        grad_B = gs.T @ _flat(u) if ctx.needs_input_grad[4] else None  # (d_out, r)
        grad_A = None
        if ctx.needs_input_grad[3]:
            xd = _flat(x.to(A.dtype))
            if mask is not None:
                xd = torch.ops.aten.native_dropout_backward(
                    xd, _flat(mask), 1.0 / (1.0 - p)
                )  # dropout(x) again
            grad_A = gu.T @ xd  # (r, d_in)
        grad_x = None
        if ctx.needs_input_grad[0]:
            gx = gu @ A  # (N, d_in)
            if mask is not None:
                gx = torch.ops.aten.native_dropout_backward(gx, _flat(mask), 1.0 / (1.0 - p))
            grad_x = (g @ weight).add_(gx.view(*x.shape).to(x.dtype))  # (..., d_in)
        return grad_x, None, None, grad_A, grad_B, None, None


def fused_lora_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    A: torch.Tensor,
    B: torch.Tensor,
    scale: float,
    p: float,
) -> torch.Tensor:
    """``F.linear(x, weight, bias) + (B(A(dropout_p(x))) * scale)`` with backward as above."""
    return FusedLoraLinear.apply(x, weight, bias, A, B, float(scale), float(p))
