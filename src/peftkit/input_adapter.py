"""Model-level (input-side) adapters: virtual tokens and key/value prefixes.

Prompt tuning, prefix tuning and P-tuning v1/v2 change no layer of the base model. Each adapter
is an :class:`InputAdapter` that contributes either

* virtual token embeddings placed in front of the input embeddings (``writes_cache = False``), or
* a key/value prefix per layer written into the model's cache (``writes_cache = True``) through
  the cache interface (``DynamicCache.update(k, v, layer_idx)``), never by rewriting attention.

:func:`transform_inputs` is the one hook :class:`~peftkit.model.PeftModel` calls before the base
forward. It serves every row of a batch with its own adapter (or none), so a mixed batch of a
prompt-tuning row, a prefix row, a LoRA row and a plain base row needs no special path: every
virtual slot a row does not use is masked out (attention mask 0) and each row's positions are
shifted by its own number of virtual tokens, so each row computes what it would compute alone.

Generation contract: on a call whose cache is empty (prefill), virtual embeddings are prepended
and prefixes are written into the cache; on every call the attention mask gets the virtual slots
in front, and the given (or default) positions of real tokens are shifted by the row's number of
virtual tokens, exactly as in the training forward where real tokens sit after the virtual ones.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from .config import PeftConfig, check_positive_int
from .errors import AdapterError, ConfigError, TargetError
from .kv_cache import cache_argument, cache_key, filled_length, passed_cache
from .layer import check_size
from .registry import Method

PEFT_KEY = "prompt_embeddings"  # peft's single tensor for every prompt-learning method


@dataclass
class PromptLearningConfig(PeftConfig):
    """Fields every virtual-token method shares (peft's names; ``None`` is read from the model).

    Args:
        num_virtual_tokens: number of virtual tokens (prompt length, prefix length).
        token_dim: the model's hidden size (prefix methods: key/value heads x head dim).
        num_transformer_submodules: 1, or 2 for encoder-decoders (peft stores both halves).
        num_attention_heads: attention heads (key/value heads for grouped-query attention).
        num_layers: transformer layers.
    """

    num_virtual_tokens: int = 20
    token_dim: int | None = None
    num_transformer_submodules: int | None = None
    num_attention_heads: int | None = None
    num_layers: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive_int("num_virtual_tokens", self.num_virtual_tokens)
        for name in ("token_dim", "num_transformer_submodules", "num_attention_heads", "num_layers"):
            if getattr(self, name) is not None:
                check_positive_int(name, getattr(self, name))
        for name in ("target_modules", "exclude_modules", "layers_to_transform"):
            if getattr(self, name) is not None:
                raise ConfigError(
                    name, f"{type(self).__name__} adds virtual tokens and targets no module; leave it unset"
                )


@dataclass(frozen=True)
class ModelDims:
    """What a virtual-token method needs to know about its base, read from the model config."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    encoder_decoder: bool


def model_dims(model: nn.Module) -> ModelDims:
    config = getattr(model, "config", None)
    if config is None or not hasattr(model, "get_input_embeddings"):
        raise TargetError(
            f"{type(model).__name__} has no transformers config and input embeddings; virtual-token "
            "methods need a transformers model"
        )
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = _first(text, "hidden_size", "n_embd", "d_model")
    heads = _first(text, "num_attention_heads", "n_head", "num_heads")
    head_dim = getattr(text, "head_dim", None) or getattr(text, "d_kv", None) or hidden // heads
    return ModelDims(
        hidden=hidden,
        layers=_first(text, "num_hidden_layers", "n_layer", "num_layers"),
        heads=heads,
        kv_heads=getattr(text, "num_key_value_heads", None) or heads,
        head_dim=head_dim,
        encoder_decoder=bool(getattr(config, "is_encoder_decoder", False)),
    )


def _first(config: Any, *names: str) -> int:
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    raise TargetError(f"the model config has none of {list(names)}; set it in the adapter config")


class InputAdapter(nn.Module):
    """One adapter's virtual tokens. Subclasses produce them; :func:`transform_inputs` places them."""

    writes_cache: ClassVar[bool] = False  # True: a per-layer key/value prefix; False: input embeddings

    def __init__(self, num_virtual_tokens: int):
        super().__init__()
        self.num_virtual_tokens = num_virtual_tokens

    def virtual_embeddings(self) -> torch.Tensor:
        """``(V, d)`` embeddings prepended to the input (``writes_cache = False``)."""
        raise NotImplementedError  # pragma: no cover - abstract

    def prefix(self) -> torch.Tensor:
        """``(layers, 2, kv_heads, V, head_dim)`` keys and values (``writes_cache = True``)."""
        raise NotImplementedError  # pragma: no cover - abstract

    def replaces_tokens(self) -> int | None:
        """A token id whose positions receive the virtual embeddings instead of a prepended block."""
        return None

    def peft_state_dict(self) -> dict[str, torch.Tensor]:
        """peft's ``{"prompt_embeddings": ...}``: what inference needs, reparametrisation baked in."""
        raise NotImplementedError  # pragma: no cover - abstract

    def load_peft_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        raise NotImplementedError  # pragma: no cover - abstract


def check_shape(name: str, value: torch.Tensor, expected: tuple[int, ...]) -> None:
    if tuple(value.shape) != expected:
        raise AdapterError(
            f"{name} has shape {tuple(value.shape)} in the checkpoint but the model needs {expected} "
            "(a different base model or num_virtual_tokens?)"
        )


def check_sizes(model: nn.Module, config: PromptLearningConfig) -> None:
    """The sizes a config may give (a loaded adapter_config.json among them) fit the model, checked
    before anything is allocated: the virtual tokens fit its context, the dimensions are at most its own."""
    dims, name = model_dims(model), type(model).__name__
    text = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    positions = getattr(text, "max_position_embeddings", None)
    if isinstance(positions, int):
        why = f"its context holds max_position_embeddings = {positions} positions"
        check_size("num_virtual_tokens", config.num_virtual_tokens, positions, name, why)
    own = {"token_dim": dims.hidden, "num_layers": dims.layers, "num_attention_heads": dims.heads}
    for field, limit in {**own, "num_transformer_submodules": 2}.items():
        if getattr(config, field, None) is not None:  # a method without the field has nothing to check
            check_size(field, getattr(config, field), limit, name, f"the model's own is {limit}")


class InputMethod(Method):
    """A method that adds an :class:`InputAdapter` instead of wrapping layers."""

    key_prefix: ClassVar[str] = "base_model."  # peft's prefix for prompt-learning models' extra tensors

    def inject(self, model: nn.Module, config: PeftConfig, adapter_name: str) -> list[str]:
        return []

    def input_adapter(
        self, model: nn.Module, config: PeftConfig, others: dict[str, nn.Module]
    ) -> InputAdapter:
        check_sizes(model, config)
        return self.build(model, config, others)

    def build(self, model: nn.Module, config: PromptLearningConfig, shared=None) -> InputAdapter:
        raise NotImplementedError  # pragma: no cover - abstract

    def resolved(self, model: nn.Module, config: PromptLearningConfig) -> dict[str, int]:
        """peft's derived config fields, read from the model where unset."""
        dims = model_dims(model)
        return {
            "token_dim": config.token_dim or dims.hidden,
            "num_transformer_submodules": config.num_transformer_submodules
            or (2 if dims.encoder_decoder else 1),
            "num_attention_heads": config.num_attention_heads or dims.heads,
            "num_layers": config.num_layers or dims.layers,
        }

    def to_peft_dict(self, config: PeftConfig, model: nn.Module, targets: list[str]) -> dict[str, Any]:
        data = super().to_peft_dict(config, model, targets)
        for name in ("target_modules", "exclude_modules", "layers_to_transform", "layers_pattern"):
            data.pop(name, None)  # prompt-learning configs in peft have no targeting fields
        data.update(self.resolved(model, config))
        data["task_type"] = config.task_type or peft_task_type(model)
        return data


TASK_SUFFIXES = {
    "ForCausalLM": "CAUSAL_LM",
    "ForSequenceClassification": "SEQ_CLS",
    "ForTokenClassification": "TOKEN_CLS",
    "ForQuestionAnswering": "QUESTION_ANS",
    "ForConditionalGeneration": "SEQ_2_SEQ_LM",
    "ForSeq2SeqLM": "SEQ_2_SEQ_LM",
}


def peft_task_type(model: nn.Module) -> str:
    """peft needs ``task_type`` to apply a prompt-learning checkpoint at all (without it, it runs the
    bare base); read it from the model class when the config leaves it unset."""
    name = type(model).__name__
    return next(
        (task for suffix, task in TASK_SUFFIXES.items() if name.endswith(suffix)), "FEATURE_EXTRACTION"
    )


# ---- the hook ------------------------------------------------------------------------------------
_ACCEPTS: dict[type, frozenset[str]] = {}


def accepts(model: nn.Module, name: str) -> bool:
    """Does ``model.forward`` take argument ``name`` (explicitly)?"""
    cls = type(model)
    if cls not in _ACCEPTS:
        _ACCEPTS[cls] = frozenset(inspect.signature(model.forward).parameters)
    return name in _ACCEPTS[cls]


def slot_mask(lengths: list[int], width: int, device: torch.device) -> torch.Tensor:
    """``(B, width)``: ones in the last ``lengths[i]`` slots of row ``i`` (right-aligned virtual tokens)."""
    idx = torch.arange(width, device=device)[None, :]  # (1, W)
    need = torch.tensor(lengths, device=device)[:, None]  # (B, 1)
    return (idx >= width - need).long()


@dataclass
class Transformed:
    kwargs: dict[str, Any]
    starts: list[int] | None  # per row: index of its first real token (None: nothing was prepended)
    length: int = 0  # real tokens given on this call

    @property
    def packed(self) -> bool:
        """Rows of different virtual lengths were packed (see :func:`transform_inputs`)."""
        return self.starts is not None and len(set(self.starts)) > 1


def transform_inputs(
    model: nn.Module, kwargs: dict[str, Any], rows: list[InputAdapter | None]
) -> Transformed:
    """Place each row's virtual tokens; ``rows[i]`` is row ``i``'s adapter, or None (no virtual tokens).

    Prepended virtual tokens use one of two layouts of ``T = max V`` slots (unused slots masked):
    with a cache (generation) the slots form a block in front, ``[unused | own V][real L]``, so later
    tokens simply follow; without a cache and ``use_cache``, rows of different ``V`` are packed as
    ``[own V | real L | unused]`` (each sequence still starts at index 0, which [CLS] pooling needs;
    no cache is returned then). Both give the same per-row result.
    """
    if getattr(model.config, "is_encoder_decoder", False):
        return _encoder_decoder(model, kwargs, rows)
    kwargs = dict(kwargs)
    ref = kwargs["input_ids"] if kwargs.get("input_ids") is not None else kwargs["inputs_embeds"]
    batch, length, device = ref.shape[0], ref.shape[1], ref.device
    emb_len = [a.num_virtual_tokens if _prepends(a) else 0 for a in rows]  # per row
    kv_len = [a.num_virtual_tokens if a is not None and a.writes_cache else 0 for a in rows]
    T, P = max(emb_len), max(kv_len)
    cache = passed_cache(kwargs)
    past = filled_length(cache)
    prefill = past == 0
    if prefill and any(a is not None and a.replaces_tokens() is not None for a in rows):
        _replace_tokens(model, kwargs, rows)
    if T == 0 and P == 0:
        return Transformed(kwargs, None)
    mask = kwargs.get("attention_mask")
    if mask is None:
        real_past = past - P - T if past else 0  # the cache holds P + T virtual slots after prefill
        mask = torch.ones(batch, real_past + length, dtype=torch.long, device=device)
    mask = mask.to(device)
    given = kwargs.get("position_ids")
    if given is None:
        given = _default_positions(mask, length, [a is not None for a in rows])
    shift = torch.tensor([e + k for e, k in zip(emb_len, kv_len, strict=True)], device=device)[:, None]
    positions = given.to(device) + shift  # (B, L): real tokens come after the row's virtual ones
    kwargs.pop("cache_position", None)  # recomputed by the model from the cache length
    starts = None
    if prefill and T:
        positions, mask, starts = _prepend(model, kwargs, rows, (emb_len, kv_len), positions, mask, cache)
    elif T:
        mask = torch.cat([slot_mask(emb_len, T, device).to(mask.dtype), mask], dim=1)
    if accepts(model, "position_ids"):
        kwargs["position_ids"] = positions
    if prefill and P:
        kwargs[cache_key(kwargs) or cache_argument(model) or "past_key_values"] = _write_prefix(
            model, cache, rows, P, batch
        )
    kwargs["attention_mask"] = torch.cat([slot_mask(kv_len, P, device).to(mask.dtype), mask], dim=1)
    return Transformed(kwargs, starts, length)


def _prepend(
    model: nn.Module,
    kwargs: dict,
    rows: list[InputAdapter | None],
    lengths: tuple[list[int], list[int]],
    positions: torch.Tensor,
    mask: torch.Tensor,
    cache,
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Prefill: put every row's virtual embeddings in place; positions and mask follow the layout."""
    emb_len, kv_len = lengths
    T, length, device = max(emb_len), positions.shape[1], positions.device
    # packing matters only when rows differ; a packed cache must not be continued, so none is kept
    packed = cache is None and not kwargs.get("use_cache") and len(set(emb_len)) > 1
    if packed:
        kwargs["use_cache"] = False
    layout = Layout(emb_len, T, packed=packed)
    virtual_pos = [torch.arange(e, device=device) + k for e, k in zip(emb_len, kv_len, strict=True)]
    positions = layout.place(virtual_pos, positions, fill=0)  # (B, T + L)
    _place_embeddings(model, kwargs, rows, layout)
    real_mask = layout.place(_ones(emb_len, mask), mask[:, -length:], 0)  # (B, T + L)
    return positions, torch.cat([mask[:, :-length], real_mask], 1), layout.starts()


def _default_positions(mask: torch.Tensor, length: int, adapted: list[bool]) -> torch.Tensor:
    """``(B, L)`` positions when none are given: rows with virtual tokens count real tokens (left and
    right padding agree); rows without keep the base model's default (index in the sequence)."""
    counted = (mask.long().cumsum(-1) - 1).clamp(min=0)[:, -length:]
    start = mask.shape[1] - length
    plain = torch.arange(start, start + length, device=mask.device).expand_as(counted)
    return torch.where(torch.tensor(adapted, device=mask.device)[:, None], counted, plain)


def _prepends(adapter: InputAdapter | None) -> bool:
    return adapter is not None and not adapter.writes_cache and adapter.replaces_tokens() is None


def _ones(lengths: list[int], like: torch.Tensor) -> list[torch.Tensor]:
    return [like.new_ones(n) for n in lengths]


@dataclass
class Layout:
    """Where each row's ``lengths[i]`` virtual slots go among ``T`` slots (see :func:`transform_inputs`)."""

    lengths: list[int]
    T: int
    packed: bool

    def starts(self) -> list[int]:
        return list(self.lengths) if self.packed else [self.T] * len(self.lengths)

    def place(self, virtual: list[torch.Tensor], real: torch.Tensor, fill: float) -> torch.Tensor:
        """``virtual[i]`` (V_i, ...) and ``real`` (B, L, ...) -> (B, T + L, ...), unused slots = fill."""
        rows = []
        for v, r in zip(virtual, real, strict=True):
            unused = r.new_full((self.T - v.shape[0], *r.shape[1:]), fill)
            parts = [v.to(r.dtype), r, unused] if self.packed else [unused, v.to(r.dtype), r]
            rows.append(torch.cat(parts, dim=0))
        return torch.stack(rows)


def _place_embeddings(
    model: nn.Module, kwargs: dict, rows: list[InputAdapter | None], layout: Layout
) -> None:
    """Input embeddings, labels and token types with every row's virtual slots in place."""
    embeds = kwargs.pop("inputs_embeds", None)
    if embeds is None:
        embeds = model.get_input_embeddings()(kwargs["input_ids"])  # (B, L, d)
    kwargs.pop("input_ids", None)
    per_adapter = {id(a): a.virtual_embeddings() for a in rows if _prepends(a)}  # (V, d) each
    empty = embeds.new_zeros(0, embeds.shape[-1])
    virtual = [per_adapter[id(a)] if _prepends(a) else empty for a in rows]
    kwargs["inputs_embeds"] = layout.place(virtual, embeds, fill=0.0)  # (B, T + L, d)
    labels = kwargs.get("labels")
    if isinstance(labels, torch.Tensor) and labels.dim() == 2 and labels.shape[1] == embeds.shape[1]:
        kwargs["labels"] = layout.place([labels.new_full((n,), -100) for n in layout.lengths], labels, -100)
    if kwargs.get("token_type_ids") is not None:
        types = kwargs["token_type_ids"]
        kwargs["token_type_ids"] = layout.place([types.new_zeros(n) for n in layout.lengths], types, 0)


def _replace_tokens(model: nn.Module, kwargs: dict, rows: list[InputAdapter | None]) -> None:
    """P-tuning templates: each row's placeholder positions receive its adapter's embeddings, in order."""
    ids = kwargs.get("input_ids")
    if ids is None:
        raise AdapterError("a P-tuning template adapter needs input_ids to find its placeholder tokens")
    embeds = model.get_input_embeddings()(ids)  # (B, L, d)
    out = []
    for i, a in enumerate(rows):
        token = a.replaces_tokens() if a is not None else None
        if token is None:
            out.append(embeds[i])
            continue
        where = (ids[i] == token).nonzero().flatten()
        if where.numel() != a.num_virtual_tokens:
            raise AdapterError(
                f"row {i} holds {where.numel()} placeholder tokens (id {token}) but the adapter has "
                f"{a.num_virtual_tokens} virtual tokens; render the input with its template"
            )
        out.append(embeds[i].index_copy(0, where, a.virtual_embeddings().to(embeds.dtype)))
    kwargs.pop("input_ids")
    kwargs["inputs_embeds"] = torch.stack(out)


def _write_prefix(model: nn.Module, cache, rows: list[InputAdapter | None], P: int, batch: int):
    """Write every row's key/value prefix into the (empty) cache, layer by layer."""
    from transformers import DynamicCache

    if cache is None:
        cache = DynamicCache(config=model.config)
    dtype = next(p for p in model.parameters()).dtype
    per_adapter = {id(a): a.prefix() for a in rows if a is not None and a.writes_cache}
    shape = next(iter(per_adapter.values())).shape  # (layers, 2, H, V, hd)
    blocks = []
    for a in rows:
        kv = per_adapter[id(a)] if a is not None and a.writes_cache else None
        pad = torch.zeros(
            *shape[:3], P - (kv.shape[3] if kv is not None else 0), shape[4], device=_device(model)
        )
        blocks.append(torch.cat([pad.to(dtype), kv.to(dtype)], dim=3) if kv is not None else pad.to(dtype))
    prefix = torch.stack(blocks, dim=1)  # (layers, B, 2, H, P, hd)
    for layer in range(prefix.shape[0]):
        cache.update(prefix[layer, :, 0], prefix[layer, :, 1], layer)  # (B, H, P, hd) each
    return cache


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _encoder_decoder(
    model: nn.Module, kwargs: dict[str, Any], rows: list[InputAdapter | None]
) -> Transformed:
    """Encoder-decoders: virtual tokens go in front of the encoder input; the decoder is untouched."""
    if any(a is not None and (a.writes_cache or a.replaces_tokens() is not None) for a in rows):
        raise AdapterError(
            "on encoder-decoder models peftkit supports prompt tuning (encoder-side virtual tokens)"
        )
    kwargs = dict(kwargs)
    lengths = [a.num_virtual_tokens if a is not None else 0 for a in rows]
    T = max(lengths)
    if T == 0:
        return Transformed(kwargs, None)
    mask = kwargs.get("attention_mask")
    if kwargs.get("encoder_outputs") is None:
        ref = kwargs["input_ids"] if kwargs.get("input_ids") is not None else kwargs["inputs_embeds"]
        if mask is None:
            mask = torch.ones(ref.shape[:2], dtype=torch.long, device=ref.device)
        labels = kwargs.pop("labels", None)  # decoder-side: must not be padded
        _place_embeddings(model, kwargs, rows, Layout(lengths, T, packed=False))
        if labels is not None:
            kwargs["labels"] = labels
    elif mask is None:
        raise AdapterError(
            "pass the encoder attention_mask with encoder_outputs when prompt tuning is active"
        )
    kwargs["attention_mask"] = torch.cat([slot_mask(lengths, T, mask.device).to(mask.dtype), mask], dim=1)
    return Transformed(kwargs, None)  # decoder outputs: nothing to cut


class ReparametrisedPrompt(InputAdapter):
    """Virtual vectors ``embedding.weight`` (peft's name), optionally produced by a trainable ``head``
    (an MLP or LSTM) while training; :meth:`eject` bakes the head's output into flat vectors.

    ``make_head`` is called after the embedding is drawn: peft's order of random draws, so one seed
    starts both libraries from the same vectors and head."""

    def __init__(
        self, num_virtual_tokens: int, rows: int, width: int, make_head: Callable[[], nn.Module] | None, dtype
    ):
        super().__init__(num_virtual_tokens)
        self.embedding = nn.Embedding(rows, width, dtype=dtype)  # (rows, width)
        self.head = make_head() if make_head is not None else None

    def encoded(self) -> torch.Tensor:
        """All virtual vectors ``(rows, out_width)``: the head's output, or the flat vectors."""
        w = self.embedding.weight
        return self.head(w) if self.head is not None else w

    @torch.no_grad()
    def eject(self) -> None:
        """Replace embedding + head by the head's output: identical outputs, no reparametrisation."""
        if self.head is None:
            return
        flat = self.encoded().detach().clone()
        self.embedding = nn.Embedding.from_pretrained(flat, freeze=False)
        self.head = None

    def peft_state_dict(self) -> dict[str, torch.Tensor]:
        return {PEFT_KEY: self.encoded().detach()}

    def load_peft_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if state.get(PEFT_KEY) is None:
            raise AdapterError(f"the checkpoint has no {PEFT_KEY!r} tensor (keys: {sorted(state)[:5]})")
        self.eject()  # checkpoints hold the flat vectors
        check_shape(PEFT_KEY, state[PEFT_KEY], tuple(self.embedding.weight.shape))
        with torch.no_grad():
            self.embedding.weight.copy_(state[PEFT_KEY].to(self.embedding.weight.dtype))


def forward_with_virtual_tokens(model: nn.Module, args: tuple, kwargs: dict, rows: list[InputAdapter | None]):
    """Call ``model`` with each row's virtual tokens in place; logits come back for the real positions
    only (the prepended slots are cut), so they line up with ``input_ids`` and ``labels`` as without."""
    if args:
        names = list(inspect.signature(model.forward).parameters)
        kwargs = {**dict(zip(names, args)), **kwargs}
    keep = kwargs.get("logits_to_keep") or 0  # decoding asks for the last position's logits only
    done = transform_inputs(model, kwargs, rows)
    if keep and done.packed:  # rows end in unused slots: gather the real positions first, then keep
        done.kwargs.pop("logits_to_keep")
    out = model(**done.kwargs)
    logits = getattr(out, "logits", None)
    if done.starts is None or not isinstance(logits, torch.Tensor) or logits.dim() != 3:
        return out
    if keep and not done.packed:  # virtual slots sit in front: the kept positions are real tokens
        return out
    index = torch.tensor(done.starts, device=logits.device)[:, None] + torch.arange(
        done.length, device=logits.device
    )  # (B, L): each row's real positions
    out["logits"] = logits.gather(1, index[..., None].expand(-1, -1, logits.shape[-1]))
    if keep:
        out["logits"] = out["logits"][:, -keep:]
    return out
