"""LoRA+ (Hayou et al. 2024): the ``B`` factors learn ``loraplus_lr_ratio`` times faster than ``A``.

With ``B = 0`` at init and the same learning rate for both factors, the update of a wide layer is
dominated by ``A``'s learning and ``B`` moves too slowly (sec. 3-4); the paper sets ``eta_B = lambda eta_A``
with ``lambda`` about ``2^4``. peft's :func:`create_loraplus_optimizer` (``peft.optimizers``), same signature
and the same four parameter groups:

* ``A`` factors and every other matrix: ``lr``;
* LoRA on an embedding (both factors): ``loraplus_lr_embedding`` (default ``1e-6``);
* ``B`` factors and one-dimensional parameters (biases, DoRA's magnitudes, norms): ``lr * loraplus_lr_ratio``,
  with ``loraplus_weight_decay`` except for biases and ``LayerNorm`` parameters, which take none.

A parameter's group comes from the adapter container holding it (:class:`~peftkit.layer.AdapterLayer`),
not from guessing at names.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers.pytorch_utils import ALL_LAYERNORM_LAYERS

from .errors import ConfigError
from .layer import adapter_layers
from .methods.lora.layer import LoraEmbedding

B_CONTAINERS = ("lora_B",)  # the containers holding B factors (LoRA, AdaLoRA, AdaPtLoRA)


def create_loraplus_optimizer(
    model: nn.Module,
    optimizer_cls: type[torch.optim.Optimizer],
    *,
    lr: float,
    loraplus_lr_ratio: float,
    **kwargs: Any,
) -> torch.optim.Optimizer:
    """An ``optimizer_cls`` over ``model``'s trainable parameters in LoRA+'s groups.

    ``kwargs`` may hold ``loraplus_weight_decay`` (default 0.0) and ``loraplus_lr_embedding`` (default 1e-6);
    the rest go to ``optimizer_cls`` (e.g. ``betas``, ``eps``).
    """
    if not lr > 0 or not loraplus_lr_ratio > 0:
        raise ConfigError(
            "lr", f"lr and loraplus_lr_ratio must be positive, got {lr!r}, {loraplus_lr_ratio!r}"
        )
    weight_decay = kwargs.pop("loraplus_weight_decay", 0.0)
    lr_embedding = kwargs.pop("loraplus_lr_embedding", 1e-6)
    groups = loraplus_groups(model)
    param_groups = [
        {"params": groups["A"], "weight_decay": weight_decay, "lr": lr},
        {"params": groups["embedding"], "weight_decay": weight_decay, "lr": lr_embedding},
        {"params": groups["B"], "weight_decay": weight_decay, "lr": lr * loraplus_lr_ratio},
        {"params": groups["B_no_decay"], "weight_decay": 0.0, "lr": lr * loraplus_lr_ratio},
    ]
    return optimizer_cls(param_groups, lr=lr, **kwargs)


def loraplus_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """The trainable parameters of ``model`` by LoRA+ group: ``A``, ``embedding``, ``B``, ``B_no_decay``."""
    owner = _adapter_containers(model)
    no_decay = _no_decay(model)
    groups: dict[str, list[nn.Parameter]] = {"A": [], "embedding": [], "B": [], "B_no_decay": []}
    for p in model.parameters():
        if not p.requires_grad:
            continue
        layer, container = owner.get(id(p), (None, ""))
        if isinstance(layer, LoraEmbedding) and container.startswith("lora_embedding_"):
            groups["embedding"].append(p)
        elif container in B_CONTAINERS or p.ndim == 1:
            groups["B_no_decay" if id(p) in no_decay else "B"].append(p)
        else:
            groups["A"].append(p)
    return groups


def _adapter_containers(model: nn.Module) -> dict[int, tuple[nn.Module, str]]:
    """Each adapter parameter's layer and the container (``lora_A``, ``lora_B``, ...) holding it."""
    owner: dict[int, tuple[nn.Module, str]] = {}
    for _, layer in adapter_layers(model):
        for attr in layer.adapter_containers:
            for p in getattr(layer, attr).parameters():
                owner[id(p)] = (layer, attr)
    return owner


def _no_decay(model: nn.Module) -> set[int]:
    """Biases and the parameters of ``LayerNorm`` layers (``transformers.Trainer``'s rule, as peft)."""
    skip = {id(p) for n, p in model.named_parameters() if "bias" in n}
    for module in model.modules():
        if isinstance(module, tuple(ALL_LAYERNORM_LAYERS)):
            skip |= {id(p) for p in module.parameters()}
    return skip
