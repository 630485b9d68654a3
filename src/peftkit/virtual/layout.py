"""Where virtual tokens go: the layout engine of the virtual-token stage.

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
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import AdapterError
from ..kv_cache import cache_argument, cache_key, filled_length, passed_cache
from ..positions import real_positions
from ..signature import accepts
from .adapter import InputAdapter


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
    model: nn.Module, kwargs: dict[str, Any], rows: list[InputAdapter | None], index_positions: bool = False
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
        adapted = [a is not None and not index_positions for a in rows]
        given = _default_positions(mask, length, adapted)
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
            model, cache, rows, P
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
    counted = real_positions(mask)[:, -length:]
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
    if _prepends(rows[0]) and all(a is rows[0] for a in rows):  # one adapter: [V | L] in every row
        kwargs["inputs_embeds"] = torch.cat([rows[0].virtual_batch(len(rows)).to(embeds.dtype), embeds], 1)
    else:
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


def _write_prefix(model: nn.Module, cache, rows: list[InputAdapter | None], P: int):
    """Write every row's key/value prefix into the (empty) cache, layer by layer (a new cache when none
    was passed); rows without a prefix get zeros there, which their mask leaves out."""
    from transformers import DynamicCache

    if model.training and _checkpointing(model):
        raise AdapterError(
            "prefix tuning does not work with gradient checkpointing: the prefix goes through the KV cache, "
            "which checkpointed training switches off; call gradient_checkpointing_disable() first"
        )
    if cache is None:
        cache = DynamicCache(config=_text_config(model))
    dtype = next(p for p in model.parameters()).dtype
    prefix = _row_prefixes(rows, P, _device(model)).to(dtype)  # (layers, 2, B, H, P, hd)
    for layer in range(prefix.shape[0]):
        cache.update(prefix[layer, 0], prefix[layer, 1], layer)  # (B, H, P, hd) each
    return cache


def _row_prefixes(rows: list[InputAdapter | None], P: int, device: torch.device) -> torch.Tensor:
    """``(layers, 2, B, H, P, hd)``: each row's prefix right-aligned in ``P`` slots, zeros for rows
    without one. One adapter for every row computes them as peft does (its gradient order)."""
    if rows[0] is not None and rows[0].writes_cache and all(a is rows[0] for a in rows):
        return rows[0].prefix_batch(len(rows))
    per_adapter = {id(a): a.prefix() for a in rows if a is not None and a.writes_cache}
    layers, two, H, _, hd = next(iter(per_adapter.values())).shape
    blocks = []
    for a in rows:
        kv = per_adapter[id(a)] if a is not None and a.writes_cache else None
        pad = torch.zeros(layers, two, H, P - (kv.shape[3] if kv is not None else 0), hd, device=device)
        blocks.append(torch.cat([pad, kv.to(pad.dtype)], dim=3) if kv is not None else pad)
    return torch.stack(blocks, dim=2)


def _checkpointing(model: nn.Module) -> bool:
    """Whether gradient checkpointing is on (transformers' newer and older names of the flag)."""
    for name in ("is_activation_checkpointing", "is_gradient_checkpointing"):
        if hasattr(type(model), name):
            return bool(getattr(model, name))
    return False


def _text_config(model: nn.Module):
    """The config a cache of the (decoder's) self-attention is built for."""
    config = model.config
    return config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _encoder_decoder(
    model: nn.Module, kwargs: dict[str, Any], rows: list[InputAdapter | None]
) -> Transformed:
    """Encoder-decoders: prepended virtual tokens go in front of the encoder input; a prefix goes into the
    decoder's self-attention cache, as peft places it (the encoder runs bare), with the decoder mask
    covering its slots."""
    if any(a is not None and a.replaces_tokens() is not None for a in rows):
        raise AdapterError("P-tuning templates (placeholder tokens) are for decoder-only models")
    kwargs = dict(kwargs)
    _encoder_tokens(model, kwargs, rows)
    if any(a is not None and a.writes_cache for a in rows):
        _decoder_prefix(model, kwargs, rows)
    return Transformed(kwargs, None)  # decoder outputs: nothing to cut


def _encoder_tokens(model: nn.Module, kwargs: dict[str, Any], rows: list[InputAdapter | None]) -> None:
    """Prepended virtual tokens in front of the encoder input, with the encoder mask over their slots."""
    lengths = [a.num_virtual_tokens if _prepends(a) else 0 for a in rows]
    T = max(lengths)
    if T == 0:
        return
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


def _decoder_prefix(model: nn.Module, kwargs: dict[str, Any], rows: list[InputAdapter | None]) -> None:
    """Prefill: each row's prefix written into the decoder's self-attention cache (a new cache when none
    is passed). Every call: the decoder mask gets the prefix slots in front (unused slots masked)."""
    from transformers import DynamicCache, EncoderDecoderCache

    kv_len = [a.num_virtual_tokens if a is not None and a.writes_cache else 0 for a in rows]
    P, batch = max(kv_len), len(rows)
    cache = passed_cache(kwargs)
    past = filled_length(cache)
    if past == 0:
        if cache is None:
            cache = EncoderDecoderCache(DynamicCache(config=_text_config(model)), DynamicCache())
            kwargs[cache_argument(model) or "past_key_values"] = cache
        _write_prefix(model, cache.self_attention_cache, rows, P)
    mask = kwargs.get("decoder_attention_mask")
    if mask is None:
        new = _decoder_length(kwargs)
        mask = torch.ones(batch, max(past - P, 0) + new, dtype=torch.long, device=_device(model))
    kwargs["decoder_attention_mask"] = torch.cat([slot_mask(kv_len, P, mask.device).to(mask.dtype), mask], 1)


def _decoder_length(kwargs: dict[str, Any]) -> int:
    """Decoder positions this call feeds (its ids, embeddings, or the labels it shifts into ids)."""
    for key in ("decoder_input_ids", "decoder_inputs_embeds", "labels"):
        if kwargs.get(key) is not None:
            return kwargs[key].shape[1]
    raise AdapterError("a prefix on an encoder-decoder needs decoder_input_ids (or labels) in the forward")


def forward_with_virtual_tokens(
    model: nn.Module, args: tuple, kwargs: dict, rows: list[InputAdapter | None], peft_forward: bool = False
):
    """Call ``model`` with each row's virtual tokens in place; logits come back for the real positions
    only (the prepended slots are cut), so they line up with ``input_ids`` and ``labels`` as without.

    ``peft_forward``: peft's forward instead, positions ``0 .. V + L - 1`` in every row whatever its mask,
    and a causal LM's logits for the virtual positions too (one virtual length per batch)."""
    if args:
        names = list(inspect.signature(model.forward).parameters)
        kwargs = {**dict(zip(names, args)), **kwargs}
    requested = kwargs.get("logits_to_keep")  # an int: the last positions; a tensor: chosen positions
    keep = requested if isinstance(requested, int) else 0
    done = transform_inputs(model, kwargs, rows, index_positions=peft_forward)
    if isinstance(requested, torch.Tensor) and done.starts is not None:
        raise AdapterError(
            "logits_to_keep as a tensor of positions cannot be used with virtual tokens in the sequence "
            "(prompt tuning, P-tuning); pass an int (the last positions) or leave it out"
        )
    if peft_forward and done.packed:
        raise AdapterError("peft_forward needs one number of virtual tokens for every row of the batch")
    if keep and done.packed:  # rows end in unused slots: gather the real positions first, then keep
        done.kwargs.pop("logits_to_keep")
    out = model(**done.kwargs)
    logits = getattr(out, "logits", None)
    if done.starts is None or not isinstance(logits, torch.Tensor) or logits.dim() != 3 or peft_forward:
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
