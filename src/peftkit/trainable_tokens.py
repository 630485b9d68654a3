"""``trainable_token_indices``: chosen rows of an embedding matrix trained, the rest frozen (peft's
TrainableTokens, as a LoRA option).

Adapter ``name`` holds new values for rows ``token_indices[name]`` of the wrapped embedding's weight; the
layer runs the wrapped module with those rows replaced (never added to, as peft: a row resized in with
random values is defined by the adapter alone). An output embedding tied to the input one (GPT-2's
``lm_head``) is wrapped by a :class:`TiedTokensLayer` that reads the same rows from the input embedding's
layer, so the tie holds while training; it saves nothing of its own. The saved key is peft's
(``<path>.token_adapter.trainable_tokens_delta``), the indices live in the config. Both layers follow the
adapter-layer protocol: activation, disabling, deletion, per-row adapters and merging (rows written into the
weight, the originals kept to unmerge) work as for every method.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from torch.func import functional_call

from .errors import AdapterError, CheckpointError, ConfigError, TargetError
from .layer import AdapterLayer, attach, copy_saved
from .rows import mix_rows
from .targeting import iter_modules, name_matches

FIELD = "trainable_token_indices"
SAVED_KEY = "token_adapter.trainable_tokens_delta"  # peft's key, relative to the wrapped module


@dataclass(frozen=True)
class TokenSpec:
    """What one layer is given for adapter ``name``: its rows, or the layer whose rows it follows."""

    indices: tuple[int, ...] = ()
    source: TrainableTokensLayer | None = None


class TokenRowsLayer(AdapterLayer):
    """Shared by the owning and the tied layer: the wrapped module run with rows of its weight replaced."""

    writes_weight: ClassVar[bool] = True  # False: the weight is another layer's, which writes merges

    def __init__(self, base_layer: nn.Module):
        super().__init__(base_layer)
        self.originals: dict[str, torch.Tensor] = {}  # merged adapter -> the rows it overwrote

    @property
    def weight(self) -> torch.Tensor:
        """The weight the layer runs with (peft's wrapper answers the same): the base's with the active,
        unmerged adapters' rows written in (a new tensor), or the base's own while none applies."""
        names = [] if self.disabled else [n for n in self.active if n not in self.merged]
        return self.weight_with(names) if names else self.base.weight

    def rows(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover - abstract
        """``(indices (n,), values (n, d))`` adapter ``name`` puts into the weight."""
        raise NotImplementedError

    def check_disjoint(self, names: list[str]) -> None:
        """Two adapters writing one row would make the result depend on their order: refused (as peft)."""
        seen: set[int] = set()
        for name in dict.fromkeys(names):
            index = set(self.rows(name)[0].tolist())
            if seen & index:
                raise AdapterError(
                    f"Token indices of adapter {name} are already defined and would result in undefined "
                    f"merging behavior (rows {sorted(seen & index)} of {FIELD}); use adapters with disjoint "
                    "token indices together"
                )
            seen |= index

    def weight_with(self, names: list[str]) -> torch.Tensor:
        """The base weight with each adapter's rows written in (a new tensor; the base is untouched)."""
        weight = self.base.weight  # (V, d)
        for name in names:
            index, values = self.rows(name)
            weight = weight.index_copy(0, index.to(weight.device), values.to(weight))
        return weight

    def adapted(self, x: torch.Tensor, names: list[str], *args, **kwargs) -> torch.Tensor:
        if not names:
            return self.base(x, *args, **kwargs)
        self.check_disjoint(names)
        # the wrapped module's own forward (padding_idx, an embedding scale, a bias) on the new weight
        return functional_call(self.base, {"weight": self.weight_with(names)}, (x, *args), kwargs)

    def mixed_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        def own(name: str, rows: torch.Tensor) -> torch.Tensor:
            return self.adapted(x[rows], [name], *args, **kwargs)

        return mix_rows(self.base(x, *args, **kwargs), self.adapter_names(), own, add=False)

    # ---- merging: rows written into the weight, the originals kept ------------------------------
    def merge_one(self, name: str) -> None:
        self.check_disjoint([*self.merged, name])
        index, values = self.rows(name)
        weight = self.base.weight
        index = index.to(weight.device)
        self.originals[name] = weight.detach()[index].clone()  # (n, d)
        if self.writes_weight:
            with torch.no_grad():
                weight.index_copy_(0, index, values.detach().to(weight))

    def unmerge_one(self, name: str) -> None:
        index, _ = self.rows(name)
        original = self.originals.pop(name)
        if self.writes_weight:
            with torch.no_grad():
                self.base.weight.index_copy_(0, index.to(original.device), original)


class TrainableTokensLayer(TokenRowsLayer):
    """Owns adapter ``name``'s rows: ``trainable_tokens_delta[name]`` (n, d), at ``token_indices[name]``."""

    adapter_containers = ("trainable_tokens_delta",)

    def __init__(self, base_layer: nn.Module):
        super().__init__(base_layer)
        if getattr(base_layer, "weight", None) is None or base_layer.weight.dim() != 2:
            raise TargetError(f"{FIELD}: {type(base_layer).__name__} has no 2-d weight whose rows are tokens")
        self.trainable_tokens_delta = nn.ParameterDict()
        self.token_indices: dict[str, torch.Tensor] = {}

    def add(self, name: str, spec: TokenSpec, module_name: str) -> None:
        vocab = self.base.weight.shape[0]
        bad = [i for i in spec.indices if not 0 <= i < vocab]
        if bad:
            raise ConfigError(FIELD, f"token ids {bad} are outside {module_name}'s {vocab} rows")
        if len(set(spec.indices)) != len(spec.indices):
            raise ConfigError(FIELD, f"token ids for {module_name} repeat: {list(spec.indices)}")
        index = torch.tensor(spec.indices, dtype=torch.long, device=self.base.weight.device)  # (n,)
        values = self.base.weight.detach()[index].to(**self.new_tensor_kwargs())  # (n, d)
        self.token_indices[name] = index
        self.trainable_tokens_delta[name] = nn.Parameter(values.clone())

    def rows(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        return self.token_indices[name], self.trainable_tokens_delta[name]

    def delete(self, name: str) -> None:
        super().delete(name)
        self.token_indices.pop(name, None)

    def adapter_state_dict(self, name: str) -> dict[str, torch.Tensor]:
        if name not in self.trainable_tokens_delta:
            return {}
        return {SAVED_KEY: self.trainable_tokens_delta[name].data}

    def load_adapter_state_dict(self, name: str, state: dict[str, torch.Tensor]) -> None:
        if SAVED_KEY not in state:
            raise CheckpointError(f"adapter {name!r}: checkpoint lacks {SAVED_KEY} ({FIELD})")
        hint = f"a different {FIELD} or base model?"
        what = f"adapter {name!r}: {SAVED_KEY}"
        copy_saved(self.trainable_tokens_delta[name], state[SAVED_KEY], what, hint, CheckpointError)


class TiedTokensLayer(TokenRowsLayer):
    """An output embedding sharing the input embedding's weight: adapter ``name`` replaces the same rows,
    read from the input embedding's :class:`TrainableTokensLayer` (nothing of its own trains or is saved;
    merging writes nothing here, the shared weight is written once, by the owner)."""

    writes_weight: ClassVar[bool] = False

    def __init__(self, base_layer: nn.Module):
        super().__init__(base_layer)
        self.sources: dict[str, TrainableTokensLayer] = {}  # plain dict: not registered, not saved

    def adapter_names(self) -> list[str]:
        return list(self.sources)

    def add(self, name: str, spec: TokenSpec, module_name: str) -> None:
        self.sources[name] = spec.source

    def rows(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        return self.sources[name].rows(name)

    def adapter_parameters(self, name: str) -> Iterator[nn.Parameter]:
        """The rows this layer runs with (the owner's parameter, as peft's tied layer shows it)."""
        if name in self.sources:
            yield from self.sources[name].adapter_parameters(name)

    def delete(self, name: str) -> None:
        super().delete(name)
        self.sources.pop(name, None)


def token_targets(model: nn.Module, indices: list[int] | dict[str, list[int]]) -> dict[str, list[int]]:
    """``{module path: token ids}``, the input embedding first: a list is for the input embedding (peft's
    rule; ``embed_tokens`` when the model does not say which it is), a dict names modules (name or suffix)."""
    embedding = _input_embedding_path(model)
    wanted = indices if isinstance(indices, dict) else {embedding or "embed_tokens": indices}
    out: dict[str, list[int]] = {}
    for key, ids in wanted.items():
        paths = [p for p, _ in iter_modules(model) if name_matches(p, [key])]
        if not paths:
            raise TargetError(f"{FIELD}: {key!r} matches no module of {type(model).__name__}")
        out.update({p: list(ids) for p in paths})
    return dict(sorted(out.items(), key=lambda item: item[0] != embedding))


def _input_embedding_path(model: nn.Module) -> str | None:
    embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if embedding is None:
        return None
    inner = _inner(embedding)
    return next((p for p, m in iter_modules(model) if m is inner), None)


def _inner(module: nn.Module) -> nn.Module:
    return module.base if isinstance(module, AdapterLayer) else module


def wrap_trainable_tokens(model: nn.Module, config, adapter_name: str) -> list[str]:
    """Give adapter ``adapter_name`` the rows ``config.trainable_token_indices`` names, and make every
    module tied to such an embedding follow them; return the wrapped paths."""
    targets = token_targets(model, config.trainable_token_indices)
    clash = [p for p in targets if name_matches(p, config.modules_to_save)]
    if clash:
        raise ConfigError(
            FIELD,
            f"{clash[0]} is also in modules_to_save (trained whole); name it in one of the two, not both",
        )
    modules = dict(iter_modules(model))
    owners: dict[int, tuple[str, TrainableTokensLayer]] = {}
    for path, ids in targets.items():
        tied = _owner_of(modules[path], owners)
        if tied is not None:  # both ends of a tie named: the same rows, or refused
            _check_same_rows(path, ids, tied, adapter_name)
            continue
        layer = attach(model, path, TrainableTokensLayer, FIELD)
        layer.join(adapter_name, TokenSpec(indices=tuple(ids)), path)
        owners[id(layer.base.weight)] = (path, layer)
    followers = _tied_modules(model, owners)
    for path, owner in followers.items():
        attach(model, path, TiedTokensLayer, FIELD).join(adapter_name, TokenSpec(source=owner), path)
    return [*targets, *followers]


def _owner_of(module: nn.Module, owners: dict[int, tuple[str, TrainableTokensLayer]]):
    weight = getattr(module, "weight", None)
    return owners.get(id(weight)) if weight is not None else None


def _check_same_rows(path: str, ids: list[int], owner: tuple[str, TrainableTokensLayer], name: str) -> None:
    owned = owner[1].token_indices[name].tolist()
    if ids != owned:
        raise ConfigError(
            FIELD,
            f"{path} shares its weight with {owner[0]} (tied embeddings) but is given other token ids "
            f"({ids} vs {owned}); give both the same ids, or name only {owner[0]}",
        )


def _tied_modules(
    model: nn.Module, owners: dict[int, tuple[str, TrainableTokensLayer]]
) -> dict[str, TrainableTokensLayer]:
    """Modules other than the owners whose weight is an owned embedding weight: path -> the owning layer."""
    out: dict[str, TrainableTokensLayer] = {}
    for path, module in iter_modules(model):
        owner = _owner_of(module, owners)
        if owner is not None and owner[0] != path:
            out[path] = owner[1]
    return out
