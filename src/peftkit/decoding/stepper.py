"""One model, one step at a time: prefill the prompt, then feed one token per row per step.

:class:`ModelStepper` owns everything a model needs between steps: the KV cache, the attention
mask over real tokens (left padding = 0), position ids, an encoder's outputs, and per-row forward
keywords such as ``adapter_names``. Search strategies only see logits (and hidden states for
contrastive search) and call :meth:`reorder` when rows are re-selected (beams) or repeated
(contrastive candidates). Other features reuse it: proxy-tuning steps a second and third model
in lock-step with the first.

The call sequence a model (or a prompt method inside :class:`~peftkit.PeftModel`) sees:

* decoder-only prefill: ``model(input_ids (B, L), attention_mask (B, L), position_ids (B, L),
  cache=<empty DynamicCache>, use_cache=True, **forward_kwargs)`` (the cache goes under the name the
  forward takes: ``cache`` in newer ``transformers``, ``past_key_values`` before; see
  :mod:`peftkit.kv_cache`);
* each later step: ``input_ids (B, 1)``, ``attention_mask (B, L + t)``, ``position_ids (B, 1)``
  and the same cache;
* encoder-decoder: the first call passes the encoder's ``input_ids``/``attention_mask`` with
  ``decoder_input_ids (B, 1)`` and an empty ``EncoderDecoderCache``; later calls pass
  ``encoder_outputs`` from the first call, the same encoder mask and one decoder token.

``position_ids`` and ``logits_to_keep=1`` (only the last position's logits are computed) are only
passed to a forward that takes them. Whether the cache works is checked by behaviour after the
prefill: a model that takes no cache, returns none or leaves it empty is re-run on the whole sequence
each step (correct, slower) and a :class:`CacheUnusedWarning` says so.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError
from ..kv_cache import cache_argument, filled_length, returned_cache
from ..positions import real_positions
from ..signature import accepts


class CacheUnusedWarning(UserWarning):
    """Decoding runs without a KV cache (every step re-reads the whole sequence)."""


@dataclass
class StepOutput:
    logits: torch.Tensor  # (B, V) float32, next-token logits
    hidden: torch.Tensor | None = None  # (B, L, H) last-layer states of the tokens just fed


def _config(model: nn.Module):
    return getattr(model, "config", None)


def is_encoder_decoder(model: nn.Module) -> bool:
    return bool(getattr(_config(model), "is_encoder_decoder", False))


def new_cache(model: nn.Module):
    """An empty cache of the kind ``transformers`` generate would make for this model (or ``None``)."""
    config = _config(model)
    if config is None or cache_argument(model) is None:
        return None
    from transformers import DynamicCache, EncoderDecoderCache

    text_config = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    cache = DynamicCache(config=text_config)
    if is_encoder_decoder(model):
        return EncoderDecoderCache(cache, DynamicCache(config=text_config))
    return cache


def decoder_start_id(model: nn.Module) -> int:
    config = _config(model)
    start = getattr(config, "decoder_start_token_id", None)
    if start is None:
        start = getattr(config, "bos_token_id", None)
    if start is None:
        raise ConfigError(
            "decoder_start_token_id", "an encoder-decoder model needs config.decoder_start_token_id to decode"
        )
    return int(start)


class ModelStepper:
    """Feeds a model one step at a time with a KV cache (see the module docstring)."""

    def __init__(self, model: nn.Module, want_hidden: bool = False, **forward_kwargs):
        self.model = model
        self.want_hidden = want_hidden
        self.forward_kwargs = forward_kwargs
        self.encoder_decoder = is_encoder_decoder(model)
        self.use_positions = not self.encoder_decoder and accepts(model, "position_ids")
        self.last_logits_only = accepts(model, "logits_to_keep")  # skip the head on the prompt
        self.cache_arg = cache_argument(model)
        self.cache = None
        self.cached = True
        self.mask: torch.Tensor | None = None  # (B, T) real-token mask (encoder mask for enc-dec)
        self.tokens: torch.Tensor | None = None  # (B, T) all tokens fed (decoder side), for no-cache
        self.encoder_outputs = None
        self.encoder_ids: torch.Tensor | None = None

    # ---- the two kinds of call ----------------------------------------------------------------
    def prefill(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.Tensor | None = None,
    ) -> StepOutput:
        """Feed the prompts ``(B, L)``; returns the logits for the first new token. An encoder-decoder's
        decoder starts from ``decoder_input_ids (B, L_dec)`` when given, else from its start token."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        self.cache = new_cache(self.model)
        self.cached = self.cache is not None
        if not self.cached:
            _warn_uncached(self.model, "its forward takes no cache argument")
        if self.encoder_decoder:
            self.encoder_ids, self.mask = input_ids, attention_mask.long()
            start = decoder_input_ids
            if start is None:
                start = torch.full(
                    (input_ids.shape[0], 1), decoder_start_id(self.model), device=input_ids.device
                )
            self.tokens = start
            return self._call(input_ids=input_ids, attention_mask=self.mask, decoder_input_ids=start)
        self.mask, self.tokens = attention_mask.long(), input_ids
        return self._call(
            input_ids=input_ids, attention_mask=self.mask, **self._positions(input_ids.shape[1])
        )

    def step(self, tokens: torch.Tensor) -> StepOutput:
        """Feed one new token per row ``(B,)``; returns the logits for the next one.

        With a cache only the new token goes in; a cache that did not grow by exactly that token
        means the model ignored it, so the step is re-run on the whole sequence (and every later one).
        """
        new = tokens[:, None]  # (B, 1)
        self.tokens = torch.cat([self.tokens, new], dim=1)
        if not self.encoder_decoder:
            self.mask = torch.cat([self.mask, self.mask.new_ones(new.shape)], dim=1)
        if self.cached:
            before = filled_length(self.cache)
            out = self._call(**self._inputs(new))
            if self.cached and filled_length(self.cache) == before + 1:
                return out
            _warn_uncached(self.model, "the cache did not grow by the token fed")
            self.cache, self.cached = None, False
        return self._call(**self._inputs(self.tokens))

    def _inputs(self, ids: torch.Tensor) -> dict:
        """Forward inputs for decoder tokens ``ids`` (B, n) following everything fed so far."""
        if self.encoder_decoder:
            return {"attention_mask": self.mask, "decoder_input_ids": ids, **self._encoder_inputs()}
        return {"input_ids": ids, "attention_mask": self.mask, **self._positions(ids.shape[1])}

    def reorder(self, index: torch.Tensor) -> None:
        """Keep rows ``index`` (any length: beams re-selected, candidates repeated or chosen)."""
        if self.cache is not None:
            self.cache.reorder_cache(index)
        self.mask = self.mask.index_select(0, index)
        self.tokens = self.tokens.index_select(0, index)
        if self.encoder_ids is not None:
            self.encoder_ids = self.encoder_ids.index_select(0, index)
        if self.encoder_outputs is not None:
            self.encoder_outputs = self._select_encoder(index)

    # ---- internals ----------------------------------------------------------------------------
    def _positions(self, length: int) -> dict[str, torch.Tensor]:
        if not self.use_positions:
            return {}
        return {"position_ids": real_positions(self.mask)[:, -length:]}

    def _encoder_inputs(self) -> dict:
        if self.encoder_outputs is not None:
            return {"encoder_outputs": self.encoder_outputs}
        return {"input_ids": self.encoder_ids}

    def _select_encoder(self, index: torch.Tensor):
        from transformers.modeling_outputs import BaseModelOutput

        return BaseModelOutput(
            last_hidden_state=self.encoder_outputs.last_hidden_state.index_select(0, index)
        )

    def _call(self, **inputs) -> StepOutput:
        if self.cached:
            inputs.update({self.cache_arg: self.cache, "use_cache": True})
        if self.want_hidden:
            inputs["output_hidden_states"] = True
        if self.last_logits_only:
            inputs["logits_to_keep"] = 1
        out = self.model(**inputs, **self.forward_kwargs)
        logits = out.logits if hasattr(out, "logits") else out
        if self.cached:
            self._keep_cache(out)
        if self.encoder_decoder and self.encoder_outputs is None and self.cached:
            from transformers.modeling_outputs import BaseModelOutput

            self.encoder_outputs = BaseModelOutput(last_hidden_state=out.encoder_last_hidden_state)
        fed = inputs["decoder_input_ids" if self.encoder_decoder else "input_ids"].shape[1]
        return StepOutput(logits[:, -1, :].float(), self._hidden(out, fed) if self.want_hidden else None)

    def _keep_cache(self, out) -> None:
        """Keep the cache the model filled: the one passed (filled in place) or the one it returned,
        whichever holds more; a model that filled neither is re-run in full from now on."""
        returned = returned_cache(out)
        cache = max((c for c in (returned, self.cache) if c is not None), key=filled_length, default=None)
        if filled_length(cache) == 0:
            _warn_uncached(self.model, "it returned no filled cache")
            self.cache, self.cached = None, False
            return
        self.cache = cache

    def _hidden(self, out, fed: int) -> torch.Tensor:
        states = out.decoder_hidden_states if self.encoder_decoder else out.hidden_states
        if states is None:
            raise ConfigError(
                "strategy",
                f"{type(self.model).__name__} returns no hidden states; contrastive search needs them",
            )
        return states[-1][:, -fed:, :].float()  # (B, fed, H): the tokens just fed, not virtual ones


def _warn_uncached(model: nn.Module, why: str) -> None:
    warnings.warn(
        f"{type(model).__name__} decodes without a KV cache ({why}): every step re-runs the whole "
        "sequence, which is correct but slow",
        CacheUnusedWarning,
        stacklevel=3,
    )
