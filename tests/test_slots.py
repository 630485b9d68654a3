"""Architecture slots: every declared family resolves its slots, unknown ones fail saying how to declare."""

from __future__ import annotations

import pytest
import torch
from conftest import TinyMLP, build, make_inputs
from torch import nn

from peftkit import BottleneckConfig, TargetError, get_peft_model
from peftkit import slots as slots_mod
from peftkit.slots import LayerStack, declare_slots, model_layers, slot_modules

EXPECTED = {  # kind -> (layer count, one ffn_output path)
    "bert": (2, "bert.encoder.layer.1.output.dense"),
    "llama": (2, "model.layers.1.mlp.down_proj"),
    "llama_cls": (2, "model.layers.1.mlp.down_proj"),
    "gpt2": (2, "transformer.h.1.mlp.c_proj"),
    "t5": (4, "decoder.block.1.layer.2.DenseReluDense.wo"),
}


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_declared_families_resolve_every_slot(kind):
    model = build(kind)
    count, ffn_out = EXPECTED[kind]
    _, layers = model_layers(model)
    assert len(layers) == count
    modules = dict(model.named_modules())
    for slot in ("attention", "attention_output", "ffn_input", "ffn_output"):
        found = slot_modules(model, slot)
        assert len(found) == count and all(path in modules for path, _ in found)
    assert ffn_out in [p for p, _ in slot_modules(model, "ffn_output")]
    assert [i for _, i in slot_modules(model, "ffn_output", layers=[1])] == [1] * (count // 2)


def test_t5_declares_cross_attention_for_the_decoder_only():
    model = build("t5")
    with pytest.raises(TargetError, match="declares no 'cross_attention' slot for encoder.block"):
        slot_modules(model, "cross_attention")


def test_unknown_architecture_names_how_to_declare_it():
    with pytest.raises(
        TargetError, match=r"no architecture slots declared for TinyMLP.*declare_slots\('TinyMLP'"
    ):
        get_peft_model(TinyMLP(), BottleneckConfig())


class Block(nn.Module):
    def __init__(self, d: int = 16):
        super().__init__()
        self.mix = nn.Linear(d, d)
        self.ff = nn.Sequential(nn.Linear(d, 2 * d), nn.ReLU(), nn.Linear(2 * d, d))

    def forward(self, h):
        h = h + self.mix(h)
        return h + self.ff(h)


class TinyStack(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(96, 16)
        self.blocks = nn.ModuleList([Block(), Block()])
        self.head = nn.Linear(16, 3)

    def forward(self, input_ids, attention_mask=None):
        h = self.embed(input_ids)
        for block in self.blocks:
            h = block(h)
        return self.head(h)


@pytest.fixture
def declared():
    declare_slots(TinyStack, LayerStack(layers="blocks", ffn_input="ff", ffn_output="ff.2"))
    yield
    slots_mod._FAMILIES.pop("TinyStack")


def test_a_new_model_declared_in_one_call(declared):
    torch.manual_seed(0)
    base = TinyStack().eval()
    ids = make_inputs("mlp")["input_ids"]
    expected = base(ids)
    model = get_peft_model(base, BottleneckConfig(bottleneck_size=4))
    assert model.targets["default"] == ["blocks.0.ff.2", "blocks.1.ff.2"]
    torch.testing.assert_close(model(ids), expected)
    with pytest.raises(TargetError, match="declares no 'attention_output' slot.*attention_output="):
        model.add_adapter("h", BottleneckConfig(placement="houlsby"))
    with pytest.raises(TargetError, match="already declared"):
        declare_slots(TinyStack, LayerStack(layers="blocks"))


def test_a_wrong_path_is_named(declared):
    declare_slots(TinyStack, LayerStack(layers="blocks", ffn_output="ff.9"), replace=True)
    with pytest.raises(TargetError, match=r"slot 'ffn_output' = 'ff.9' is not a module of blocks.0"):
        get_peft_model(TinyStack(), BottleneckConfig())
    declare_slots(TinyStack, LayerStack(layers="nope", ffn_output="ff.2"), replace=True)
    with pytest.raises(TargetError, match="layer list 'nope' matches no ModuleList"):
        get_peft_model(TinyStack(), BottleneckConfig())
