"""LoRA layers: ``y = base(x) + B(A(dropout(x))) * scale`` beside the frozen layer; dW never built
in the forward pass, only for merging. DoRA adapters (``use_dora``) rescale that per output unit
(:mod:`.dora`); PiSSA and OLoRA adapters take their factors out of the base weight (:mod:`.init`)."""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from ...config import check_rank, check_size
from ...errors import ConfigError
from ...layer import AdapterLayer
from ...quantization import dequantized_weight, is_quantized
from ...rows import current_rows
from ..lowrank import LowRankLayer
from . import fused
from .config import LoraConfig
from .dora import DoraParts
from .init import init_beside, residual_factors


class LoraLinear(DoraParts, LowRankLayer):
    """LoRA on ``nn.Linear`` and GPT-2's ``Conv1D`` (weight stored transposed: fan_in_fan_out)."""

    adapter_containers = ("lora_A", "lora_B", "lora_magnitude_vector")

    def __init__(self, base_layer: nn.Module):
        super().__init__(base_layer)
        self.lora_A, self.lora_B = nn.ModuleDict(), nn.ModuleDict()
        self.residual: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # PiSSA/OLoRA: (A0, B0) taken from W

    def add(self, name: str, config: LoraConfig, module_name: str) -> None:
        r, kw = config.rank_for(module_name), self.new_tensor_kwargs()
        check_rank("r", r, self.in_features, self.out_features, module_name)
        self.lora_A[name] = nn.Linear(self.in_features, r, bias=False, **kw)  # (r, d_in)
        self.lora_B[name] = nn.Linear(r, self.out_features, bias=config.lora_bias, **kw)  # (d_out, r)
        self.add_path(name, config.lora_dropout, config.scaling_for(module_name))
        if config.lora_bias and self.bias is None:
            warnings.warn(
                f"lora_bias=True on {module_name}, a {type(self.base).__name__} without a bias: the adapter "
                "trains, but it cannot be merged",
                stacklevel=2,
            )
        if config.residual_init:
            self._take_residual(name, str(config.init_lora_weights), r, module_name)
        else:
            init_beside(self.A(name), self.B(name), config.init_lora_weights, r, self.lora_B[name].bias)
        if config.use_dora:
            self.add_magnitude(name)

    def A(self, name: str) -> torch.Tensor:
        return self.lora_A[name].weight  # (r, d_in)

    def B(self, name: str) -> torch.Tensor:
        return self.lora_B[name].weight  # (d_out, r)

    # ---- PiSSA / OLoRA: the factors come out of the base weight ------------------------------------
    @torch.no_grad()
    def _take_residual(self, name: str, init: str, r: int, module_name: str) -> None:
        """A, B from W (:func:`residual_factors`); W keeps ``W - s B A``, (A, B) are kept to give rows
        without the adapter (and a deleted adapter) the part taken out back."""
        if len(self.adapter_names()) > 1:
            raise ConfigError(
                "init_lora_weights",
                f"{init} rewrites the base weight; use it on a layer with no other adapter",
            )
        if is_quantized(self.base):
            raise ConfigError("init_lora_weights", f"{init} rewrites the base weight, which is 4-bit here")
        full = min(self.in_features, self.out_features)
        check_size("r", r, full, module_name, f"{init} takes r components of a rank-{full} weight")
        W = self.orient(self.base.weight.detach().float())  # (d_out, d_in)
        s = self.scaling[name]
        A, B = residual_factors(W, r, s, init)
        self.A(name).copy_(A)
        self.B(name).copy_(B)
        self.residual[name] = (A.clone(), B.clone())
        self.base.weight.sub_(self.orient(s * B @ A).to(self.base.weight.dtype))

    def forward(self, x: torch.Tensor, *args, **kwargs):
        if not args and not kwargs and self._fusable(x):
            return self._fused_forward(x)
        out = super().forward(x, *args, **kwargs)
        return self._restore_principal(out, x) if self.residual else out

    # ---- the fused training path (methods/lora/fused.py) ----------------------------------------
    def _fusable(self, x: torch.Tensor) -> bool:
        """Training one unmerged plain LoRA adapter (no DoRA, no B bias, no PiSSA/OLoRA residual) on a
        frozen ``nn.Linear``, every row with it (no mixed batch), no autocast, and no forward hook on
        the adapter's modules (the fused path does not call them: FSDP2's unit hooks, a user's)."""
        if not (fused.enabled() and self.training and torch.is_grad_enabled()) or self.disabled:
            return False
        if len(self.active) != 1 or self.merged or self.residual or current_rows().mixed:
            return False
        name, base = self.active[0], self.base
        return (
            type(base) is nn.Linear
            and type(self).adapter_delta is LoraLinear.adapter_delta  # a subclass's own maths stays
            and not self.is_dora(name)
            and self.lora_B[name].bias is None
            and not any(p.requires_grad for p in base.parameters())
            and x.dtype == base.weight.dtype
            and isinstance(self.lora_dropout[name], (nn.Dropout, nn.Identity))
            and not torch.is_autocast_enabled(x.device.type)
            and not any(_hooked(m) for m in (self.lora_A[name], self.lora_B[name], self.lora_dropout[name]))
        )

    def _fused_forward(self, x: torch.Tensor) -> torch.Tensor:
        name = self.active[0]
        drop = self.lora_dropout[name]
        p = drop.p if isinstance(drop, nn.Dropout) and drop.training else 0.0
        return fused.fused_lora_linear(
            x, self.base.weight, self.base.bias, self.A(name), self.B(name), self.scaling[name], p
        )

    def _restore_principal(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Under PiSSA/OLoRA the base keeps only the residual: rows not using the adapter get it back."""
        name = next(iter(self.residual))
        routing = current_rows()
        if self.disabled:
            rows = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        elif routing.mixed:
            rows = torch.tensor([r != name for r in routing.adapter_rows(x.shape[0])], device=x.device)
        else:
            rows = torch.full((x.shape[0],), name not in self.active, device=x.device)
        if not rows.any():
            return out
        A0, B0 = self.residual[name]
        principal = (x[rows].to(A0.dtype) @ A0.T @ B0.T) * self.scaling[name]  # (n, T, d_out)
        out = out.clone()
        out[rows] = out[rows] + principal.to(out.dtype)
        return out

    # ---- maths -----------------------------------------------------------------------------------
    def adapter_delta(self, name: str, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        A, B = self.lora_A[name], self.lora_B[name]
        x = self.dropped(name, x, A.weight.dtype)
        lora = B(A(x)) * self.scaling[name]  # (..., d_out)
        if not self.is_dora(name):
            return lora
        return self.dora_delta(name, lora, lambda W: F.linear(x, W))  # W x: no bias

    def delta_weight(self, name: str) -> torch.Tensor:
        if self.is_dora(name):
            return self.dora_delta_weight(name)
        return self.orient(self.unit_update(name))  # base.weight's layout

    def delta_bias(self, name: str) -> torch.Tensor | None:
        bias = self.lora_B[name].bias
        return None if bias is None else bias * self.scaling[name]  # (d_out,)

    # ---- DoRA's view of the layer: one row per output unit ----------------------------------------
    def unit_weight(self) -> torch.Tensor:
        weight = dequantized_weight(self.base) if is_quantized(self.base) else self.base.weight
        return self.orient(weight)  # (d_out, d_in)

    def unit_update(self, name: str) -> torch.Tensor:
        return self.B(name) @ self.A(name) * self.scaling[name]  # (d_out, d_in)

    def from_units(self, weight: torch.Tensor) -> torch.Tensor:
        return self.orient(weight)

    # ---- checkpoints -----------------------------------------------------------------------------
    def export_state_dict(self, name: str) -> dict[str, torch.Tensor]:
        """Adapter tensors valid on the *original* base: PiSSA/OLoRA become rank-2r LoRA (A;A0), (B,-B0)."""
        state = self.adapter_state_dict(name)
        if name in self.residual:
            A0, B0 = self.residual[name]
            state["lora_A.weight"] = torch.cat([state["lora_A.weight"], A0.to(state["lora_A.weight"])], 0)
            state["lora_B.weight"] = torch.cat([state["lora_B.weight"], -B0.to(state["lora_B.weight"])], 1)
        return state

    def delete(self, name: str) -> None:
        scale = self.scaling.get(name)
        super().delete(name)
        if name in self.residual:  # give the base the part taken out back
            A0, B0 = self.residual.pop(name)
            with torch.no_grad():
                self.base.weight.add_(self.orient(scale * B0 @ A0).to(self.base.weight.dtype))


class LoraEmbedding(DoraParts, AdapterLayer):
    """LoRA on ``nn.Embedding``: the update is a low-rank lookup ``E_A[x] B^T``."""

    adapter_containers = ("lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector")

    def __init__(self, base_layer: nn.Embedding):
        super().__init__(base_layer)
        self.lora_embedding_A, self.lora_embedding_B = nn.ParameterDict(), nn.ParameterDict()
        self.scaling: dict[str, float] = {}

    def add(self, name: str, config: LoraConfig, module_name: str) -> None:
        if config.residual_init or config.lora_bias:
            field = "init_lora_weights" if config.residual_init else "lora_bias"
            raise ConfigError(
                field,
                f"{field}={getattr(config, field)!r} is for linear layers; {module_name} is an Embedding",
            )
        r, base, kw = config.rank_for(module_name), self.base, self.new_tensor_kwargs()
        check_rank("r", r, base.num_embeddings, base.embedding_dim, module_name)
        # A = 0, B normal: B A = 0 (the LoRA paper's embedding init); init False: both random, as peft
        draw = torch.randn if config.init_lora_weights is False else torch.zeros
        self.lora_embedding_A[name] = nn.Parameter(draw(r, base.num_embeddings, **kw))  # (r, V)
        self.lora_embedding_B[name] = nn.Parameter(torch.randn(base.embedding_dim, r, **kw))  # (d, r)
        self.scaling[name] = config.scaling_for(module_name)
        if config.use_dora:
            self.add_magnitude(name)

    def adapter_delta(self, name: str, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        A, B = self.lora_embedding_A[name], self.lora_embedding_B[name]
        after_a = self._lookup(x, A.T)  # (B, T, r)
        lora = (after_a @ B.T) * self.scaling[name]  # (B, T, d)
        if not self.is_dora(name):
            return lora
        return self.dora_delta(name, lora, lambda W: self._lookup(x, W.T))  # W[x]: (B, T, d)

    def _lookup(self, x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """``table[x]`` with the base embedding's options (padding index, max norm, ...)."""
        base = self.base
        return F.embedding(x, table, base.padding_idx, base.max_norm, base.norm_type, base.scale_grad_by_freq)

    def delta_weight(self, name: str) -> torch.Tensor:
        if self.is_dora(name):
            return self.dora_delta_weight(name)
        return self.unit_update(name).T  # (V, d)

    # ---- DoRA's view: one row per embedding dimension, the norm taken over the vocabulary -----------
    def unit_weight(self) -> torch.Tensor:
        return self.base.weight.T  # (d, V)

    def unit_update(self, name: str) -> torch.Tensor:
        return self.lora_embedding_B[name] @ self.lora_embedding_A[name] * self.scaling[name]  # (d, V)

    def from_units(self, weight: torch.Tensor) -> torch.Tensor:
        return weight.T  # (V, d)

    def delete(self, name: str) -> None:
        super().delete(name)
        self.scaling.pop(name, None)


def _hooked(module: nn.Module) -> bool:
    """Whether ``module`` has forward hooks (which only a call of the module runs)."""
    return bool(module._forward_pre_hooks or module._forward_hooks)
