"""LoRA's initialisations of ``A (r, d_in)`` and ``B (d_out, r)``, as peft draws them.

Two kinds:

* beside the base (:func:`init_beside`): ``"kaiming"`` (A Kaiming-uniform as ``nn.Linear``, B = 0: Hu et al.
  2021, sec. 4.1), ``"gaussian"`` (A ~ N(0, 1/r), B = 0) and ``False`` (A and B both left at
  ``nn.Linear``'s random init: the adapter changes the outputs from the start);
* out of the base (:func:`residual_factors`): ``B A`` is taken from ``W`` itself and the base keeps the
  residual ``W - s B A``, so the outputs are unchanged at init. PiSSA (Meng et al. 2024): the top-r
  singular triplets, ``A = sqrt(S_r / s) V_r^T``, ``B = U_r sqrt(S_r / s)`` (``"pissa_niter_<n>"``: from
  a randomised SVD with ``n`` subspace iterations, Halko et al. 2011); OLoRA (Buyukakyuz 2024): the
  thin QR decomposition ``W = Q R``, ``A = R_r`` (the first r rows), ``B = Q_r`` (the first r columns).

Rerunning a residual init on the same base weight gives the same factors (the randomised SVD aside):
that is how an adapter saved by peft with such an init, without conversion, reloads exactly.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import PISSA_NITER


@torch.no_grad()
def init_beside(
    A: torch.Tensor, B: torch.Tensor, init: str | bool, r: int, bias: torch.Tensor | None
) -> None:
    """Initialise ``A``, ``B`` (and B's bias) in place for an init that leaves the base alone."""
    if init is False:
        return  # nn.Linear's own random init: Kaiming-uniform weights, uniform bias
    if init == "gaussian":
        nn.init.normal_(A, std=1 / r)
    else:
        nn.init.kaiming_uniform_(A, a=math.sqrt(5))
    nn.init.zeros_(B)
    if bias is not None:
        nn.init.zeros_(bias)


@torch.no_grad()
def residual_factors(
    weight: torch.Tensor, r: int, scale: float, init: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A, B)`` taken out of ``weight (d_out, d_in)`` (fp32) for a residual init; the base keeps
    ``weight - scale * B @ A``."""
    if init == "olora":
        Q, R = torch.linalg.qr(weight)  # (d_out, k), (k, d_in)
        return R[:r].contiguous(), Q[:, :r].contiguous()  # (r, d_in), (d_out, r)
    niter = PISSA_NITER.fullmatch(init)
    if niter:
        U, S, V = torch.svd_lowrank(weight, q=r, niter=int(niter.group(1)))  # (d_out, r), (r,), (d_in, r)
        Vh = V.T
    else:
        U, S, Vh = torch.linalg.svd(weight, full_matrices=False)
    root = torch.sqrt(S[:r] / scale)  # (r,)
    return root[:, None] * Vh[:r], U[:, :r] * root[None, :]  # (r, d_in), (d_out, r)
