"""Method-specific behaviour peft defines and its tests check (``test_custom_models.py``,
``test_initialization.py``, ``test_adalora.py``-style checks), on tiny models: DoRA, IA3, AdaLoRA's
training hooks, LoRA's ``lora_bias`` / ``fan_in_fan_out`` / ``bias`` / embedding targets."""

from __future__ import annotations

import re

import pytest
import torch
from safetensors.torch import load_file

from .support import MLP, adapter_params, base_model, inputs_for, output, perturb, wrapped_layers

X = inputs_for("mlp")


# ---- DoRA (Liu et al. 2024) --------------------------------------------------------------------------------
def dora_mlp(lib):
    torch.manual_seed(0)
    return lib.get_peft_model(MLP().eval(), lib.LoraConfig(target_modules=["lin0"], use_dora=True)).eval()


def test_dora_magnitude_is_the_weight_norm_at_init(lib):
    model = dora_mlp(lib)
    (magnitude,) = [p for n, p in adapter_params(model).items() if "lora_magnitude_vector" in n]
    weight = model.get_base_model().lin0.base_layer.weight
    torch.testing.assert_close(magnitude.detach().view(-1), weight.detach().norm(p=2, dim=1))


def test_dora_identity_at_init(lib):
    torch.manual_seed(0)
    base = MLP().eval()
    expected = base(**X)
    model = lib.get_peft_model(base, lib.LoraConfig(target_modules=["lin0", "lin1"], use_dora=True)).eval()
    torch.testing.assert_close(model(**X), expected)


def test_dora_output_is_magnitude_times_normalised_weight(lib):
    """``W' = m * (W0 + s B A) / ||W0 + s B A||_row``: checked against the layer's output."""
    model = dora_mlp(lib)
    perturb(model)
    params = adapter_params(model)
    a = next(p for n, p in params.items() if ".lora_A." in n).detach()
    b = next(p for n, p in params.items() if ".lora_B." in n).detach()
    m = next(p for n, p in params.items() if "lora_magnitude_vector" in n).detach().view(-1)
    base = model.get_base_model().lin0.base_layer
    scale = model.peft_config["default"].lora_alpha / model.peft_config["default"].r
    w = base.weight.detach() + scale * b @ a  # (out, in)
    expected_weight = m[:, None] * w / w.norm(p=2, dim=1, keepdim=True)
    x = torch.randn(4, 10)
    (layer,) = wrapped_layers(model).values()
    with torch.no_grad():
        torch.testing.assert_close(layer(x), x @ expected_weight.T + base.bias, atol=1e-5, rtol=1e-5)


def test_dora_saved_keys(lib, tmp_path):
    dora_mlp(lib).save_pretrained(tmp_path)
    keys = set(load_file(tmp_path / "adapter_model.safetensors"))
    assert keys == {
        "base_model.model.lin0.lora_A.weight",
        "base_model.model.lin0.lora_B.weight",
        "base_model.model.lin0.lora_magnitude_vector",
    }


@pytest.mark.parametrize("safe_merge", [False, True])
def test_gpt2_dora_merge_and_unload(lib, safe_merge):
    model = lib.get_peft_model(
        base_model("gpt2"), lib.LoraConfig(task_type="CAUSAL_LM", target_modules=["c_attn"], use_dora=True)
    )
    perturb(model)
    x = inputs_for("gpt2")
    expected = output(model.eval(), x)
    merged = model.merge_and_unload(safe_merge=safe_merge)
    torch.testing.assert_close(output(merged, x), expected, atol=1e-4, rtol=1e-4)


# ---- IA3 (Liu et al. 2022) ---------------------------------------------------------------------------------
def ia3_lin0(lib, feedforward: bool):
    torch.manual_seed(0)
    config = lib.IA3Config(target_modules=["lin0"], feedforward_modules=["lin0"] if feedforward else [])
    return lib.get_peft_model(MLP().eval(), config).eval()


FEEDFORWARD = [pytest.param(False, id="attention"), pytest.param(True, id="feedforward")]


@pytest.mark.parametrize("feedforward", FEEDFORWARD)
def test_ia3_vector_is_ones_at_init(lib, feedforward):
    model = ia3_lin0(lib, feedforward)
    (vector,) = adapter_params(model).values()
    assert torch.equal(vector.detach(), torch.ones_like(vector))
    with model.disable_adapter():
        expected = model(**X)
    torch.testing.assert_close(model(**X), expected)


@pytest.mark.parametrize("feedforward", FEEDFORWARD)
def test_ia3_rescales_activations(lib, feedforward):
    """Keys/values: the layer's output times l; feed-forward layers: the layer's input times l."""
    model = ia3_lin0(lib, feedforward)
    (vector,) = adapter_params(model).values()
    with torch.no_grad():
        vector.copy_(torch.rand_like(vector) + 0.5)
    layer = model.get_base_model().lin0
    base = layer.base_layer
    x = torch.randn(4, 10)
    scale = vector.detach().view(-1)
    expected = base(x * scale) if feedforward else base(x) * scale
    with torch.no_grad():
        torch.testing.assert_close(layer(x), expected, atol=1e-6, rtol=1e-5)


def test_ia3_parameter_names(lib):
    model = ia3_lin0(lib, feedforward=True)
    assert set(adapter_params(model)) == {"base_model.model.lin0.ia3_l.default"}


@pytest.mark.parametrize("feedforward", FEEDFORWARD)
def test_ia3_merge_and_unload(lib, feedforward):
    model = ia3_lin0(lib, feedforward)
    perturb(model)
    expected = model(**X)
    merged = model.merge_and_unload()
    torch.testing.assert_close(merged(**X), expected, atol=1e-5, rtol=1e-5)


# ---- AdaLoRA (Zhang et al. 2023) ---------------------------------------------------------------------------
def adalora_llama(lib, **kw):
    config = lib.AdaLoraConfig(
        target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM", init_r=6, target_r=2, **kw
    )
    base = base_model("llama")
    torch.manual_seed(1)  # the same adapter weights for every call
    model = lib.get_peft_model(base, config)
    perturb(model)
    return model


def orthogonality_penalty(model) -> torch.Tensor:
    """AdaLoRA's regulariser (Zhang et al. 2023, eq. 4): mean of ||P P^T - I||_F and ||Q^T Q - I||_F."""
    terms = []
    for name, p in adapter_params(model).items():
        if ".lora_A." in name or ".lora_B." in name:
            cov = p @ p.T if ".lora_A." in name else p.T @ p
            terms.append(torch.norm(cov - torch.eye(cov.shape[0]), p="fro"))
    return torch.stack(terms).mean()


def test_adalora_forward_adds_orthogonality_penalty(lib):
    x = {**inputs_for("llama"), "labels": inputs_for("llama")["input_ids"]}
    plain = adalora_llama(lib, total_step=10, orth_reg_weight=0.0).eval()
    penalised = adalora_llama(lib, total_step=10, orth_reg_weight=0.5).eval()
    difference = penalised(**x).loss - plain(**x).loss
    torch.testing.assert_close(
        difference, 0.5 * orthogonality_penalty(penalised).detach(), atol=1e-4, rtol=1e-4
    )
    assert difference > 1e-3


def test_adalora_update_and_allocate_reaches_target_rank(lib):
    x = {**inputs_for("llama"), "labels": inputs_for("llama")["input_ids"]}
    total = 6
    model = adalora_llama(lib, total_step=total, tinit=1, tfinal=2, deltaT=1).train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    for step in range(total):
        model(**x).loss.backward()
        optimizer.step()
        model.base_model.update_and_allocate(step)
        optimizer.zero_grad()
    kept = sum(int((p != 0).sum()) for n, p in adapter_params(model).items() if ".lora_E." in n)
    assert kept == 2 * 4  # target_r per adapted layer, on average: 4 layers (q, v in 2 blocks)
    assert model.peft_config["default"].rank_pattern  # the final allocation is recorded in the config


def test_adalora_refuses_a_second_trainable_adapter(lib):
    model = adalora_llama(lib, total_step=1)
    config = lib.AdaLoraConfig(target_modules=["q_proj"], task_type="CAUSAL_LM", total_step=1)
    with pytest.raises(ValueError, match="supports only 1 trainable adapter"):
        model.add_adapter("second", config)


# ---- LoRA options ------------------------------------------------------------------------------------------
def test_lora_bias_trains_a_bias_on_lora_b(lib):
    torch.manual_seed(0)
    base = MLP().eval()
    expected = base(**X)
    model = lib.get_peft_model(
        base, lib.LoraConfig(target_modules=["lin0", "lin1"], lora_bias=True, lora_alpha=32)
    ).eval()
    torch.testing.assert_close(model(**X), expected)  # the bias starts at zero
    biases = {n for n in adapter_params(model) if ".lora_B." in n and n.endswith(".bias")}
    assert len(biases) == 2
    perturb(model)
    perturbed = model(**X)
    merged = model.merge_and_unload()
    torch.testing.assert_close(merged(**X), perturbed, atol=1e-5, rtol=1e-5)


def test_lora_bias_saved(lib, tmp_path):
    model = lib.get_peft_model(base_model("mlp"), lib.LoraConfig(target_modules=["lin0"], lora_bias=True))
    perturb(model)
    model.save_pretrained(tmp_path)
    assert "base_model.model.lin0.lora_B.bias" in load_file(tmp_path / "adapter_model.safetensors")
    loaded = lib.PeftModel.from_pretrained(base_model("mlp"), tmp_path)
    torch.testing.assert_close(loaded.eval()(**X), model.eval()(**X))


def test_fan_in_fan_out_false_on_conv1d_warns_and_corrects(lib):
    with pytest.warns(UserWarning, match="fan_in_fan_out is set to False but the target module is `Conv1D`"):
        model = lib.get_peft_model(base_model("gpt2"), lib.LoraConfig(target_modules=["c_attn"]))
    assert model.peft_config["default"].fan_in_fan_out is True


def test_fan_in_fan_out_true_on_gpt2_merges(lib):
    config = lib.LoraConfig(target_modules=["c_attn"], fan_in_fan_out=True, task_type="CAUSAL_LM")
    model = lib.get_peft_model(base_model("gpt2"), config)
    perturb(model)
    x = inputs_for("gpt2")
    expected = output(model.eval(), x)
    torch.testing.assert_close(output(model.merge_and_unload(), x), expected, atol=1e-5, rtol=1e-5)


def test_fan_in_fan_out_true_on_linear_warns_and_corrects(lib):
    with pytest.warns(
        UserWarning, match="fan_in_fan_out is set to True but the target module is `torch.nn.Linear`"
    ):
        model = lib.get_peft_model(MLP(), lib.LoraConfig(target_modules=["lin0"], fan_in_fan_out=True))
    assert model.peft_config["default"].fan_in_fan_out is False


BIASES = [
    pytest.param("all", {"lin0.bias", "lin1.bias"}, id="all"),
    pytest.param("lora_only", {"lin0.bias"}, id="lora_only"),
    pytest.param("none", set(), id="none"),
]


@pytest.mark.parametrize(("bias", "trained"), BIASES)
def test_lora_bias_option_trains_biases(lib, bias, trained):
    model = lib.get_peft_model(MLP(), lib.LoraConfig(target_modules=["lin0"], bias=bias))
    names = {n for n, p in model.named_parameters() if p.requires_grad and n.endswith("bias")}
    assert {re.sub(r"^.*?(lin[01]\.)", r"\1", n).replace(".base_layer", "") for n in names} == trained


def test_lora_on_embedding(lib, tmp_path):
    model = lib.get_peft_model(base_model("llama"), lib.LoraConfig(target_modules=["embed_tokens"], r=4))
    assert {n.rsplit(".", 2)[-2] for n in adapter_params(model)} >= {"lora_embedding_A", "lora_embedding_B"}
    perturb(model)
    x = inputs_for("llama")
    expected = output(model.eval(), x)
    model.save_pretrained(tmp_path)
    torch.testing.assert_close(
        output(lib.PeftModel.from_pretrained(base_model("llama"), tmp_path), x), expected
    )
    torch.testing.assert_close(output(model.merge_and_unload(), x), expected, atol=1e-5, rtol=1e-5)
