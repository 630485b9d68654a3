"""Tiny randomly initialised models (built in the test, no downloads) shared by the suite."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
import transformers
from torch import nn

VOCAB = 96


def tiny_llama(num_labels: int | None = None, vocab_size: int = VOCAB) -> nn.Module:
    cfg = transformers.LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=0,
        num_labels=num_labels or 2,
    )
    cls = transformers.LlamaForSequenceClassification if num_labels else transformers.LlamaForCausalLM
    return cls(cfg)


def tiny_bert(num_labels: int = 3) -> nn.Module:
    cfg = transformers.BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=num_labels,
    )
    return transformers.BertForSequenceClassification(cfg)


def tiny_gpt2() -> nn.Module:
    cfg = transformers.GPT2Config(
        vocab_size=VOCAB,
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_positions=64,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return transformers.GPT2LMHeadModel(cfg)


def tiny_t5() -> nn.Module:
    cfg = transformers.T5Config(
        vocab_size=VOCAB,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        dropout_rate=0.0,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )
    return transformers.T5ForConditionalGeneration(cfg)


class TinyMLP(nn.Module):
    """A plain torch module (no transformers) to show methods work on any nn.Module."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 16)
        self.fc1, self.fc2, self.head = nn.Linear(16, 32), nn.Linear(32, 16), nn.Linear(16, 4)

    def forward(self, input_ids, attention_mask=None):
        return self.head(torch.relu(self.fc2(torch.relu(self.fc1(self.embed(input_ids))))))


BUILDERS: dict[str, Callable[[], nn.Module]] = {
    "llama": tiny_llama,
    "llama_cls": lambda: tiny_llama(num_labels=3),
    "bert": tiny_bert,
    "gpt2": tiny_gpt2,
    "t5": tiny_t5,
    "mlp": TinyMLP,
}


def build(kind: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return BUILDERS[kind]().eval()


def make_inputs(kind: str, batch: int = 3, seq: int = 6, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (batch, seq), generator=g)
    mask = torch.ones_like(ids)
    mask[0, :2] = 0  # one left-padded row
    if kind == "mlp":
        return {"input_ids": ids}
    inputs = {"input_ids": ids, "attention_mask": mask}
    if kind == "t5":
        inputs["decoder_input_ids"] = torch.randint(3, VOCAB, (batch, 4), generator=g)
    return inputs


def logits(model: nn.Module, inputs: dict, **kw) -> torch.Tensor:
    out = model(**inputs, **kw)
    return out if isinstance(out, torch.Tensor) else out.logits


@dataclass
class Case:
    """One row of the contract table: a method config on a model kind."""

    id: str
    kind: str
    make_config: Callable[[], object]
    mergeable: bool = True
    identity_at_init: bool = True
    # adapters that must be in the model first (a fusion's), added frozen with fixed weights
    stage1: tuple[tuple[str, Callable[[], object]], ...] = ()

    def __str__(self) -> str:
        return self.id

    def wrap(self, base: nn.Module, name: str = "default"):
        """``base`` with this case's adapter ``name`` (after its stage-1 adapters), made active."""
        from peftkit import get_peft_model

        if not self.stage1:
            return get_peft_model(base, self.make_config(), adapter_name=name)
        model = self.with_stage1(base)
        model.add_adapter(name, self.make_config())
        model.set_adapter(name)
        return model

    def with_stage1(self, base: nn.Module):
        """``base`` wrapped with the stage-1 adapters: frozen, the same weights on every call."""
        from peftkit import get_peft_model

        (first, make), *rest = self.stage1
        model = get_peft_model(base, make(), adapter_name=first)
        for name, make in rest:
            model.add_adapter(name, make())
        g = torch.Generator().manual_seed(11)
        with torch.no_grad():
            for name, _ in self.stage1:
                model.peft_config[name].inference_mode = True
                for _, layer in model.layers():
                    for p in layer.adapter_parameters(name):
                        p.add_(torch.randn(p.shape, generator=g) * 0.2)
        return model

    def load(self, base: nn.Module, path):
        """Load a saved adapter of this case onto ``base`` as 'default' (stage-1 adapters first)."""
        from peftkit import PeftModel

        if not self.stage1:
            return PeftModel.from_pretrained(base, path)
        model = self.with_stage1(base)
        model.load_adapter(path, "default")
        model.set_adapter("default")
        return model


@pytest.fixture
def tiny():
    return build
