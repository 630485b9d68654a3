"""AdapterFusion: single-adapter identity, weights summing to one, stage 2 trains only the fusion,
saving/loading apart from the fused adapters, mixed batches, reading the attention."""

from __future__ import annotations

import pytest
import torch
from conftest import build, logits, make_inputs
from safetensors.torch import load_file

import peftkit
from peftkit import AdapterError, BottleneckConfig, ConfigError, FusionConfig, TargetError, get_peft_model
from peftkit.methods.fusion import fusion_attention

ATOL = 1e-5


def perturb(model, name, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in model.layers():
            for p in layer.adapter_parameters(name):
                p.add_(torch.randn(p.shape, generator=g) * 0.2)


def two_adapters(kind="bert", placement="pfeiffer"):
    """Stage 1 stand-in: two trained (perturbed) adapters on one base."""
    model = get_peft_model(build(kind), BottleneckConfig(placement=placement, bottleneck_size=4), "sst2")
    model.add_adapter("e2e", BottleneckConfig(placement=placement, bottleneck_size=6))
    perturb(model, "sst2", 1)
    perturb(model, "e2e", 2)
    return model


@pytest.mark.parametrize("kind", ["bert", "llama", "gpt2", "t5"])
@pytest.mark.parametrize("fusion_type", ["dynamic", "static"])
def test_fusion_of_one_adapter_at_init_is_that_adapter(kind, fusion_type):
    model = two_adapters(kind, placement="houlsby")
    inputs = make_inputs(kind)
    model.set_adapter("e2e")
    expected = logits(model, inputs)
    model.add_adapter("f", FusionConfig(adapter_names=["e2e"], fusion_type=fusion_type))
    model.set_adapter("f")
    torch.testing.assert_close(logits(model, inputs), expected, atol=ATOL, rtol=1e-4)


def test_fusion_weights_sum_to_one_and_depend_on_the_input():
    model = two_adapters()
    model.add_adapter("f", FusionConfig(adapter_names=["sst2", "e2e"]))
    perturb(model, "f", 3)
    model.set_adapter("f")
    inputs = make_inputs("bert")
    fused = fusion_attention(model, inputs, "f")
    assert fused.adapters == ["sst2", "e2e"] and fused.sites == ["0.output.dense", "1.output.dense"]
    assert fused.weights.shape == (2, 2)
    torch.testing.assert_close(fused.weights.sum(-1), torch.ones(2))
    layer = model.get_base_model().get_submodule("bert.encoder.layer.0.output.dense")
    layer.record_fusion = True
    logits(model, inputs)
    per_token = layer.fusion_weights["f"]  # (B, T, N)
    assert per_token.shape == (3, 6, 2) and (per_token >= 0).all()
    torch.testing.assert_close(per_token.sum(-1), torch.ones(3, 6))
    assert per_token.std(dim=(0, 1)).max() > 1e-4, "weights should vary with the token"


def test_stage_two_changes_only_fusion_parameters():
    model = two_adapters()
    model.add_adapter("f", FusionConfig(adapter_names=["sst2", "e2e"], modules_to_save=["classifier"]))
    model.set_adapter("f")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".fusion.f." in n or "modules_to_save.f." in n for n in trainable)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    inputs = make_inputs("bert")
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(3):
        opt.zero_grad()
        logits(model, inputs).pow(2).mean().backward()
        opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p)}
    assert changed and changed <= trainable
    assert any(".fusion.f.value." in n for n in changed) and any(".fusion.f.query." in n for n in changed)


def test_saved_apart_and_loaded_by_name(tmp_path):
    model = two_adapters()
    model.add_adapter("f", FusionConfig(adapter_names=["sst2", "e2e"], fusion_type="static"))
    perturb(model, "f", 3)
    model.set_adapter("f")
    inputs = make_inputs("bert", seed=4)
    expected = logits(model, inputs)
    model.save_pretrained(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {
        "sst2",
        "e2e",
        "f",
        "README.md",
    }  # one folder each, a card
    fusion_keys = set(load_file(tmp_path / "f" / "adapter_model.safetensors"))
    assert fusion_keys and all(".fusion." in k for k in fusion_keys)
    assert not any(".value." in k for k in fusion_keys), "static fusion has no value matrix"

    fresh = build("bert")
    with pytest.raises(TargetError, match=r"adapters \['sst2', 'e2e'\] are not bottleneck adapters"):
        peftkit.PeftModel.from_pretrained(fresh, tmp_path / "f")
    loaded = peftkit.PeftModel.from_pretrained(build("bert"), tmp_path / "sst2", adapter_name="sst2")
    loaded.load_adapter(tmp_path / "e2e", adapter_name="e2e")
    loaded.load_adapter(tmp_path / "f", adapter_name="f")
    loaded.set_adapter("f")
    torch.testing.assert_close(logits(loaded, inputs), expected, atol=ATOL, rtol=1e-4)


def test_mixed_batch_and_disable():
    model = two_adapters()
    model.add_adapter("f", FusionConfig(adapter_names=["sst2", "e2e"]))
    perturb(model, "f", 3)
    inputs = make_inputs("bert")
    rows = ["f", peftkit.BASE_ROW, "sst2"]
    mixed = logits(model, inputs, adapter_names=rows)
    for i, name in enumerate(rows):
        if name == peftkit.BASE_ROW:
            single = logits(build("bert"), inputs)
        else:
            model.set_adapter(name)
            single = logits(model, inputs)
        torch.testing.assert_close(mixed[i], single[i], atol=ATOL, rtol=1e-4)
    with model.disable_adapter():
        torch.testing.assert_close(logits(model, inputs), logits(build("bert"), inputs), atol=ATOL, rtol=1e-4)


def test_fused_adapters_cannot_be_deleted_under_the_fusion():
    model = two_adapters()
    model.add_adapter("f", FusionConfig(adapter_names=["sst2", "e2e"]))
    with pytest.raises(AdapterError, match=r"fused by \['f'\]"):
        model.delete_adapter("e2e")
    model.delete_adapter("f")
    model.delete_adapter("e2e")
    assert list(model.peft_config) == ["sst2"]


def test_bad_fusion_configs():
    with pytest.raises(ConfigError, match="adapter_names"):
        FusionConfig()
    with pytest.raises(ConfigError, match="once"):
        FusionConfig(adapter_names=["a", "a"])
    with pytest.raises(ConfigError, match="fusion_type"):
        FusionConfig(adapter_names=["a"], fusion_type="soft")
    with pytest.raises(ConfigError, match="temperature"):
        FusionConfig(adapter_names=["a"], temperature=0)
