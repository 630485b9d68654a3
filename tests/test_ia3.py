"""(IA)^3 (Liu et al. 2022) checked by hand: output vectors on keys/values, input vectors on feed-forward
layers, several adapters multiplying, merging into the weight, peft's default targets."""

from __future__ import annotations

import pytest
import torch
from conftest import build, make_inputs
from test_contract import perturb

from peftkit import BASE_ROW, AdapterError, ConfigError, IA3Config, TargetError, get_peft_model


def ia3(kind: str, targets: list[str], feedforward: list[str], name: str = "default", model=None):
    config = IA3Config(target_modules=targets, feedforward_modules=feedforward)
    if model is not None:
        model.add_adapter(name, config)
        return model
    return get_peft_model(build(kind), config, adapter_name=name)


def test_output_vector_scales_the_output_and_input_vector_the_input():
    model = ia3("mlp", ["fc1", "fc2"], ["fc2"])
    perturb(model)
    fc1, fc2 = model.get_base_model().fc1, model.get_base_model().fc2
    assert fc1.ia3_l["default"].shape == (32, 1) and fc2.ia3_l["default"].shape == (1, 32)  # peft's shapes
    x, h = torch.randn(4, 16), torch.randn(4, 32)
    l1, l2 = fc1.ia3_l["default"].detach().flatten(), fc2.ia3_l["default"].detach().flatten()
    torch.testing.assert_close(fc1(x), fc1.base(x) * l1)  # l * (W x + b): the bias is scaled too
    torch.testing.assert_close(fc2(h), fc2.base(h * l2))  # W (l * h) + b


def test_conv1d_vectors_follow_gpt2_s_layout():
    model = ia3("gpt2", ["c_attn", "mlp.c_proj"], ["mlp.c_proj"])
    perturb(model)
    block = model.get_base_model().transformer.h[0]
    c_attn, c_proj = block.attn.c_attn, block.mlp.c_proj
    assert c_attn.ia3_l["default"].shape == (96, 1) and c_proj.ia3_l["default"].shape == (1, 128)
    x, h = torch.randn(2, 3, 32), torch.randn(2, 3, 128)
    torch.testing.assert_close(c_attn(x), c_attn.base(x) * c_attn.ia3_l["default"].detach().flatten())
    torch.testing.assert_close(c_proj(h), c_proj.base(h * c_proj.ia3_l["default"].detach().flatten()))


def test_vectors_start_at_ones():
    inputs = make_inputs("llama")
    expected = build("llama")(**inputs).logits
    model = get_peft_model(build("llama"), IA3Config())  # peft's Llama defaults
    assert all(torch.equal(p, torch.ones_like(p)) for n, p in model.named_parameters() if "ia3_l" in n)
    torch.testing.assert_close(model(**inputs).logits, expected)


def test_init_ia3_weights_false_draws_random_vectors():
    config = IA3Config(target_modules=["fc1"], feedforward_modules=[], init_ia3_weights=False)
    (vector,) = get_peft_model(build("mlp"), config).get_base_model().fc1.ia3_l.values()
    assert vector.std() > 0.5  # N(0, 1), as peft


def test_two_active_adapters_multiply():
    model = ia3("mlp", ["fc1"], [])
    ia3("mlp", ["fc1"], [], name="b", model=model)
    perturb(model, "default", seed=1)
    perturb(model, "b", seed=2)
    model.set_adapter(["default", "b"])
    layer = model.get_base_model().fc1
    x = torch.randn(3, 16)
    l_a, l_b = (layer.ia3_l[n].detach().flatten() for n in ("default", "b"))
    expected = layer.base(x) * l_a * l_b
    torch.testing.assert_close(layer(x), expected)
    model.merge_adapter()  # both vectors folded into W and b
    torch.testing.assert_close(layer.base(x), expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(("targets", "feedforward"), [(["fc1", "fc2"], ["fc2"]), (["fc1"], ["fc1"])])
def test_merge_and_unmerge(targets, feedforward):
    model = ia3("mlp", targets, feedforward)
    perturb(model)
    before = {
        n: p.detach().clone() for n, p in model.get_base_model().named_parameters() if "base_layer" in n
    }
    inputs = make_inputs("mlp")
    expected = model(**inputs)
    model.merge_adapter()
    torch.testing.assert_close(model(**inputs), expected, atol=1e-5, rtol=1e-5)
    model.unmerge_adapter()
    for n, p in model.get_base_model().named_parameters():
        if n in before:
            torch.testing.assert_close(p, before[n], atol=1e-6, rtol=1e-5)
    merged = model.merge_and_unload()
    torch.testing.assert_close(merged(**inputs), expected, atol=1e-5, rtol=1e-5)


def test_unmerging_a_vector_with_a_zero_is_refused_and_leaves_it_merged():
    model = ia3("mlp", ["fc1"], [])
    with torch.no_grad():
        model.get_base_model().fc1.ia3_l["default"][3] = 0.0
    model.merge_adapter()
    with pytest.raises(AdapterError, match="zero entry"):
        model.unmerge_adapter()
    assert model.get_base_model().fc1.merged == ["default"]


def test_mixed_batch_rows_multiply_by_their_own_vector():
    model = ia3("llama", ["k_proj", "v_proj", "down_proj"], ["down_proj"])
    ia3("llama", ["k_proj", "v_proj", "down_proj"], ["down_proj"], name="b", model=model)
    perturb(model, "default", seed=1)
    perturb(model, "b", seed=2)
    inputs = make_inputs("llama")
    rows = ["b", BASE_ROW, "default"]
    mixed = model(**inputs, adapter_names=rows).logits
    for i, row in enumerate(rows):
        if row == BASE_ROW:
            with model.disable_adapter():
                single = model(**inputs).logits
        else:
            model.set_adapter(row)
            single = model(**inputs).logits
        torch.testing.assert_close(mixed[i], single[i], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    ("kind", "targets", "feedforward"),
    [
        ("llama", {"k_proj", "v_proj", "down_proj"}, {"down_proj"}),
        ("gpt2", {"c_attn", "c_proj"}, {"c_proj"}),
        ("t5", {"k", "v", "wo"}, {"wo"}),
        ("bert", {"key", "value", "dense"}, {"dense"}),
    ],
)
def test_default_targets_and_feedforward_modules_follow_the_architecture(kind, targets, feedforward):
    config = IA3Config()
    model = get_peft_model(build(kind), config)
    assert config.target_modules and config.feedforward_modules is not None  # written into the config
    layers = dict(model.layers())
    assert {p.rsplit(".", 1)[-1] for p in layers} == targets
    assert {
        p.rsplit(".", 1)[-1] for p, layer in layers.items() if layer.feedforward["default"]
    } == feedforward


def test_unknown_architecture_needs_targets_and_feedforward_modules():
    with pytest.raises(TargetError, match="Please specify `target_modules`"):
        get_peft_model(build("mlp"), IA3Config())
    with pytest.raises(ConfigError, match="Please specify `feedforward_modules`"):
        get_peft_model(build("mlp"), IA3Config(target_modules=["fc1"]))


def test_feedforward_modules_must_be_targeted():
    with pytest.raises(ConfigError, match="subset of `target_modules`"):
        IA3Config(target_modules=["fc1"], feedforward_modules=["fc2"])


def test_fan_in_fan_out_is_corrected_per_layer_type():
    config = IA3Config(target_modules=["fc1"], feedforward_modules=[], fan_in_fan_out=True)
    with pytest.warns(UserWarning, match="target module is `torch.nn.Linear`"):
        get_peft_model(build("mlp"), config)
    assert config.fan_in_fan_out is False


def test_saved_keys_are_peft_s(tmp_path):
    model = ia3("llama", ["k_proj", "down_proj"], ["down_proj"])
    state = model.adapter_state_dict("default")
    assert "base_model.model.model.layers.0.self_attn.k_proj.ia3_l" in state
    assert state["base_model.model.model.layers.0.mlp.down_proj.ia3_l"].shape == (1, 64)
