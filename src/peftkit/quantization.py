"""4-bit NormalFloat base weights with double quantisation (QLoRA, Dettmers et al. 2023) through
``bitsandbytes`` (an optional dependency, imported only here and only when used; its NF4 runs on CPU
from 0.50 on).

NF4 stores each weight as a 4-bit index into a code book of 16 normal quantiles, scaled per block of
64 weights by the block's absolute maximum; double quantisation stores those fp32 constants in 8 bits
per block of 256. That costs ``8/64 + 32/(64*256) = 0.127`` bits per weight on top of the 4 (sec. 3).

A quantised layer is a ``bitsandbytes.nn.Linear4bit`` (a subclass of ``nn.Linear``), whichever way it
was made: :func:`quantize_model` on a full-precision model, or ``transformers`` loading with
``BitsAndBytesConfig``. Adapters wrap it like any Linear; merging replaces it by its dequantised
full-precision copy (:func:`dequantize_linear`), since a 4-bit weight cannot take a delta.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .nn_types import output_head_names
from .precision import auto_dtype

QUANT_TYPES = ("nf4",)
INSTALL_HINT = (
    "4-bit quantisation needs bitsandbytes (>= 0.50 for NF4 on CPU): pip install 'peftkit[quant]' "
    "(or: pip install bitsandbytes)"
)


def require_bitsandbytes() -> Any:
    try:
        import bitsandbytes
    except ImportError as err:
        raise ImportError(INSTALL_HINT) from err
    return bitsandbytes


def is_quantized(module: nn.Module) -> bool:
    """Does ``module`` hold a 4-bit weight (a bitsandbytes ``Params4bit`` with its quantisation state)?"""
    return getattr(getattr(module, "weight", None), "quant_state", None) is not None


def logical_numel(param: torch.Tensor) -> int:
    """Weights a parameter stands for: a 4-bit one packs two per stored byte."""
    state = getattr(param, "quant_state", None)
    return state.shape.numel() if state is not None else param.numel()


def quantized_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The modules that own a 4-bit weight (not the adapter layers that expose their base's weight)."""
    return [
        (n, m)
        for n, m in model.named_modules()
        if is_quantized(m) and "weight" in dict(m.named_parameters(recurse=False))
    ]


def quantize_model(
    model: nn.Module,
    quant_type: str = "nf4",
    compute_dtype: torch.dtype | None = None,
    double_quant: bool = True,
    skip: tuple[str, ...] = (),
) -> nn.Module:
    """Replace every ``nn.Linear`` of ``model`` (but the output head and ``skip``) by a 4-bit one, in place.

    The output head stays in full precision, as ``transformers`` does, since its logits are what
    the loss and decoding read. ``compute_dtype``: the dtype the 4-bit weights are dequantised to
    for each matmul (None: bfloat16 where the hardware multiplies it fast, else float32).
    """
    if quant_type not in QUANT_TYPES:
        raise ValueError(f"quantize={quant_type!r}: peftkit quantises to one of {list(QUANT_TYPES)}")
    require_bitsandbytes()
    if compute_dtype is None:
        compute_dtype = auto_dtype("cuda" if torch.cuda.is_available() else "cpu")
    keep = output_head_names(model, model.named_modules()) | set(skip)
    targets = [(n, m) for n, m in model.named_modules() if type(m) is nn.Linear and n not in keep]
    if not targets:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer to quantise")
    for name, linear in targets:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, quantize_linear(linear, quant_type, compute_dtype, double_quant))
    model.is_loaded_in_4bit = True  # what transformers sets; other libraries (peft) read it
    return model


def quantize_linear(
    linear: nn.Linear, quant_type: str, compute_dtype: torch.dtype, double_quant: bool
) -> nn.Module:
    """A frozen ``bitsandbytes.nn.Linear4bit`` holding ``linear``'s weight in 4 bits, bias as is."""
    bnb = require_bitsandbytes()
    has_bias = linear.bias is not None
    q = bnb.nn.Linear4bit(
        linear.in_features,
        linear.out_features,
        bias=has_bias,
        compute_dtype=compute_dtype,
        compress_statistics=double_quant,
        quant_type=quant_type,
        device="meta",
    )
    q.weight = bnb.nn.Params4bit(
        linear.weight.data.detach().clone(),
        requires_grad=False,
        compress_statistics=double_quant,
        quant_type=quant_type,
    )
    if has_bias:
        q.bias = nn.Parameter(linear.bias.data.detach().clone(), requires_grad=False)
    # bitsandbytes repacks the weight for a CPU inference kernel on the first eval-mode call; it needs
    # d_in to be a multiple of the block size and changes the stored layout. Keep the one layout.
    q.support_avx512bf16_for_cpu = False
    q.train(linear.training)
    return q.to(linear.weight.device)  # moving a Params4bit quantises it


def dequantized_weight(module: nn.Module) -> torch.Tensor:
    """``(d_out, d_in)`` full-precision weight of a 4-bit layer, in the dtype it was quantised from."""
    bnb = require_bitsandbytes()
    unpack_cpu_layout(module)
    weight = module.weight
    return bnb.functional.dequantize_4bit(weight.data, weight.quant_state)


def unpack_cpu_layout(module: nn.Module) -> None:
    """Undo bitsandbytes' CPU inference repacking (done on a layer's first eval-mode call), as its own
    ``state_dict`` does, so the weight and its quantisation state are in the standard layout again."""
    from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

    weight = module.weight
    if getattr(weight.quant_state, "packing_format_for_cpu", False):
        weight.data, weight.quant_state = _convert_weight_packed_for_cpu_inverse(
            weight.data, weight.quant_state
        )


def dequantize_linear(module: nn.Module) -> nn.Linear:
    """A plain ``nn.Linear`` with the 4-bit layer's dequantised weight (and its bias)."""
    weight = dequantized_weight(module)
    has_bias = module.bias is not None
    linear = nn.Linear(module.in_features, module.out_features, bias=has_bias, device=weight.device)
    linear.to(weight.dtype)
    with torch.no_grad():
        linear.weight.copy_(weight)
        if has_bias:
            linear.bias.copy_(module.bias.to(weight.dtype))
    linear.weight.requires_grad_(False)
    if has_bias:
        linear.bias.requires_grad_(False)
    return linear.train(module.training)


def dequantize_model(model: nn.Module) -> nn.Module:
    """Replace every 4-bit layer left in ``model`` by its full-precision copy and drop its quantisation
    config, in place, with a warning: a merged QLoRA model is a dequantised full-precision one."""
    layers = quantized_layers(model)
    for name, module in layers:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, dequantize_linear(module))
    strip_quantization_config(model)
    warnings.warn(
        f"the base was 4-bit: the merged model is dequantised to full precision ({len(layers)} 4-bit "
        "layers without an adapter included); it takes the memory of the unquantised model",
        stacklevel=3,
    )
    return model


def strip_quantization_config(model: nn.Module) -> None:
    """After merging into dequantised layers: the model is a full-precision one again, and saves as such."""
    strip_gguf_quantization(model)
    model.is_loaded_in_4bit = False


def strip_gguf_quantization(model: Any) -> None:
    """Drop transformers' quantisation state (GGUF, bitsandbytes), so that ``save_pretrained`` accepts
    the dequantised model."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None and hasattr(quantizer, "remove_quantization_config"):
        quantizer.remove_quantization_config(model)
    for config in {id(m.config): m.config for m in model.modules() if hasattr(m, "config")}.values():
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config._is_quantized = False
    if hasattr(model, "quantization_method"):
        del model.quantization_method
    model.hf_quantizer, model.is_quantized = None, False


@dataclass(frozen=True)
class QuantStats:
    """Storage of a model's 4-bit layers, in bits per quantised weight, and of the whole base."""

    layers: int
    quantized_params: int
    weight_bytes: int  # the packed 4-bit indices
    constant_bytes: int  # block absmax (8-bit with double quantisation), its fp32 block constants, offsets
    codebook_bytes: int  # the 16-entry NF4 table and the 256-entry table of the nested constants, per layer
    other_params_bytes: int  # every parameter not quantised (embeddings, norms, head, adapters)
    other_params: int

    @property
    def bits_per_parameter(self) -> float:
        """Weights plus block constants: 4.127 bits for NF4 with double quantisation (sec. 3)."""
        return 8 * (self.weight_bytes + self.constant_bytes) / max(self.quantized_params, 1)

    @property
    def bits_with_codebooks(self) -> float:
        return (
            8
            * (self.weight_bytes + self.constant_bytes + self.codebook_bytes)
            / max(self.quantized_params, 1)
        )

    @property
    def model_bits_per_parameter(self) -> float:
        """Every parameter of the base, the full-precision ones included."""
        total = self.weight_bytes + self.constant_bytes + self.codebook_bytes + self.other_params_bytes
        return 8 * total / max(self.quantized_params + self.other_params, 1)

    def __str__(self) -> str:
        return (
            f"4-bit base: {self.layers} layers, {self.quantized_params:,} weights at "
            f"{self.bits_per_parameter:.3f} bits/param ({self.bits_with_codebooks:.3f} with code books); "
            f"whole base {self.model_bits_per_parameter:.2f} bits/param "
            f"({self.other_params:,} parameters kept in full precision)"
        )


def quant_stats(model: nn.Module) -> QuantStats:
    """Measure the stored tensors of every 4-bit layer of ``model`` (nothing is assumed)."""
    layers = quantized_layers(model)
    weights = constants = codebooks = n = 0
    quantized_ids = set()
    for _, module in layers:
        unpack_cpu_layout(module)
        weight, state = module.weight, module.weight.quant_state
        quantized_ids.add(id(weight))
        n += module.in_features * module.out_features
        weights += _bytes(weight.data)
        constants += _bytes(state.absmax)
        codebooks += _bytes(state.code)
        if state.nested:
            constants += _bytes(state.state2.absmax) + _bytes(state.offset)
            codebooks += _bytes(state.state2.code)
    others = [p for p in model.parameters() if id(p) not in quantized_ids]
    return QuantStats(
        layers=len(layers),
        quantized_params=n,
        weight_bytes=weights,
        constant_bytes=constants,
        codebook_bytes=codebooks,
        other_params_bytes=sum(_bytes(p) for p in others),
        other_params=sum(p.numel() for p in others),
    )


def _bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def prepare_model_for_kbit_training(
    model: nn.Module,
    use_gradient_checkpointing: bool = True,
    gradient_checkpointing_kwargs: dict[str, Any] | None = None,
) -> nn.Module:
    """peft's preparation of a base model before adapters are added for training, in place: every weight
    frozen, half-precision weights (not 4-bit ones) upcast to float32 for stable training, and on a quantised
    model (``transformers``' ``is_loaded_in_4bit`` / ``8bit`` or peftkit's :func:`quantize_model`) gradient
    checkpointing switched on (``use_gradient_checkpointing``), with the embeddings' outputs requiring grad so
    that checkpointed blocks pass gradients to the adapters."""
    kwargs = dict(gradient_checkpointing_kwargs or {})
    for param in model.parameters():
        param.requires_grad_(False)
    for param in model.parameters():
        if param.dtype in (torch.float16, torch.bfloat16) and getattr(param, "quant_state", None) is None:
            param.data = param.data.to(torch.float32)
    kbit = any(getattr(model, f, False) for f in ("is_loaded_in_8bit", "is_loaded_in_4bit")) or bool(
        quantized_layers(model)
    )
    if kbit and use_gradient_checkpointing:
        if kwargs.get("use_reentrant", True) and hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()
        if not hasattr(model, "gradient_checkpointing_enable"):
            raise ValueError(
                f"{type(model).__name__} has no gradient_checkpointing_enable; pass "
                "use_gradient_checkpointing=False"
            )
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    return model
