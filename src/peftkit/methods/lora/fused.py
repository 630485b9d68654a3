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

Every product runs in the base's dtype: for a bf16 base, ``A`` and ``B`` are cast to bf16 for the
products (as ``torch.autocast`` would), while the weights, their gradients and the optimizer state
stay float32. Nothing of size ``(N, d_out)`` or ``(N, d_in)`` is ever cast or scaled: the rank-r
products are accumulated into the base's output and input gradient with ``addmm_``. On a 2-core CPU
with SmolLM2-135M this took a LoRA training step from 2.05 s to 1.67 s (batch 8 x 128); the bf16
products change the gradients about as much as the bf16 base itself does (tests/test_lora_fused.py).

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
        Ac, Bc = A.to(x.dtype), B.to(x.dtype)  # (r, d_in), (d_out, r): compute copies in the base dtype
        y = F.linear(x, weight, bias)  # (..., d_out)
        xd, mask = torch.native_dropout(x, p, True) if p > 0 else (x, None)
        u = F.linear(xd, Ac)  # (..., r)
        _flat(y).addmm_(_flat(u), Bc.T, alpha=scale)  # y += s u B^T, no (N, d_out) temporary
        ctx.save_for_backward(x, weight, Ac, Bc, u, mask)
        ctx.scale, ctx.p, ctx.dtypes = scale, p, (A.dtype, B.dtype)
        return y

    @staticmethod
    def backward(ctx, g):
        x, weight, Ac, Bc, u, mask = ctx.saved_tensors
        scale, p = ctx.scale, ctx.p
        g2 = _flat(g)  # (N, d_out)
        gu = (g2 @ Bc).mul_(scale)  # dL/du, (N, r)
        grad_B = None
        if ctx.needs_input_grad[4]:
            grad_B = torch.mm(g2.T, _flat(u)).mul_(scale).to(ctx.dtypes[1])  # (d_out, r)
        grad_A = None
        if ctx.needs_input_grad[3]:
            xd = _flat(x)
            if mask is not None:
                xd = torch.ops.aten.native_dropout_backward(xd, _flat(mask), 1.0 / (1.0 - p))  # dropout(x)
            grad_A = torch.mm(gu.T, xd).to(ctx.dtypes[0])  # (r, d_in)
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = g @ weight  # (..., d_in)
            if mask is None:
                _flat(grad_x).addmm_(gu, Ac)
            else:
                gx = torch.ops.aten.native_dropout_backward(gu @ Ac, _flat(mask), 1.0 / (1.0 - p))
                grad_x.add_(gx.view(grad_x.shape))
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
