"""A tiny chat model and adapters of many methods saved to folders, for the `peftkit serve` tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import transformers
from tiny_tokenizer import tiny_tokenizer

from peftkit import (
    AdaLoraConfig,
    BottleneckConfig,
    FullConfig,
    LoraConfig,
    PeftConfig,
    PrefixTuningConfig,
    PromptTuningConfig,
    PTuningConfig,
    PTuningV2Config,
    get_peft_model,
)

# eight adapters, six methods that change layers or add virtual tokens (embeddings or cache prefixes)
ADAPTERS: dict[str, Callable[[], PeftConfig]] = {
    "lora": lambda: LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    "adalora": lambda: AdaLoraConfig(
        init_r=4, target_r=2, target_modules=["k_proj", "o_proj"], total_step=10
    ),
    "prompt": lambda: PromptTuningConfig(num_virtual_tokens=3),
    "prefix": lambda: PrefixTuningConfig(num_virtual_tokens=5),
    "ptuning": lambda: PTuningConfig(num_virtual_tokens=4, encoder_hidden_size=16),
    "deep": lambda: PTuningV2Config(num_virtual_tokens=2),
    "bottleneck": lambda: BottleneckConfig(placement="pfeiffer", bottleneck_size=8),
    "full": lambda: FullConfig(target_modules=["input_layernorm", "post_attention_layernorm"]),
}


def save_base(path: Path, context: int = 256) -> Path:
    """A 2-layer Llama with the tiny word tokenizer (chat template, <bos>) saved as a model folder."""
    tok = tiny_tokenizer(chat_template=True, bos=True)
    cfg = transformers.LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=context,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def perturb(model, name: str, seed: int) -> None:
    """Non-trivial adapter weights (LoRA's B and most deltas start at zero)."""
    g = torch.Generator().manual_seed(seed)
    params = [p for _, layer in model.layers() for p in layer.adapter_parameters(name)]
    if name in model.prompt_encoder:
        params += list(model.prompt_encoder[name].parameters())
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn(p.shape, generator=g) * 0.3)


def save_adapter(base: Path, out: Path, make_config: Callable[[], PeftConfig], seed: int) -> Path:
    model = transformers.AutoModelForCausalLM.from_pretrained(base)
    peft_model = get_peft_model(model, make_config())
    perturb(peft_model, "default", seed)
    peft_model.save_pretrained(out)
    return out


def save_adapters(base: Path, root: Path, names: list[str] | None = None) -> dict[str, Path]:
    names = names or list(ADAPTERS)
    return {n: save_adapter(base, root / n, ADAPTERS[n], seed=i + 1) for i, n in enumerate(names)}
