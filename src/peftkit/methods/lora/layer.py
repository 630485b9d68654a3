"""LoRA layers: ``y = base(x) + B(A(dropout(x))) * scale`` beside the frozen layer; dW never built
in the forward pass, only for merging."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ...config import check_rank
from ...errors import ConfigError
from ...layer import AdapterLayer
from ...quantization import is_quantized
from ...rows import current_rows
from ..lowrank import LowRankLayer
from .config import LoraConfig


class LoraLinear(LowRankLayer):
    """LoRA on ``nn.Linear`` and GPT-2's ``Conv1D`` (weight stored transposed: fan_in_fan_out)."""

    adapter_containers = ("lora_A", "lora_B")

    def __init__(self, base_layer: nn.Module):
        super().__init__(base_layer)
        self.lora_A, self.lora_B = nn.ModuleDict(), nn.ModuleDict()
        self.pissa_init: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def add(self, name: str, config: LoraConfig, module_name: str) -> None:
        r, kw = config.rank_for(module_name), self.new_tensor_kwargs()
        check_rank("r", r, self.in_features, self.out_features, module_name)
        self.lora_A[name] = nn.Linear(self.in_features, r, bias=False, **kw)  # (r, d_in)
        self.lora_B[name] = nn.Linear(r, self.out_features, bias=False, **kw)  # (d_out, r)
        self.add_path(name, config.lora_dropout, config.scaling_for(module_name))
        self._init(name, config.init_lora_weights, r)

    def _init(self, name: str, init: str, r: int) -> None:
        A, B = self.lora_A[name].weight, self.lora_B[name].weight
        with torch.no_grad():
            if init == "pissa":
                return self._pissa(name)
            if init == "gaussian":
                nn.init.normal_(A, std=1 / r)
            else:
                nn.init.kaiming_uniform_(A, a=math.sqrt(5))
            nn.init.zeros_(B)

    def _pissa(self, name: str) -> None:
        """PiSSA (Meng et al. 2024): A, B from the top-r singular triplets; W keeps the residual."""
        if len(self.adapter_names()) > 1:
            raise ConfigError(
                "init_lora_weights", "pissa rewrites the base weight; use it on a layer with no other adapter"
            )
        if is_quantized(self.base):
            raise ConfigError("init_lora_weights", "pissa rewrites the base weight, which is 4-bit here")
        W = self.base.weight.detach().float()
        W = W.T if self.fan_in_fan_out else W  # (d_out, d_in)
        r, s = self.lora_A[name].out_features, self.scaling[name]
        U, S, Vh = torch.linalg.svd(W, full_matrices=False)
        sqrt_s = torch.sqrt(S[:r] / s)
        A, B = sqrt_s[:, None] * Vh[:r], U[:, :r] * sqrt_s[None, :]  # (r, d_in), (d_out, r)
        self.lora_A[name].weight.copy_(A)
        self.lora_B[name].weight.copy_(B)
        self.pissa_init[name] = (A.clone(), B.clone())
        self.base.weight.sub_(self.orient(s * B @ A).to(self.base.weight.dtype))

    def adapter_delta(self, name: str, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        A, B = self.lora_A[name], self.lora_B[name]
        return B(A(self.dropped(name, x, A.weight.dtype))) * self.scaling[name]  # (..., d_out)

    def delta_weight(self, name: str) -> torch.Tensor:
        B, A = self.lora_B[name].weight, self.lora_A[name].weight
        return self.orient(B @ A * self.scaling[name])  # base.weight's layout

    def forward(self, x: torch.Tensor, *args, **kwargs):
        out = super().forward(x, *args, **kwargs)
        return self._restore_principal(out, x) if self.pissa_init else out

    def _restore_principal(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Under PiSSA the base keeps only the residual: rows not using the adapter get W's top-r back."""
        name = next(iter(self.pissa_init))
        routing = current_rows()
        if self.disabled:
            rows = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        elif routing.mixed:
            rows = torch.tensor([r != name for r in routing.adapter_rows(x.shape[0])], device=x.device)
        else:
            rows = torch.full((x.shape[0],), name not in self.active, device=x.device)
        if not rows.any():
            return out
        A0, B0 = self.pissa_init[name]
        principal = (x[rows].to(A0.dtype) @ A0.T @ B0.T) * self.scaling[name]  # (n, T, d_out)
        out = out.clone()
        out[rows] = out[rows] + principal.to(out.dtype)
        return out

    def export_state_dict(self, name: str) -> dict[str, torch.Tensor]:
        """Adapter tensors valid on the *original* base: PiSSA becomes rank-2r LoRA (A;A0), (B,-B0)."""
        state = self.adapter_state_dict(name)
        if name in self.pissa_init:
            A0, B0 = self.pissa_init[name]
            state["lora_A.weight"] = torch.cat([state["lora_A.weight"], A0.to(state["lora_A.weight"])], 0)
            state["lora_B.weight"] = torch.cat([state["lora_B.weight"], -B0.to(state["lora_B.weight"])], 1)
        return state

    def delete(self, name: str) -> None:
        scale = self.scaling.get(name)
        super().delete(name)
        if name in self.pissa_init:  # give the base its principal part back
            A0, B0 = self.pissa_init.pop(name)
            with torch.no_grad():
                self.base.weight.add_(self.orient(scale * B0 @ A0).to(self.base.weight.dtype))


class LoraEmbedding(AdapterLayer):
    """LoRA on ``nn.Embedding``: the update is a low-rank lookup ``E_A[x] B^T``."""

    adapter_containers = ("lora_embedding_A", "lora_embedding_B")

    def __init__(self, base_layer: nn.Embedding):
        super().__init__(base_layer)
        self.lora_embedding_A, self.lora_embedding_B = nn.ParameterDict(), nn.ParameterDict()
        self.scaling: dict[str, float] = {}

    def add(self, name: str, config: LoraConfig, module_name: str) -> None:
        if config.init_lora_weights == "pissa":
            raise ConfigError(
                "init_lora_weights", f"pissa is for linear layers; {module_name} is an Embedding"
            )
        r, base, kw = config.rank_for(module_name), self.base, self.new_tensor_kwargs()
        check_rank("r", r, base.num_embeddings, base.embedding_dim, module_name)
        self.lora_embedding_A[name] = nn.Parameter(torch.zeros(r, base.num_embeddings, **kw))  # (r, V)
        self.lora_embedding_B[name] = nn.Parameter(torch.randn(base.embedding_dim, r, **kw))  # (d, r)
        self.scaling[name] = config.scaling_for(module_name)

    def adapter_delta(self, name: str, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        A, B, base = self.lora_embedding_A[name], self.lora_embedding_B[name], self.base
        after_a = F.embedding(
            x, A.T, base.padding_idx, base.max_norm, base.norm_type, base.scale_grad_by_freq
        )
        return (after_a @ B.T) * self.scaling[name]  # (B, T, d)

    def delta_weight(self, name: str) -> torch.Tensor:
        return (self.lora_embedding_B[name] @ self.lora_embedding_A[name]).T * self.scaling[name]  # (V, d)

    def delete(self, name: str) -> None:
        super().delete(name)
        self.scaling.pop(name, None)
