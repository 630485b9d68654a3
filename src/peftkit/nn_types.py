"""What kind of module is this: linear types, their widths, output heads, the dtype adapters train in.

A leaf of the package (it imports nothing of peftkit), so targeting, quantisation and every method's
layer can share it without import cycles.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import torch
from torch import nn

OUTPUT_HEAD_NAMES = ("lm_head", "score", "classifier", "qa_outputs")


def conv1d_type() -> type:
    """GPT-2's ``Conv1D``: a linear layer whose weight is stored transposed (``fan_in_fan_out``)."""
    from transformers.pytorch_utils import Conv1D

    return Conv1D


def linear_types() -> tuple[type, ...]:
    return (nn.Linear, conv1d_type())


def is_conv1d(module: nn.Module) -> bool:
    return isinstance(module, conv1d_type())


# (what the config says, whether the layer is a Conv1D) -> peft's warning when they disagree
FAN_IN_FAN_OUT_FIXES = {
    (True, False): "fan_in_fan_out is set to True but the target module is `torch.nn.Linear`. "
    "Setting fan_in_fan_out to False.",
    (False, True): "fan_in_fan_out is set to False but the target module is `Conv1D`. "
    "Setting fan_in_fan_out to True.",
}


def correct_fan_in_fan_out(config, module: nn.Module) -> None:
    """peft's rule for a config's ``fan_in_fan_out``: the adapted layer's type decides (a Conv1D stores its
    weight ``(d_in, d_out)``), and a config saying otherwise is corrected with peft's warning. peftkit's
    layers read the layout from the type; the field records it for peft's adapter_config.json."""
    message = FAN_IN_FAN_OUT_FIXES.get((config.fan_in_fan_out, is_conv1d(module)))
    if message:
        warnings.warn(message, UserWarning, stacklevel=4)
        config.fan_in_fan_out = is_conv1d(module)


def linear_dims(base: nn.Module) -> tuple[int, int]:
    """``(d_in, d_out)`` of a Linear (4-bit ones included: their packed weight has another shape) or
    of a GPT-2 Conv1D (weight stored ``(d_in, d_out)``)."""
    if isinstance(base, nn.Linear):
        return base.in_features, base.out_features
    rows, cols = base.weight.shape
    return (rows, cols) if is_conv1d(base) else (cols, rows)


def output_features(module: nn.Module) -> int | None:
    """The width of what ``module`` returns, or None when it cannot be told."""
    if isinstance(module, nn.Linear):
        return module.out_features
    if is_conv1d(module):
        return module.nf
    width = getattr(module, "out_features", None)  # quantised linears and the like
    return width if isinstance(width, int) else None


def trainable_dtype(base: nn.Module | torch.Tensor) -> torch.dtype:
    """The dtype an adapter on ``base`` trains in: the base's own when it is fp32/fp64, else fp32
    (a bf16 or 4-bit base keeps fp32 adapter weights and optimizer state)."""
    dtype = base.dtype if isinstance(base, torch.Tensor) else first_parameter(base).dtype
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def first_parameter(module: nn.Module) -> torch.Tensor:
    weight = getattr(module, "weight", None)
    return weight if isinstance(weight, torch.Tensor) else next(module.parameters())


def module_device(module: nn.Module) -> torch.device:
    return first_parameter(module).device


def output_head_names(model: nn.Module, modules: Iterable[tuple[str, nn.Module]]) -> set[str]:
    """Paths (among ``modules``, the model's named modules as the caller sees them) of the output head:
    modules named like one, and the module ``get_output_embeddings`` returns; a plain torch model's
    last linear layer."""
    modules = list(modules)
    heads = {n for n, _ in modules if n.split(".")[-1] in OUTPUT_HEAD_NAMES}
    get_out = getattr(model, "get_output_embeddings", None)
    if not callable(get_out):
        return heads | set([n for n, m in modules if isinstance(m, linear_types())][-1:])
    out = get_out()
    return heads | {n for n, m in modules if out is not None and m is out}


def replace_parameters(module: nn.Module, make) -> None:
    """Swap every parameter of ``module`` (and its children) for ``make(data)``, keeping ``requires_grad``:
    moving adapter weights to the meta device and back (``low_cpu_mem_usage``)."""
    for child in module.modules():
        for key, p in list(child._parameters.items()):
            if p is not None:
                child._parameters[key] = nn.Parameter(make(p.data), requires_grad=p.requires_grad)
