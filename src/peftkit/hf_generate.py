"""``PeftModel.generate``: ``transformers``' ``generate`` arguments mapped onto peftkit's decoding engine
(:func:`peftkit.decoding.generate`), so peft code runs unchanged and gets what ``transformers`` gives.

* Unset options come from ``generation_config=`` (a ``GenerationConfig``), else the model's own
  ``generation_config``, else ``transformers``' defaults: 20 new tokens (``max_length = 20 + prompt``, at most
  ``max_position_embeddings``), greedy, ``top_k=50`` when sampling.
* ``max_length`` / ``min_length`` count the whole sequence (the decoder's, start token included, for an
  encoder-decoder), ``max_new_tokens`` / ``min_new_tokens`` the new tokens; ``do_sample``, ``num_beams``,
  ``temperature``, ``top_k``, ``top_p``, ``penalty_alpha`` and the penalties pick and shape the strategy.
* ``return_dict_in_generate=True`` returns ``transformers``' output class (``sequences``, and ``scores`` with
  ``output_scores=True``: each step's processed scores, greedy and sampling).
* Without ``attention_mask`` the mask is inferred from ``pad_token_id`` as ``transformers`` does.

peftkit's own keywords pass through: ``adapter_names``, ``config`` (a
:class:`~peftkit.decoding.DecodingConfig`, which replaces every default), ``strategy``, ``seed``,
``stop_strings``, ``tokenizer``, ``streamer``, ``logits_hook``, ``return_output``. Anything else (a logits
processor, ``typical_p``, ...) is refused by name.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .decoding import DecodingConfig
from .decoding import generate as decode
from .decoding.stepper import is_encoder_decoder
from .errors import ConfigError

# transformers' names peftkit's DecodingConfig takes as they are
SAME_NAME = (
    "do_sample",
    "num_beams",
    "temperature",
    "top_k",
    "top_p",
    "early_stopping",
    "length_penalty",
    "num_return_sequences",
    "penalty_alpha",
    "repetition_penalty",
    "no_repeat_ngram_size",
    "eos_token_id",
    "pad_token_id",
)
# transformers' defaults for what neither the call nor a generation config sets
HF_DEFAULTS = {"max_length": 20, "top_k": 50}
# peftkit's own keywords
PEFTKIT_DECODING = ("strategy", "seed", "stop_strings")
ENGINE_ONLY = ("tokenizer", "streamer", "logits_hook", "adapter_names")
# generation-config fields that change outputs, which peftkit's engine lacks, with their no-op values
UNSUPPORTED_CONFIG = {
    "typical_p": 1.0,
    "min_p": None,
    "epsilon_cutoff": 0.0,
    "eta_cutoff": 0.0,
    "bad_words_ids": None,
    "suppress_tokens": None,
    "begin_suppress_tokens": None,
    "forced_bos_token_id": None,
    "forced_eos_token_id": None,
    "encoder_repetition_penalty": 1.0,
    "encoder_no_repeat_ngram_size": 0,
    "exponential_decay_length_penalty": None,
    "renormalize_logits": False,
    "sequence_bias": None,
    "guidance_scale": None,
    "num_beam_groups": 1,
    "diversity_penalty": 0.0,
}


def generate(model: nn.Module, args: tuple, kwargs: dict[str, Any]) -> Any:
    """``model.generate(*args, **kwargs)`` as described in the module docstring."""
    kwargs = dict(kwargs)
    input_ids, attention_mask = _inputs(args, kwargs)
    return_output = kwargs.pop("return_output", False)
    as_dict = bool(kwargs.pop("return_dict_in_generate", False))
    output_scores = bool(kwargs.pop("output_scores", False))
    if kwargs.pop("use_cache", True) is not True:
        raise ConfigError(
            "use_cache", "peftkit's engine always decodes with a KV cache; leave use_cache=True"
        )
    decoder_ids = kwargs.pop("decoder_input_ids", None)
    engine = {k: kwargs.pop(k) for k in ENGINE_ONLY if k in kwargs}
    gen_config = kwargs.pop("generation_config", None)
    config = kwargs.pop("config", None)
    if config is None:
        config = decoding_config(model, gen_config, kwargs, _decoder_length(model, input_ids, decoder_ids))
    elif gen_config is not None or kwargs:
        raise ConfigError("config", f"config= is a whole DecodingConfig; also given: {sorted(kwargs)}")
    if attention_mask is None:
        attention_mask = _inferred_mask(input_ids, config)
    out = decode(
        model,
        input_ids,
        attention_mask,
        config,
        decoder_input_ids=decoder_ids,
        output_scores=output_scores,
        **engine,
    )
    if return_output:
        return out
    return _hf_output(model, out, config) if as_dict else out.sequences


def _inputs(args: tuple, kwargs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
    if len(args) > 2:
        raise ConfigError(
            "generate", "takes input_ids and attention_mask positionally; pass the rest by keyword"
        )
    if "inputs" in kwargs:  # transformers' name of the first argument
        kwargs.setdefault("input_ids", kwargs.pop("inputs"))
    named = {"input_ids": args[0] if args else None, "attention_mask": args[1] if len(args) > 1 else None}
    for key in named:
        if key in kwargs:
            if named[key] is not None:
                raise ConfigError(key, "given both positionally and by keyword")
            named[key] = kwargs.pop(key)
    if named["input_ids"] is None:
        raise ConfigError("input_ids", "generate needs input_ids (peftkit decodes from token ids)")
    return named["input_ids"], named["attention_mask"]


def _decoder_length(model: nn.Module, input_ids: torch.Tensor, decoder_ids: torch.Tensor | None) -> int:
    """The length ``max_length`` counts from: the prompt, or the decoder prompt (start token included)."""
    if not is_encoder_decoder(model):
        return input_ids.shape[1]
    if decoder_ids is None:
        return 1
    start = getattr(model.config, "decoder_start_token_id", None)
    return decoder_ids.shape[1] + (0 if bool((decoder_ids[:, 0] == start).all()) else 1)


def _setting(name: str, call: dict[str, Any], gen_configs: list[Any]) -> Any:
    """A generation option: the call's, else the first generation config's that sets it, else None."""
    if call.get(name) is not None:
        return call[name]
    for gen in gen_configs:
        value = getattr(gen, name, None)
        if value is not None:
            return value
    return None


def decoding_config(model: nn.Module, gen_config: Any, call: dict[str, Any], length: int) -> DecodingConfig:
    """The engine's config for ``transformers``-style options ``call`` on a prompt of ``length`` tokens."""
    gens = [g for g in (gen_config, getattr(model, "generation_config", None)) if g is not None]
    _refuse_unsupported(call, gens)
    options = {k: call.pop(k) for k in PEFTKIT_DECODING if k in call}
    for name in SAME_NAME:
        value = _setting(name, call, gens)
        if value is not None:
            options[name] = value
        call.pop(name, None)
    if options.get("do_sample") and "top_k" not in options:
        options["top_k"] = HF_DEFAULTS["top_k"]
    options["max_new_tokens"] = _max_new(model, call, gens, length)
    options["min_new_tokens"] = _min_new(call, gens, length)
    if call:
        raise ConfigError(sorted(call)[0], "not a generate option peftkit's decoding engine takes")
    return DecodingConfig.from_kwargs(**options)


def _max_new(model: nn.Module, call: dict[str, Any], gens: list[Any], length: int) -> int:
    new, total = call.pop("max_new_tokens", None), call.pop("max_length", None)
    new = new if new is not None else (None if total is not None else _setting("max_new_tokens", {}, gens))
    if new is not None:
        return new
    total = total if total is not None else _setting("max_length", {}, gens)
    if total is None:  # transformers' default: 20 new tokens, within the model's positions
        total = length + HF_DEFAULTS["max_length"]
        positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        total = min(total, positions) if isinstance(positions, int) else total
    if total <= length:
        raise ConfigError("max_length", f"{total} leaves no room after the {length} prompt tokens; raise it")
    return total - length


def _min_new(call: dict[str, Any], gens: list[Any], length: int) -> int:
    new, total = call.pop("min_new_tokens", None), call.pop("min_length", None)
    if new is not None:
        return new
    total = total if total is not None else _setting("min_length", {}, gens)
    return max(0, (total or 0) - length)


def _refuse_unsupported(call: dict[str, Any], gens: list[Any]) -> None:
    for name, neutral in UNSUPPORTED_CONFIG.items():
        if call.get(name, neutral) != neutral:
            raise ConfigError(name, "not supported by peftkit's decoding engine")
        for gen in gens:
            if getattr(gen, name, None) not in (None, neutral):
                raise ConfigError(
                    f"generation_config.{name}",
                    "set in the generation config but not supported by peftkit's engine",
                )
        call.pop(name, None)


def _inferred_mask(input_ids: torch.Tensor, config: DecodingConfig) -> torch.Tensor:
    """transformers' rule: padding (``pad_token_id`` in the input, not also the end token) is masked out."""
    pad, eos = config.pad_token_id, config.eos_token_id or []
    if pad is not None and pad not in eos and bool((input_ids == pad).any()):
        return (input_ids != pad).long()
    return torch.ones_like(input_ids)


def _hf_output(model: nn.Module, out: Any, config: DecodingConfig) -> Any:
    """transformers' output class for what was decoded (``sequences``, ``scores``, ``sequences_scores``)."""
    from transformers.generation import utils

    encoder_decoder = is_encoder_decoder(model)
    if config.strategy == "beam":
        cls = (
            utils.GenerateBeamEncoderDecoderOutput if encoder_decoder else utils.GenerateBeamDecoderOnlyOutput
        )
        return cls(sequences=out.sequences, sequences_scores=out.scores)
    cls = utils.GenerateEncoderDecoderOutput if encoder_decoder else utils.GenerateDecoderOnlyOutput
    return cls(sequences=out.sequences, scores=out.step_scores)
