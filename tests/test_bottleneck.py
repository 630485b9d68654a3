"""Bottleneck adapters: the maths at a site, placements, widths, Stack (MAD-X), config checks, format."""

from __future__ import annotations

import pytest
import torch
from conftest import build, logits, make_inputs
from safetensors.torch import load_file

import peftkit
from peftkit import AdapterError, BottleneckConfig, ConfigError, Stack, get_peft_model
from peftkit.methods.bottleneck import BottleneckLayer


def perturb(model, name, seed=3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in model.layers():
            for p in layer.adapter_parameters(name):
                p.add_(torch.randn(p.shape, generator=g) * 0.2)


def site(model, path) -> BottleneckLayer:
    layer = model.get_base_model().get_submodule(path)
    assert isinstance(layer, BottleneckLayer)
    return layer


def manual(adapter, h, act=torch.relu):
    """``W_up f(W_down h)`` written out."""
    return (act(h @ adapter.down.weight.T + adapter.down.bias)) @ adapter.up.weight.T + adapter.up.bias


def test_sequential_site_adds_up_f_down_of_its_output():
    model = get_peft_model(build("bert"), BottleneckConfig(bottleneck_size=5, scaling=0.5))
    perturb(model, "default")
    layer = site(model, "bert.encoder.layer.0.output.dense")
    x = torch.randn(2, 3, 64)
    h = layer.base(x)  # (2, 3, 32)
    torch.testing.assert_close(layer(x), h + 0.5 * manual(layer.bottleneck["default"], h))
    assert layer.bottleneck["default"].down.weight.shape == (5, 32)


def test_parallel_reads_the_ffn_input():
    model = get_peft_model(
        build("llama"), BottleneckConfig(placement="parallel", scaling=4.0, non_linearity="gelu")
    )
    perturb(model, "default")
    mlp = model.get_base_model().model.layers[0].mlp
    adapter = site(model, "model.layers.0.mlp.down_proj").bottleneck["default"]
    x = torch.randn(2, 3, 32)
    with model.disable_adapter():
        plain = mlp(x)
    gelu = torch.nn.functional.gelu
    torch.testing.assert_close(mlp(x), plain + 4.0 * manual(adapter, x, gelu))


@pytest.mark.parametrize(
    ("config", "sites", "width"),
    [
        (BottleneckConfig(placement="houlsby"), 4, 2),  # default reduction 16: 32 // 16
        (BottleneckConfig(placement="pfeiffer", reduction_factor=4), 2, 8),
        (BottleneckConfig(placement="parallel", bottleneck_size=3, layers_to_transform=[1]), 1, 3),
    ],
)
def test_placements_widths_and_parameter_count(config, sites, width):
    model = get_peft_model(build("llama"), config)
    assert len(model.targets["default"]) == sites
    d = 32
    assert model.parameter_report().trainable == sites * (2 * d * width + width + d)


def test_houlsby_wraps_attention_and_ffn_outputs():
    model = get_peft_model(build("gpt2"), BottleneckConfig(placement="houlsby", adapter_layernorm=True))
    assert model.targets["default"][:2] == ["transformer.h.0.attn.c_proj", "transformer.h.1.attn.c_proj"]
    assert model.targets["default"][2:] == ["transformer.h.0.mlp.c_proj", "transformer.h.1.mlp.c_proj"]
    assert isinstance(
        site(model, "transformer.h.0.mlp.c_proj").bottleneck["default"].norm, torch.nn.LayerNorm
    )


def test_stack_applies_adapters_in_order():
    model = get_peft_model(build("bert"), BottleneckConfig(bottleneck_size=4), adapter_name="lang")
    model.add_adapter("task", BottleneckConfig(bottleneck_size=4))
    perturb(model, "lang", seed=1)
    perturb(model, "task", seed=2)
    layer = site(model, "bert.encoder.layer.1.output.dense")
    model.set_adapter(Stack("lang", "task"))
    x = torch.randn(2, 3, 64)
    h = layer.base(x)
    h1 = h + manual(layer.bottleneck["lang"], h)
    torch.testing.assert_close(layer(x), h1 + manual(layer.bottleneck["task"], h1))
    inputs = make_inputs("bert")
    stacked = logits(model, inputs)
    model.set_adapter(Stack("task", "lang"))
    assert not torch.allclose(logits(model, inputs), stacked, atol=1e-4), "order must matter"
    with pytest.raises(AdapterError, match="two or more"):
        Stack("lang")


def test_mad_x_trains_the_task_adapter_over_a_frozen_language_adapter(tmp_path):
    lang = get_peft_model(build("bert"), BottleneckConfig(bottleneck_size=4))
    perturb(lang, "default")
    lang.save_pretrained(tmp_path / "lang")
    model = peftkit.PeftModel.from_pretrained(build("bert"), tmp_path / "lang", adapter_name="lang")
    model.add_adapter("task", BottleneckConfig(bottleneck_size=4, modules_to_save=["classifier"]))
    model.set_adapter(Stack("lang", "task"))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".task." in n for n in trainable)
    lang_before = {k: v.clone() for k, v in model.adapter_state_dict("lang").items()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    logits(model.train(), make_inputs("bert")).pow(2).mean().backward()
    opt.step()
    for key, value in model.adapter_state_dict("lang").items():
        assert torch.equal(value, lang_before[key])


def test_cannot_merge():
    model = get_peft_model(build("bert"), BottleneckConfig())
    with pytest.raises(AdapterError, match="cannot be merged"):
        model.merge_adapter()


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"placement": "after"}, "placement"),
        ({"non_linearity": "tanh"}, "non_linearity"),
        ({"reduction_factor": 4, "bottleneck_size": 8}, "bottleneck_size"),
        ({"reduction_factor": 0}, "reduction_factor"),
        ({"bottleneck_size": 0}, "bottleneck_size"),
        ({"target_modules": ["dense"]}, "target_modules"),
        ({"init_weights": "zeros"}, "init_weights"),
    ],
)
def test_bad_config_names_the_field(fields, field):
    with pytest.raises(ConfigError) as err:
        BottleneckConfig(**fields)
    assert err.value.field == field


def test_saved_format_is_as_documented(tmp_path):
    model = get_peft_model(build("bert"), BottleneckConfig(bottleneck_size=4, adapter_layernorm=True))
    model.save_pretrained(tmp_path)
    import json

    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peftkit_method"] == "bottleneck" and config["peft_type"] is None
    assert config["bottleneck_size"] == 4 and config["placement"] == "pfeiffer"
    tensors = load_file(tmp_path / "adapter_model.safetensors")
    prefix = "base_model.model.bert.encoder.layer.0.output.dense.bottleneck."
    assert tensors[prefix + "down.weight"].shape == (4, 32)
    assert tensors[prefix + "up.weight"].shape == (32, 4)
    assert {prefix + k for k in ("down.bias", "up.bias", "norm.weight", "norm.bias")} <= set(tensors)
    assert len(tensors) == 2 * 6
