"""Training precision: the frozen base in bf16 where the hardware multiplies bf16 fast, else fp32.

A LoRA step on a frozen base is almost all matmuls with the base weights (forward, and the input
gradient through every frozen layer). On CPUs with bf16 dot-product instructions (AVX512-BF16,
AMX) or on GPUs, a bf16 matmul runs several times faster than fp32 and its weights take half the
memory. The base is then *loaded* in bf16 (never cast per step), while everything that trains stays
fp32: adapters create their tensors in fp32 beside a bf16 base (``adapter_dtype``), and
:func:`keep_trainable_fp32` turns any module that trains base tensors (a ``modules_to_save`` copy,
trained biases) into an fp32 island whose inputs are cast up and whose outputs are cast back. So
adapter weights, their gradients and the optimizer state are fp32 (the usual mixed-precision recipe,
Micikevicius et al. 2018, sec. 3.1, with a frozen bf16 copy in place of the fp16 working copy).

``auto`` picks bf16 when :func:`bf16_speedup` (a small matmul timed once in both dtypes) says bf16
is at least :data:`MIN_SPEEDUP` times faster. A CPU without bf16 instructions (AVX2 only) emulates
bf16 matmuls at about 1/100 of fp32's speed: there ``auto`` keeps fp32, and a base forced into bf16
(``train.precision: bf16``, ``model.dtype: bfloat16``) is warned about by name.
"""

from __future__ import annotations

import functools
import time
import warnings
from typing import Any

import torch
from torch import nn

from .errors import ConfigError

PRECISIONS = ("auto", "bf16", "fp32")
MIN_SPEEDUP = 1.3  # bf16 must beat fp32 by this much for auto to pick it
SLOW_BF16 = 0.5  # below this, a forced bf16 base is warned about: training would crawl
BUDGET_S = 0.25  # stop timing a dtype once its runs took this long (emulated bf16 on a slow CPU)
HALF = (torch.bfloat16, torch.float16)


class SlowBf16Warning(UserWarning):
    """A bf16 base was asked for on a device whose bf16 matmuls are much slower than fp32's."""


def _matmul_seconds(dtype: torch.dtype, device: str, n: int, reps: int) -> float:
    g = torch.Generator(device).manual_seed(0)  # its own generator: the probe never moves the global RNG
    a = torch.randn(n, n, device=device, generator=g).to(dtype)
    b = torch.randn(n, n, device=device, generator=g).to(dtype)
    best, spent = float("inf"), 0.0
    for _ in range(reps + 1):  # the first run builds the kernel
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        took = time.perf_counter() - start
        best, spent = min(best, took), spent + took
        if spent > BUDGET_S:  # slow enough that more runs would not change the verdict
            break
    return best


@functools.cache
def bf16_speedup(device: str = "cpu", n: int = 512, reps: int = 5) -> float:
    """How many times faster an ``n x n`` bf16 matmul runs than fp32 on ``device`` (measured once per
    process, the best of ``reps``; about 10 ms on a CPU)."""
    if device == "cuda" and not torch.cuda.is_bf16_supported():
        return 0.0
    fp32 = _matmul_seconds(torch.float32, device, n, reps)
    bf16 = _matmul_seconds(torch.bfloat16, device, n, reps)
    return fp32 / max(bf16, 1e-9)


def fast_bf16(device: str = "cpu") -> bool:
    """Whether bf16 matmuls are fast enough on ``device`` for ``auto`` to keep the base in bf16."""
    return bf16_speedup(device) >= MIN_SPEEDUP


def auto_dtype(device: str = "cpu") -> torch.dtype:
    """bf16 where :func:`fast_bf16` holds on ``device``, else fp32: what ``auto`` resolves to (the
    base's dtype under ``train.precision: auto``, a 4-bit base's compute dtype under
    ``model.compute_dtype: auto``)."""
    return torch.bfloat16 if fast_bf16(device) else torch.float32


def warn_if_slow_bf16(what: str, device: str = "cpu") -> None:
    """Warn, naming ``what`` asked for bf16, when bf16 matmuls on ``device`` run far below fp32's."""
    speedup = bf16_speedup(device)
    if speedup < SLOW_BF16:
        warnings.warn(
            f"{what} asks for bfloat16, but bf16 matmuls on this {device} run at {speedup:.2f}x the "
            "speed of float32 (no bf16 instructions: AVX512-BF16 or AMX); training will be many times "
            "slower. Use train.precision: auto (or fp32) and drop model.dtype/compute_dtype: bfloat16.",
            SlowBf16Warning,
            stacklevel=3,
        )


def base_dtype(precision: str, model_dtype: str = "float32", device: str = "cpu") -> torch.dtype:
    """The dtype the frozen base is loaded in.

    ``fp32`` and ``bf16`` are what they say; ``auto`` is bf16 where :func:`fast_bf16` holds (or when
    ``model_dtype``, the model section's explicit weights dtype, is already ``bfloat16``), else fp32.
    """
    if precision not in PRECISIONS:
        raise ConfigError("train.precision", f"got {precision!r}; allowed: {list(PRECISIONS)}")
    if precision == "fp32":
        if model_dtype == "bfloat16":
            raise ConfigError(
                "train.precision", "fp32 asks for a float32 base but model.dtype is bfloat16; drop one"
            )
        return torch.float32
    if precision == "bf16" or model_dtype == "bfloat16":
        what = "train.precision: bf16" if precision == "bf16" else "model.dtype: bfloat16"
        warn_if_slow_bf16(what, device)
        return torch.bfloat16
    return auto_dtype(device)


def half_trainable(model: nn.Module) -> list[str]:
    """Names of trainable parameters held in a 16-bit dtype."""
    return [n for n, p in model.named_parameters() if p.requires_grad and p.dtype in HALF]


def keep_trainable_fp32(model: nn.Module) -> list[str]:
    """Make every module that owns a trainable 16-bit parameter an fp32 island: its own parameters
    become fp32 and it computes on fp32 inputs, handing its outputs back in its input's dtype.
    Returns the islands' names. Call it after the adapters are added, before the optimizer is built."""
    islands = []
    for name, module in model.named_modules():
        own = list(module.named_parameters(recurse=False))
        if not any(p.requires_grad and p.dtype in HALF for _, p in own):
            continue
        for _, p in own:
            if p.dtype in HALF:
                p.data = p.data.float()
        module.register_forward_pre_hook(_inputs_to_fp32, with_kwargs=True)
        module.register_forward_hook(_outputs_back, with_kwargs=True)
        islands.append(name)
    return islands


def _cast(value: Any, dtype: torch.dtype, only: tuple[torch.dtype, ...]) -> Any:
    if isinstance(value, torch.Tensor) and value.dtype in only:
        return value.to(dtype)
    if isinstance(value, (tuple, list)):
        return type(value)(_cast(v, dtype, only) for v in value)
    return value


def _first_float_dtype(args: tuple, kwargs: dict) -> torch.dtype | None:
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            return value.dtype
    return None


def _inputs_to_fp32(module: nn.Module, args: tuple, kwargs: dict):
    module._island_dtype = _first_float_dtype(args, kwargs)
    return _cast(args, torch.float32, HALF), {k: _cast(v, torch.float32, HALF) for k, v in kwargs.items()}


def _outputs_back(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
    dtype = getattr(module, "_island_dtype", None)
    return _cast(output, dtype, (torch.float32,)) if dtype in HALF else output
