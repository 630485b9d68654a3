"""LoRA maths checked by hand, beyond the shared contract."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import build, make_inputs
from test_contract import perturb

from peftkit import BASE_ROW, AdapterError, ConfigError, LoraConfig, get_peft_model


def test_linear_forward_is_base_plus_scaled_BA():
    model = get_peft_model(build("mlp"), LoraConfig(r=2, lora_alpha=6, target_modules=["fc1"]))
    perturb(model)
    layer = model.get_base_model().fc1
    x = torch.randn(4, 16)
    A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    expected = x @ layer.base.weight.T + layer.base.bias + 3.0 * (x @ A.T @ B.T)
    torch.testing.assert_close(layer(x), expected)


def test_conv1d_uses_transposed_weight():
    model = get_peft_model(build("gpt2"), LoraConfig(r=2, target_modules=["c_attn"]))
    perturb(model)
    layer = model.get_base_model().transformer.h[0].attn.c_attn
    assert layer.fan_in_fan_out and layer.in_features == 32 and layer.out_features == 96
    x = torch.randn(2, 5, 32)
    delta = layer.delta_weight("default")
    assert delta.shape == layer.base.weight.shape == (32, 96)
    torch.testing.assert_close(
        layer(x), x @ (layer.base.weight + delta) + layer.base.bias, atol=1e-5, rtol=1e-5
    )


def test_rslora_and_patterns_set_scaling_per_module():
    cfg = LoraConfig(
        r=4,
        lora_alpha=8,
        use_rslora=True,
        target_modules=["q_proj", "v_proj"],
        rank_pattern={"v_proj": 2},
        alpha_pattern={r"layers\.1\.self_attn\.q_proj": 3},
    )
    model = get_peft_model(build("llama"), cfg)
    attn0, attn1 = (
        model.get_base_model().model.layers[0].self_attn,
        model.get_base_model().model.layers[1].self_attn,
    )
    assert attn0.q_proj.scaling["default"] == pytest.approx(8 / math.sqrt(4))
    assert attn0.v_proj.scaling["default"] == pytest.approx(8 / math.sqrt(2))
    assert attn0.v_proj.lora_A["default"].out_features == 2
    assert attn1.q_proj.scaling["default"] == pytest.approx(3 / math.sqrt(4))


def test_embedding_delta_is_low_rank_lookup():
    model = get_peft_model(build("llama"), LoraConfig(r=3, lora_alpha=3, target_modules=["embed_tokens"]))
    perturb(model)
    layer = model.get_base_model().model.embed_tokens
    ids = torch.tensor([[5, 7, 9]])
    full = layer.base.weight + layer.delta_weight("default")  # (V, d)
    torch.testing.assert_close(layer(ids), full[ids])


def test_pissa_starts_from_principal_components():
    base = build("llama")
    W = base.model.layers[0].self_attn.q_proj.weight.detach().clone()
    model = get_peft_model(
        base, LoraConfig(r=4, lora_alpha=4, target_modules=["q_proj"], init_lora_weights="pissa")
    )
    layer = model.get_base_model().model.layers[0].self_attn.q_proj
    U, S, Vh = torch.linalg.svd(W)
    top = U[:, :4] @ torch.diag(S[:4]) @ Vh[:4]
    torch.testing.assert_close(layer.delta_weight("default"), top, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(layer.base.weight, W - top, atol=1e-5, rtol=1e-4)
    exported = layer.export_state_dict("default")
    assert exported["lora_A.weight"].shape == (8, 32)  # saved as rank-2r LoRA valid on the original W
    model.delete_adapter("default")
    torch.testing.assert_close(base.model.layers[0].self_attn.q_proj.weight, W, atol=1e-5, rtol=1e-4)


def test_pissa_refuses_a_shared_layer():
    model = get_peft_model(build("llama"), LoraConfig(r=2, target_modules=["q_proj"]))
    with pytest.raises(ValueError, match="pissa"):
        model.add_adapter("p", LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights="pissa"))


def test_mixed_batch_generation_equals_single_runs():
    model = get_peft_model(build("llama"), LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"]))
    model.add_adapter("b", LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"]))
    perturb(model, "default", seed=1)
    perturb(model, "b", seed=2)
    inputs = make_inputs("llama")
    kw = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": 0}
    rows = ["b", BASE_ROW, "default"]
    mixed = model.generate(**inputs, adapter_names=rows, **kw)
    for i, row in enumerate(rows):
        if row == BASE_ROW:
            with model.disable_adapter():
                single = model.generate(**inputs, **kw)
        else:
            model.set_adapter(row)
            single = model.generate(**inputs, **kw)
        assert torch.equal(mixed[i], single[i]), f"row {i} ({row})"


def test_disabling_a_merged_adapter_unmerges_it_and_mixed_batches_are_refused():
    x = make_inputs("llama")
    base = build("llama")(**x).logits
    model = get_peft_model(build("llama"), LoraConfig(r=2, target_modules=["q_proj"]))
    perturb(model)
    merged = model.merge_adapter() or model(**x).logits
    with model.disable_adapter():  # as peft: the adapter is unmerged (and stays unmerged after the block)
        torch.testing.assert_close(model(**x).logits, base, atol=1e-5, rtol=1e-4)
    assert not any(layer.merged for _, layer in model.layers())
    torch.testing.assert_close(model(**x).logits, merged, atol=1e-5, rtol=1e-4)
    model.merge_adapter()
    with pytest.raises(AdapterError, match="unmerge"):
        model(**make_inputs("llama"), adapter_names=["default"] * 3)
    with pytest.raises(AdapterError, match="batch has 3 rows"):
        model.unmerge_adapter()
        model(**make_inputs("llama"), adapter_names=["default"] * 2)


def test_training_mode_does_not_merge():
    model = get_peft_model(build("llama"), LoraConfig(r=2, target_modules=["q_proj"]))
    model.eval()
    model.train()
    assert not any(layer.merged for _, layer in model.layers())


def test_mixed_batch_beam_search_equals_single_runs():
    model = get_peft_model(build("llama"), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    model.add_adapter("b", LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    perturb(model, "default", seed=1)
    perturb(model, "b", seed=2)
    inputs = make_inputs("llama", batch=2)
    kw = {"max_new_tokens": 5, "do_sample": False, "num_beams": 3, "pad_token_id": 0}
    mixed = model.generate(**inputs, adapter_names=["b", "default"], **kw)
    for i, row in enumerate(["b", "default"]):
        model.set_adapter(row)
        assert torch.equal(mixed[i], model.generate(**inputs, **kw)[i])


@pytest.mark.parametrize("grad", [True, False])
@pytest.mark.parametrize("base", ["linear", "identity"])  # identity: the base hands back its input
def test_mixed_rows_add_each_adapter_once(grad, base):
    """Each row gets base(x) plus its own adapter's delta, with or without autograd (in place only
    without), and the input is left as it was even when the base hands it back as its output."""
    torch.manual_seed(0)
    model = get_peft_model(
        torch.nn.Sequential(torch.nn.Linear(4, 4)), LoraConfig(r=2, target_modules=["0"]), "a"
    )
    model.add_adapter("b", LoraConfig(r=2, target_modules=["0"]))
    layer = model.get_base_model()[0]
    if base == "identity":
        layer.base_layer = torch.nn.Identity()
    for B in layer.lora_B.values():
        torch.nn.init.normal_(B.weight)
    x, rows = torch.randn(3, 4), ["a", "b", BASE_ROW]
    expected = torch.stack(
        [
            layer.base(x[i]) + (layer.adapter_delta(r, x[i]) if r != BASE_ROW else 0)
            for i, r in enumerate(rows)
        ]
    ).detach()
    before = x.clone()
    with torch.set_grad_enabled(grad):
        out = model(x, adapter_names=rows)
    torch.testing.assert_close(out, expected)
    assert torch.equal(x, before)  # the caller's tensor (e.g. a residual) is never written


# ---- peft's LoRA options: init False, OLoRA, randomised PiSSA, lora_bias, fan_in_fan_out ----------------
def test_init_false_leaves_both_factors_random():
    inputs = make_inputs("llama")
    expected = build("llama")(**inputs).logits
    model = get_peft_model(
        build("llama"), LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False)
    )
    B = model.get_base_model().model.layers[0].self_attn.q_proj.lora_B["default"].weight
    assert B.abs().min() > 0  # peft's init False: B is not zero, the adapter acts from the start
    assert not torch.allclose(model(**inputs).logits, expected, atol=1e-4)


def test_olora_takes_the_first_qr_components_out_of_the_weight():
    """OLoRA (Buyukakyuz 2024): W = Q R, A = R[:r], B = Q[:, :r]; W keeps W - s B A (an identity at init)."""
    base = build("llama")
    W = base.model.layers[0].self_attn.q_proj.weight.detach().clone()
    inputs = make_inputs("llama")
    expected = base(**inputs).logits
    model = get_peft_model(
        base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], init_lora_weights="olora")
    )
    layer = model.get_base_model().model.layers[0].self_attn.q_proj
    Q, R = torch.linalg.qr(W)
    torch.testing.assert_close(layer.lora_A["default"].weight, R[:4])
    torch.testing.assert_close(layer.lora_B["default"].weight, Q[:, :4])
    torch.testing.assert_close(layer.base.weight, W - 2.0 * Q[:, :4] @ R[:4], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(model(**inputs).logits, expected, atol=1e-5, rtol=1e-4)
    model.delete_adapter("default")
    torch.testing.assert_close(base.model.layers[0].self_attn.q_proj.weight, W, atol=1e-6, rtol=1e-5)


def test_randomised_pissa_is_an_identity_at_init():
    inputs = make_inputs("llama")
    expected = build("llama")(**inputs).logits
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights="pissa_niter_4")
    model = get_peft_model(build("llama"), config)
    torch.testing.assert_close(model(**inputs).logits, expected, atol=1e-5, rtol=1e-4)
    with pytest.raises(ConfigError, match="init_lora_weights"):
        LoraConfig(target_modules=["q_proj"], init_lora_weights="pissa_niter_0")


def test_residual_init_rank_is_bounded_by_the_layer():
    with pytest.raises(ConfigError, match="olora takes r components"):
        get_peft_model(build("mlp"), LoraConfig(r=17, target_modules=["fc1"], init_lora_weights="olora"))


def test_lora_bias_trains_a_bias_on_b_and_merges_into_the_base_bias():
    model = get_peft_model(
        build("mlp"), LoraConfig(r=2, lora_alpha=4, target_modules=["fc1"], lora_bias=True)
    )
    layer = model.get_base_model().fc1
    bias = layer.lora_B["default"].bias
    assert bias.requires_grad and torch.equal(bias, torch.zeros_like(bias))
    perturb(model)
    x = torch.randn(3, 16)
    A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    expected = layer.base(x) + 2.0 * (x @ A.T @ B.T + bias)
    torch.testing.assert_close(layer(x), expected)
    base_bias = layer.base.bias.detach().clone()
    model.merge_adapter()
    torch.testing.assert_close(layer.base.bias, base_bias + 2.0 * bias.detach())
    torch.testing.assert_close(layer(x), expected, atol=1e-6, rtol=1e-5)
    model.unmerge_adapter()
    torch.testing.assert_close(layer.base.bias, base_bias)


def test_lora_bias_on_a_layer_without_bias_trains_but_does_not_merge():
    base = torch.nn.Sequential(torch.nn.Linear(4, 4, bias=False))
    with pytest.warns(UserWarning, match="cannot be merged"):
        model = get_peft_model(base, LoraConfig(r=2, target_modules=["0"], lora_bias=True))
    with pytest.raises(AdapterError, match="lora_bias=True"):
        model.merge_adapter()
    assert not model.get_base_model()[0].merged
    with pytest.raises(ConfigError, match="lora_bias"):
        LoraConfig(target_modules=["0"], lora_bias=True, use_dora=True)


@pytest.mark.parametrize(
    ("kind", "given", "corrected", "message"),
    [
        ("gpt2", False, True, "target module is `Conv1D`"),
        ("llama", True, False, "target module is `torch.nn.Linear`"),
    ],
)
def test_fan_in_fan_out_is_corrected_to_the_layer_type(kind, given, corrected, message):
    target = "c_attn" if kind == "gpt2" else "q_proj"
    config = LoraConfig(r=2, target_modules=[target], fan_in_fan_out=given)
    with pytest.warns(UserWarning, match=message):
        get_peft_model(build(kind), config)
    assert config.fan_in_fan_out is corrected
