"""Architecture slots: where each transformer block keeps its sub-layers, declared once per family.

Methods that hook into a block (bottleneck adapters, AdapterFusion, prefix tuning) ask for a slot
by name and wrap the module found there; they never re-implement a model's forward.

A family is a list of :class:`LayerStack` entries (T5 has two: encoder and decoder blocks). Each
names its layer list (a path *suffix*, so ``"layers"`` finds ``model.layers`` under any head) and,
relative to one layer, the module in each slot:

- ``attention``: the self-attention module (its input is the attention sub-layer's input).
- ``attention_output``: the module whose output is the attention sub-layer's result, before the
  residual connection (BERT ``attention.output.dense``, Llama ``self_attn.o_proj``).
- ``ffn_input``: the module whose input is the feed-forward sub-layer's input (BERT
  ``intermediate``, Llama ``mlp``).
- ``ffn_output``: the module whose output is the feed-forward result before the residual.
- ``cross_attention``: the encoder-decoder attention, where there is one.

A new architecture is one call::

    peftkit.slots.declare_slots("my_model_type", LayerStack(
        layers="model.layers", attention="attn", attention_output="attn.out_proj",
        ffn_input="mlp", ffn_output="mlp.fc2"))

The key is the model's ``config.model_type`` or, for a plain ``nn.Module``, its class name.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from torch import nn

from .errors import TargetError

SLOT_NAMES = ("attention", "attention_output", "ffn_input", "ffn_output", "cross_attention")


@dataclass(frozen=True)
class LayerStack:
    """One list of transformer layers and the path of each slot inside a layer (None: absent)."""

    layers: str
    attention: str | None = None
    attention_output: str | None = None
    ffn_input: str | None = None
    ffn_output: str | None = None
    cross_attention: str | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name != "layers" and value is None:
                continue
            if not isinstance(value, str) or not value or value.startswith(".") or value.endswith("."):
                raise TargetError(f"LayerStack.{f.name}: expected a dotted module path, got {value!r}")


@dataclass(frozen=True)
class LayerSlots:
    """The slots of one layer of a model, resolved to full module paths (None: not declared)."""

    index: int  # position in its layer list
    stack: str  # the layer list's full path, e.g. "bert.encoder.layer"
    path: str  # this layer's full path
    slots: dict[str, str | None]

    def module_path(self, slot: str, family: str) -> str:
        """The full path of ``slot`` in this layer; a slot the family does not declare is an error."""
        relative = self.slots.get(slot)
        if relative is None:
            raise TargetError(
                f"architecture {family!r} declares no {slot!r} slot for {self.stack}; declare it with "
                f"peftkit.slots.declare_slots({family!r}, LayerStack(layers=..., {slot}='<path in a layer>'))"
            )
        return f"{self.path}.{relative}"


_FAMILIES: dict[str, tuple[LayerStack, ...]] = {}


def declare_slots(key: str | type, *stacks: LayerStack, replace: bool = False) -> None:
    """Declare the slots of an architecture: ``key`` is a ``config.model_type`` or an ``nn.Module`` class."""
    name = key if isinstance(key, str) else key.__name__
    if not stacks or not all(isinstance(s, LayerStack) for s in stacks):
        raise TargetError(f"declare_slots({name!r}, ...): give one LayerStack per layer list")
    if name in _FAMILIES and not replace:
        raise TargetError(f"slots for {name!r} are already declared; pass replace=True to change them")
    _FAMILIES[name] = tuple(stacks)


def declared_families() -> list[str]:
    return sorted(_FAMILIES)


def family_of(model: nn.Module) -> str:
    """The key ``model`` is declared under: ``config.model_type``, else a class name in its MRO."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type in _FAMILIES:
        return model_type
    for cls in type(model).__mro__:
        if cls.__name__ in _FAMILIES:
            return cls.__name__
    label = f"model_type {model_type!r} ({type(model).__name__})" if model_type else type(model).__name__
    raise TargetError(
        f"no architecture slots declared for {label}; declared: {declared_families()}. Declare them with "
        f"peftkit.slots.declare_slots({model_type or type(model).__name__!r}, LayerStack(layers='<layer "
        "list path>', attention=..., attention_output=..., ffn_input=..., ffn_output=...))"
    )


def model_layers(model: nn.Module) -> tuple[str, list[LayerSlots]]:
    """The family name and every layer of ``model`` with its slots as full module paths."""
    family = family_of(model)
    modules = dict(model.named_modules())
    out: list[LayerSlots] = []
    for stack in _FAMILIES[family]:
        stack_path = _find_layer_list(modules, stack.layers, family)
        for i in range(len(modules[stack_path])):
            slots = {s: getattr(stack, s) for s in SLOT_NAMES}
            out.append(LayerSlots(i, stack_path, f"{stack_path}.{i}", slots))
    return family, out


def _find_layer_list(modules: dict[str, nn.Module], suffix: str, family: str) -> str:
    found = [
        p
        for p, m in modules.items()
        if (p == suffix or p.endswith("." + suffix)) and isinstance(m, nn.ModuleList)
    ]
    if len(found) != 1:
        what = "no ModuleList" if not found else f"several ModuleLists {found}"
        raise TargetError(
            f"architecture {family!r}: layer list {suffix!r} matches {what} in this model; "
            f"fix it with peftkit.slots.declare_slots({family!r}, LayerStack(layers=...), replace=True)"
        )
    return found[0]


def slot_modules(model: nn.Module, slot: str, layers: list[int] | None = None) -> list[tuple[str, int]]:
    """``(module path, layer index)`` of ``slot`` in every layer (or the listed layer indices)."""
    family, all_layers = model_layers(model)
    modules = dict(model.named_modules())
    out = []
    for layer in all_layers:
        if layers is not None and layer.index not in layers:
            continue
        path = layer.module_path(slot, family)
        if path not in modules:
            raise TargetError(
                f"architecture {family!r}: slot {slot!r} = {layer.slots[slot]!r} is not a module of "
                f"{layer.path}; fix the path with peftkit.slots.declare_slots({family!r}, ..., replace=True)"
            )
        out.append((path, layer.index))
    return out


_BERT = LayerStack(
    layers="encoder.layer",
    attention="attention.self",
    attention_output="attention.output.dense",
    ffn_input="intermediate",
    ffn_output="output.dense",
)
_DECODER = LayerStack(  # Llama, Mistral, Qwen2 and most decoder-only models since
    layers="layers",
    attention="self_attn",
    attention_output="self_attn.o_proj",
    ffn_input="mlp",
    ffn_output="mlp.down_proj",
)
_GPT2 = LayerStack(
    layers="h", attention="attn", attention_output="attn.c_proj", ffn_input="mlp", ffn_output="mlp.c_proj"
)
_T5 = (
    LayerStack(
        layers="encoder.block",
        attention="layer.0.SelfAttention",
        attention_output="layer.0.SelfAttention.o",
        ffn_input="layer.1.DenseReluDense",
        ffn_output="layer.1.DenseReluDense.wo",
    ),
    LayerStack(
        layers="decoder.block",
        attention="layer.0.SelfAttention",
        attention_output="layer.0.SelfAttention.o",
        cross_attention="layer.1.EncDecAttention",
        ffn_input="layer.2.DenseReluDense",
        ffn_output="layer.2.DenseReluDense.wo",
    ),
)

for _name in ("bert", "roberta", "xlm-roberta"):
    declare_slots(_name, _BERT)
for _name in ("llama", "mistral", "qwen2", "qwen3"):
    declare_slots(_name, _DECODER)
declare_slots("gpt2", _GPT2)
declare_slots("t5", *_T5)
declare_slots("mt5", *_T5)
