"""Diff pruning's learned masks (Guo et al. 2021): per targeted parameter a dense diff ``D`` and either
straight-through top-k scores (:class:`TopKDelta`) or hard-concrete L0 gates (:class:`HardConcreteDelta`,
Louizos et al. 2018); both are :class:`~peftkit.methods.sparse_delta.SparseDelta` kinds the shared
sparse-delta layer runs."""

from __future__ import annotations

import math

import torch
from torch import nn

from ...nn_types import trainable_dtype
from ..sparse_delta import SparseDelta, _key


class TopKDelta(SparseDelta):
    """A dense trainable ``D`` and score ``S`` per parameter; the delta is ``topk_mask(S) * D``.

    The top-k mask has no gradient of its own; the straight-through estimator gives ``S`` the
    gradient ``M`` would get, ``dL/dS = dL/dE * D``, and ``D`` the dense gradient ``dL/dE``, so
    entries outside the mask keep learning and can enter it when their score overtakes.
    """

    def __init__(self, params: dict[str, torch.Tensor], density: float, score_scale: float = 1e-3):
        super().__init__()
        self.shapes = {p: t.shape for p, t in params.items()}
        self.keep = {p: max(1, round(density * t.numel())) for p, t in params.items()}
        self.dense, self.scores = nn.ParameterDict(), nn.ParameterDict()
        for path, p in params.items():
            kw = {"dtype": trainable_dtype(p), "device": p.device}
            self.dense[_key(path)] = nn.Parameter(torch.zeros(p.shape, **kw))
            self.scores[_key(path)] = nn.Parameter(torch.rand(p.shape, **kw) * score_scale)

    def mask(self, path: str) -> torch.Tensor:
        scores = self.scores[_key(path)].detach().flatten()
        idx = scores.topk(self.keep[path]).indices  # (k,)
        return torch.zeros_like(scores).index_fill(0, idx, 1.0).view(self.shapes[path])

    def delta(self, path: str) -> torch.Tensor:
        D, S, M = self.dense[_key(path)], self.scores[_key(path)], self.mask(path)
        value = M * D
        if not torch.is_grad_enabled():
            return value
        # value M*D; gradient 1 to D (dense) and D to S (straight-through for the hard mask)
        return value.detach() + (D - D.detach()) + (S - S.detach()) * D.detach()

    def sparse(self, path: str) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.mask(path).flatten().nonzero().squeeze(1)  # (k,)
        return idx, self.dense[_key(path)].data.flatten()[idx]

    def load_sparse(self, path: str, indices: torch.Tensor, values: torch.Tensor) -> None:
        """A saved diff becomes scores 1 on its entries, 0 elsewhere: the top-k mask is exactly them."""
        D, S = self.dense[_key(path)], self.scores[_key(path)]
        idx = indices.to(D.device, torch.int64)
        with torch.no_grad():
            D.zero_().view(-1).index_copy_(0, idx, values.to(D))
            S.zero_().view(-1).index_fill_(0, idx, 1.0)
        self.keep[path] = idx.numel()


# hard-concrete stretch and temperature (Louizos et al. 2018, sec. 4; diff pruning uses the same)
BETA, GAMMA, ZETA = 2 / 3, -0.1, 1.1
OPEN_SHIFT = BETA * math.log(-GAMMA / ZETA)  # P(z != 0) = sigmoid(log_alpha - OPEN_SHIFT)


def log_alpha_for(density: float) -> float:
    """The gate logit at which a gate is non-zero with probability ``density``."""
    density = min(max(density, 1e-6), 1 - 1e-6)
    return math.log(density / (1 - density)) + OPEN_SHIFT


class HardConcreteDelta(SparseDelta):
    """A dense trainable ``D`` and gate logits ``log_alpha`` per parameter; the delta is ``z * D``.

    In training (train mode, gradients on) ``z`` is a hard-concrete sample, ``u ~ U(0, 1)``::

        z = clamp(sigmoid((log u - log(1 - u) + log_alpha) / BETA) * (ZETA - GAMMA) + GAMMA, 0, 1)

    reparameterised, so ``D`` and ``log_alpha`` both get gradients, and exactly 0 or 1 with
    non-zero probability. :meth:`expected_density` (the mean ``P(z != 0)``) is what the L0 penalty
    pushes down to the target. Otherwise (eval, merging, saving) the gate is the deterministic
    ``clamp(sigmoid(log_alpha) * (ZETA - GAMMA) + GAMMA, 0, 1)`` on the ``density`` fraction of
    entries with the highest ``log_alpha``, zero elsewhere: the saved density is exact.
    """

    def __init__(self, params: dict[str, torch.Tensor], density: float, init_density: float):
        super().__init__()
        self.shapes = {p: t.shape for p, t in params.items()}
        self.keep = {p: max(1, round(density * t.numel())) for p, t in params.items()}
        self.dense, self.log_alpha = nn.ParameterDict(), nn.ParameterDict()
        for path, p in params.items():
            kw = {"dtype": trainable_dtype(p), "device": p.device}
            self.dense[_key(path)] = nn.Parameter(torch.zeros(p.shape, **kw))
            noise = torch.rand(p.shape, **kw) * 1e-3  # breaks ties in the top-k
            self.log_alpha[_key(path)] = nn.Parameter(noise + log_alpha_for(init_density))

    def expected_density(self, path: str) -> torch.Tensor:
        """The mean probability that a gate is non-zero (a scalar with a gradient)."""
        return torch.sigmoid(self.log_alpha[_key(path)] - OPEN_SHIFT).mean()

    def mask(self, path: str) -> torch.Tensor:
        """The kept entries outside training: the top-k of ``log_alpha`` (a 0/1 tensor)."""
        scores = self.log_alpha[_key(path)].detach().flatten()
        idx = scores.topk(self.keep[path]).indices  # (k,)
        return torch.zeros_like(scores).index_fill(0, idx, 1.0).view(self.shapes[path])

    def gate(self, path: str) -> torch.Tensor:
        log_alpha = self.log_alpha[_key(path)]
        if self.training and torch.is_grad_enabled():
            u = torch.rand_like(log_alpha).clamp(1e-6, 1 - 1e-6)
            soft = torch.sigmoid((u.log() - (1 - u).log() + log_alpha) / BETA)
        else:
            soft = torch.sigmoid(log_alpha) * self.mask(path)
        return (soft * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)

    def delta(self, path: str) -> torch.Tensor:
        return self.gate(path) * self.dense[_key(path)]

    def sparse(self, path: str) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.mask(path).flatten().nonzero().squeeze(1)  # (k,)
        with torch.no_grad():
            return idx, self.delta(path).flatten()[idx]

    def load_sparse(self, path: str, indices: torch.Tensor, values: torch.Tensor) -> None:
        """A saved diff becomes open gates (``z = 1``) on its entries and closed ones elsewhere."""
        D, A = self.dense[_key(path)], self.log_alpha[_key(path)]
        idx = indices.to(D.device, torch.int64)
        with torch.no_grad():
            D.zero_().view(-1).index_copy_(0, idx, values.to(D))
            A.fill_(-10.0).view(-1).index_fill_(0, idx, 10.0)  # sigmoid(10) * 1.2 - 0.1 > 1
        self.keep[path] = idx.numel()
