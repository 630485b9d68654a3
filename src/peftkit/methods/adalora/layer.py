"""The AdaLoRA layer: ``y = base(x) + (alpha / init_r) * ((dropout(x) Q^T) * lambda) P^T`` beside the
frozen layer (Zhang et al. 2023, eq. 3). peft's names: ``lora_A`` = Q (r, d_in), ``lora_E`` = lambda
(r, 1), ``lora_B`` = P (d_out, r).

Pruning *masks* a triplet ``(P_i, lambda_i, Q_i)``: ``lambda_i`` is zeroed after each optimizer step
while it is masked, but ``P_i`` and ``Q_i`` stay and the triplet is scored again at the next
allocation, so a rank can come back. Saving keeps only unmasked triplets (exact: masked ones add 0).
"""

from __future__ import annotations

import torch
from torch import nn

from ...config import check_rank
from ..lowrank import LowRankLayer
from .config import AdaLoraConfig

EPS = 1e-5  # peft divides by (ranknum + 1e-5); kept for identical outputs


class AllocationState(nn.Module):
    """One adapter's allocation state in one layer, all of it buffers, so ``state_dict``,
    ``delete_adapter`` and the trainer's checkpoints carry it (a resumed run continues exactly):

    - ``rank_mask (r,)``: the triplets the budget keeps;
    - ``sensitivity_<k>`` / ``uncertainty_<k>``: the smoothed sensitivity ``I_bar`` and uncertainty
      ``U_bar`` of each element of P (``B``), lambda (``E``) and Q (``A``) (eq. 8-9), ``seen`` which
      of them got a gradient yet;
    - ``total_step ()``: the length of the budget schedule once training started (0: not yet).
    """

    KEYS = ("A", "E", "B")

    def __init__(self, shapes: dict[str, torch.Size], device: torch.device, dtype: torch.dtype):
        super().__init__()
        r = shapes["E"][0]
        self.register_buffer("rank_mask", torch.ones(r, dtype=torch.bool, device=device))
        self.register_buffer("seen", torch.zeros(len(self.KEYS), dtype=torch.bool, device=device))
        self.register_buffer("total_step", torch.zeros((), dtype=torch.int64, device=device))
        for key in self.KEYS:
            self.register_buffer(f"sensitivity_{key}", torch.zeros(shapes[key], dtype=dtype, device=device))
            self.register_buffer(f"uncertainty_{key}", torch.zeros(shapes[key], dtype=dtype, device=device))

    @torch.no_grad()
    def update(self, tensors: dict[str, nn.Parameter], beta1: float, beta2: float) -> None:
        """Eq. 8-9: ``I_bar <- b1 I_bar + (1 - b1) I``; ``U_bar <- b2 U_bar + (1 - b2) |I - I_bar|``."""
        for i, key in enumerate(self.KEYS):
            p = tensors[key]
            if p.grad is None:
                continue
            ipt = (p.detach() * p.grad).abs()
            sens, unc = getattr(self, f"sensitivity_{key}"), getattr(self, f"uncertainty_{key}")
            sens.copy_(beta1 * sens + (1 - beta1) * ipt)
            unc.copy_(beta2 * unc + (1 - beta2) * (ipt - sens).abs())
            self.seen[i] = True

    def score(self, key: str) -> torch.Tensor | None:
        """``s = I_bar * U_bar`` elementwise (eq. 10), or None before the first gradient."""
        if not bool(self.seen[self.KEYS.index(key)]):
            return None
        return getattr(self, f"sensitivity_{key}") * getattr(self, f"uncertainty_{key}")

    @torch.no_grad()
    def reset_importance(self) -> None:
        for key in self.KEYS:
            getattr(self, f"sensitivity_{key}").zero_()
            getattr(self, f"uncertainty_{key}").zero_()
        self.seen.zero_()


class AdaLoraLinear(LowRankLayer):
    """AdaLoRA on ``nn.Linear`` (4-bit Linear included) and GPT-2's ``Conv1D``."""

    adapter_containers = ("lora_A", "lora_B", "lora_E")

    def __init__(self, base_layer: nn.Module):
        super().__init__(base_layer)
        self.lora_A, self.lora_B, self.lora_E = nn.ParameterDict(), nn.ParameterDict(), nn.ParameterDict()
        self.allocation = nn.ModuleDict()  # adapter name -> AllocationState (buffers)

    def add(self, name: str, config: AdaLoraConfig, module_name: str) -> None:
        kept = config.kept_for(module_name)
        r = sum(kept) if kept is not None else config.init_r
        check_rank("init_r", config.init_r, self.in_features, self.out_features, module_name)
        kw = self.new_tensor_kwargs()
        self.lora_A[name] = nn.Parameter(torch.randn(r, self.in_features, **kw) * 0.02)  # Q: (r, d_in)
        self.lora_E[name] = nn.Parameter(torch.zeros(r, 1, **kw))  # lambda: (r, 1), zero: identity at init
        self.lora_B[name] = nn.Parameter(torch.randn(self.out_features, r, **kw) * 0.02)  # P: (d_out, r)
        self.add_path(name, config.lora_dropout, config.lora_alpha / (config.init_r + EPS))  # peft's scale
        shapes = {"A": self.lora_A[name].shape, "E": self.lora_E[name].shape, "B": self.lora_B[name].shape}
        self.allocation[name] = AllocationState(shapes, **kw)

    # ---- maths -----------------------------------------------------------------------------------
    def adapter_delta(self, name: str, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        A, E, B = self.lora_A[name], self.lora_E[name], self.lora_B[name]
        x = self.dropped(name, x, A.dtype)
        return (x @ (A * E).T) @ B.T * self.scaling[name]  # (..., r) -> (..., d_out)

    def delta_weight(self, name: str) -> torch.Tensor:
        delta = self.lora_B[name] @ (self.lora_A[name] * self.lora_E[name]) * self.scaling[name]
        return self.orient(delta)  # (d_out, d_in) in base.weight's layout

    def orthogonality(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(P^T P - I, Q Q^T - I)``, each ``(r, r)``: how far P and Q are from orthogonal (eq. 4)."""
        A, B = self.lora_A[name], self.lora_B[name]  # (r, d_in), (d_out, r)
        eye = torch.eye(A.shape[0], device=A.device, dtype=A.dtype)
        return B.T @ B - eye, A @ A.T - eye

    # ---- allocation ------------------------------------------------------------------------------
    def update_importance(self, name: str, beta1: float, beta2: float) -> None:
        tensors = {"A": self.lora_A[name], "E": self.lora_E[name], "B": self.lora_B[name]}
        self.allocation[name].update(tensors, beta1, beta2)

    def triplet_scores(self, name: str) -> torch.Tensor | None:
        """``(r,)``: ``S_i = s(lambda_i) + mean_j s(Q_ij) + mean_k s(P_ki)`` (eq. 7), or None before
        any gradient was seen."""
        imp = self.allocation[name]
        s_e, s_a, s_b = imp.score("E"), imp.score("A"), imp.score("B")
        if s_e is None or s_a is None or s_b is None:
            return None
        return s_e.view(-1) + s_a.mean(dim=1) + s_b.mean(dim=0)

    @torch.no_grad()
    def apply_mask(self, name: str) -> None:
        """Zero the singular values of masked triplets (they stay, and can be unmasked later)."""
        self.lora_E[name].masked_fill_(~self.rank_mask(name)[:, None], 0.0)

    def reset_importance(self, name: str) -> None:
        self.allocation[name].reset_importance()

    def rank_mask(self, name: str) -> torch.Tensor:
        """``(r,)`` bool: the triplets the budget keeps."""
        return self.allocation[name].rank_mask

    def rank(self, name: str) -> int:
        return int(self.rank_mask(name).sum())

    # ---- checkpoints -----------------------------------------------------------------------------
    def export_state_dict(self, name: str) -> dict[str, torch.Tensor]:
        """peft's tensors with only the kept triplets (masked ones contribute exactly zero)."""
        state = self.adapter_state_dict(name)
        if not state or bool(self.rank_mask(name).all()):
            return state
        keep = self.rank_mask(name)
        return {
            "lora_A": state["lora_A"][keep],
            "lora_E": state["lora_E"][keep],
            "lora_B": state["lora_B"][:, keep],
        }

    def delete(self, name: str) -> None:
        super().delete(name)
        if name in self.allocation:
            del self.allocation[name]
