"""DoRA (Liu et al. 2024) checked by hand: ``W' = m * (W + s B A) / ||W + s B A||_c``, beyond the contract."""

from __future__ import annotations

import pytest
import torch
from conftest import build, make_inputs
from test_contract import perturb

from peftkit import BASE_ROW, ConfigError, LoraConfig, get_peft_model


def dora(kind: str, targets: list[str], **kw):
    model = get_peft_model(
        build(kind), LoraConfig(r=2, lora_alpha=6, target_modules=targets, use_dora=True, **kw)
    )
    perturb(model)
    return model


def adapted_weight(layer, name="default") -> torch.Tensor:
    """``m * (W + s B A) / ||W + s B A||_c`` built in full, ``(d_out, d_in)``."""
    W = layer.unit_weight().detach()
    V = W + layer.scaling[name] * layer.B(name).detach() @ layer.A(name).detach()
    m = layer.lora_magnitude_vector[name].detach()
    return m[:, None] * V / V.norm(dim=1, keepdim=True)


def test_magnitude_starts_at_the_weight_norm_and_the_layer_at_the_base():
    base = build("mlp")
    W = base.fc1.weight.detach().clone()
    model = get_peft_model(base, LoraConfig(r=2, target_modules=["fc1"], use_dora=True))
    layer = model.get_base_model().fc1
    torch.testing.assert_close(layer.lora_magnitude_vector["default"].detach(), W.norm(dim=1))
    x = torch.randn(5, 16)
    torch.testing.assert_close(layer(x), layer.base(x))


def test_linear_output_is_magnitude_times_unit_direction():
    layer = dora("mlp", ["fc1"]).get_base_model().fc1
    x = torch.randn(4, 16)
    expected = x @ adapted_weight(layer).T + layer.base.bias
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)


def test_conv1d_output_uses_the_transposed_weight():
    layer = dora("gpt2", ["c_attn"]).get_base_model().transformer.h[0].attn.c_attn
    assert layer.fan_in_fan_out and layer.unit_weight().shape == (96, 32)
    x = torch.randn(2, 3, 32)
    expected = x @ adapted_weight(layer).T + layer.base.bias
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)


def test_embedding_norm_is_taken_over_the_vocabulary():
    """peft's DoRA on an embedding: one magnitude per embedding dimension, ``||.||`` over the vocabulary."""
    model = dora("llama", ["embed_tokens"])
    layer = model.get_base_model().model.embed_tokens
    W = layer.base.weight.detach()  # (V, d)
    BA = layer.lora_embedding_B["default"] @ layer.lora_embedding_A["default"]  # (d, V)
    V = W + layer.scaling["default"] * BA.T.detach()  # (V, d)
    m = layer.lora_magnitude_vector["default"].detach()
    assert m.shape == (32,)
    ids = torch.tensor([[5, 7, 9]])
    torch.testing.assert_close(layer(ids), (m * V / V.norm(dim=0))[ids], atol=1e-5, rtol=1e-5)


def test_the_norm_gets_no_gradient():
    """Sec. 4.3: ``||W + s B A||_c`` is a constant in the backward pass: the gradients are those with the
    norm held fixed."""
    layer = dora("mlp", ["fc1"]).get_base_model().fc1
    x = torch.randn(6, 16)
    layer(x).sum().backward()
    W, s = layer.unit_weight().detach(), layer.scaling["default"]
    A, B = layer.A("default"), layer.B("default")
    norm = (W + s * B.detach() @ A.detach()).norm(dim=1)  # the detached norm
    m = layer.lora_magnitude_vector["default"].detach().requires_grad_()
    A2, B2 = A.detach().clone().requires_grad_(), B.detach().clone().requires_grad_()
    y = (m / norm) * (x @ W.T + s * (x @ A2.T) @ B2.T)  # (6, 32), bias has no gradient here
    y.sum().backward()
    torch.testing.assert_close(layer.lora_magnitude_vector["default"].grad, m.grad)
    torch.testing.assert_close(A.grad, A2.grad)
    torch.testing.assert_close(B.grad, B2.grad)


@pytest.mark.parametrize(("kind", "targets"), [("llama", ["q_proj", "embed_tokens"]), ("gpt2", ["c_attn"])])
def test_merge_writes_the_adapted_weight_and_unmerge_restores_the_base(kind, targets):
    model = dora(kind, targets)
    before = {
        n: p.detach().clone() for n, p in model.get_base_model().named_parameters() if "base_layer" in n
    }
    inputs = make_inputs(kind)
    expected = model(**inputs).logits
    model.merge_adapter()
    torch.testing.assert_close(model(**inputs).logits, expected, atol=1e-5, rtol=1e-5)
    model.unmerge_adapter()
    for name, p in model.get_base_model().named_parameters():
        if name in before:
            torch.testing.assert_close(p, before[name], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(model(**inputs).logits, expected, atol=1e-5, rtol=1e-5)


def test_merged_weight_is_the_decomposed_weight():
    model = dora("mlp", ["fc1"])
    layer = model.get_base_model().fc1
    expected = adapted_weight(layer)
    model.merge_adapter()
    torch.testing.assert_close(layer.base.weight, expected, atol=1e-6, rtol=1e-5)


def test_mixed_batch_with_dora_and_lora_rows():
    model = get_peft_model(
        build("llama"), LoraConfig(r=2, target_modules=["q_proj", "v_proj"], use_dora=True)
    )
    model.add_adapter("plain", LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    perturb(model, "default", seed=1)
    perturb(model, "plain", seed=2)
    inputs = make_inputs("llama")
    rows = ["default", "plain", BASE_ROW]
    mixed = model(**inputs, adapter_names=rows).logits
    for i, row in enumerate(rows):
        if row == BASE_ROW:
            with model.disable_adapter():
                single = model(**inputs).logits
        else:
            model.set_adapter(row)
            single = model(**inputs).logits
        torch.testing.assert_close(mixed[i], single[i], atol=1e-5, rtol=1e-4)


def test_saved_keys_are_peft_s():
    state = dora("mlp", ["fc1"]).adapter_state_dict("default")
    assert set(state) == {
        "base_model.model.fc1.lora_A.weight",
        "base_model.model.fc1.lora_B.weight",
        "base_model.model.fc1.lora_magnitude_vector",
    }
    assert state["base_model.model.fc1.lora_magnitude_vector"].shape == (32,)


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_dora_with_a_residual_init_is_refused(init):
    with pytest.raises(ConfigError, match="use_dora"):
        LoraConfig(target_modules=["q_proj"], use_dora=True, init_lora_weights=init)
