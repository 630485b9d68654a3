"""``layer_replication``: a deeper model made of copies of the base's transformer layers, each copy with its
own adapters (peft's ``replicate_layers``, after mergekit's pass-through merges).

``[[0, 4], [2, 5]]`` on layers ``[0, 1, 2, 3, 4]`` gives ``[0, 1, 2, 3, 2, 3, 4]``: each range
``[start, end)`` of the original layers is stacked in order. Copies share the base's parameters (the memory
stays close to the original model's); buffers are copied, and each copy's ``layer_idx`` (the KV cache's slot)
is its new position. The model is marked with the map it was built from: a second adapter with the same map
uses the layers as they are, any other map is refused, and merging is refused (a copy's delta would change
every copy sharing that weight). Saved adapters name the copies' modules as peft does
(``layers.<position>....``); the base fingerprint names the original layers. ``delete_adapter`` and
``unload`` leave the copies in place, as peft does.
"""

from __future__ import annotations

import copy

from torch import nn

from .errors import AdapterError, ConfigError, TargetError
from .layer import AdapterLayer

FIELD = "layer_replication"
MARK = "_peftkit_layer_replication"  # set on the replicated model: the map it was built from
LAYER_LISTS = ("layers", "encoder.layer", "h")  # peft's: Llama-like, BERT-like, Falcon/GPT-2-like


def layer_list(model: nn.Module) -> tuple[nn.Module, str, nn.ModuleList]:
    """``(owner, attribute path, the list)`` of the transformer layers, found as peft finds them: under
    ``model(.model)*`` (or its ``.bert``), as ``layers``, ``encoder.layer`` or ``h``."""
    owner = model
    while hasattr(owner, "model") and isinstance(owner.model, nn.Module):
        owner = owner.model
    owner = getattr(owner, "bert", owner)
    for attr in LAYER_LISTS:
        try:
            found = owner.get_submodule(attr)
        except AttributeError:
            continue
        if isinstance(found, nn.ModuleList):
            return owner, attr, found
    raise TargetError(
        f"{FIELD}: {type(model).__name__} has no transformer layer list peftkit recognises (a ModuleList "
        f"at {', '.join(LAYER_LISTS)}, as in Llama-, BERT- or Falcon-like models); leave {FIELD} unset"
    )


def check_map(layer_map: list[list[int]], count: int) -> None:
    for start, end in layer_map:
        if end > count:
            raise ConfigError(FIELD, f"range [{start}, {end}) reaches past the model's {count} layers")


def share_clone(module: nn.Module) -> nn.Module:
    """A copy of ``module`` whose parameters are the original's (buffers and plain attributes copied)."""
    clone = copy.deepcopy(module)
    for name, sub in module.named_modules():
        target = clone.get_submodule(name)
        for pname, param in sub.named_parameters(recurse=False):
            target.register_parameter(pname, param)
    return clone


def replicate_layers(model: nn.Module, layer_map: list[list[int]]) -> None:
    """Rebuild the layer list from ``layer_map`` (see the module docstring), in place; a model already
    built from the same map is left as it is, one built from another map is refused."""
    done = getattr(model, MARK, None)
    if done is not None:
        if done != layer_map:
            raise ConfigError(
                FIELD,
                f"the model's layers are already replicated by {done}; a second map {layer_map} is not "
                "supported (use the same layer_replication for every adapter)",
            )
        return
    owner, attr, layers = layer_list(model)
    check_map(layer_map, len(layers))
    if any(isinstance(m, AdapterLayer) for m in layers.modules()):
        raise ConfigError(
            FIELD,
            "the layers already hold adapters; add the adapter with layer_replication first (copies "
            "would share those adapters' weights)",
        )
    new = nn.ModuleList(share_clone(layers[i]) for start, end in layer_map for i in range(start, end))
    for position, layer in enumerate(new):
        for sub in layer.modules():
            if hasattr(sub, "layer_idx"):
                sub.layer_idx = position  # the KV cache's slot of this copy
    parent_path, _, name = attr.rpartition(".")
    setattr(owner.get_submodule(parent_path) if parent_path else owner, name, new)
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "num_hidden_layers"):
        config.num_hidden_layers = len(new)
    if config is not None and isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = [config.layer_types[i] for start, end in layer_map for i in range(start, end)]
    object.__setattr__(model, MARK, [list(pair) for pair in layer_map])


def check_mergeable(model: nn.Module) -> None:
    """Merging into replicated layers is refused: copies share their base weights."""
    if getattr(model, MARK, None) is not None:
        raise AdapterError(
            f"Cannot merge LORA layers when base model layers are replicated ({FIELD}="
            f"{getattr(model, MARK)}): copies share their base weights; keep the adapters unmerged"
        )


def original_paths(model: nn.Module, paths: list[str]) -> dict[str, str]:
    """``{path in the original base: path in ``model`` now}`` for module ``paths`` of ``model``: a path
    inside a copy names the layer it copies (the first copy of each stands for it); other paths, and every
    path of a model not replicated, stay as they are. The base fingerprint is written in original paths."""
    layer_map = getattr(model, MARK, None)
    if layer_map is None:
        return {p: p for p in paths}
    _, _, layers = layer_list(model)
    prefix = next(n for n, m in model.named_modules() if m is layers) + "."
    copied = [i for start, end in layer_map for i in range(start, end)]  # position -> original index
    out: dict[str, str] = {}
    for path in paths:
        position, dot, rest = path[len(prefix) :].partition(".")
        if path.startswith(prefix) and position.isdigit():
            out.setdefault(f"{prefix}{copied[int(position)]}{dot}{rest}", path)
        else:
            out.setdefault(path, path)
    return out
