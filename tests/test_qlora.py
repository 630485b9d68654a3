"""QLoRA: a 4-bit NF4 base (peftkit's own quantize or transformers' BitsAndBytesConfig) with LoRA or
AdaLoRA on top; storage in bits per parameter; merging into a dequantised full-precision model."""

from __future__ import annotations

import sys
import warnings

import pytest
import torch
import transformers
from conftest import make_inputs
from torch import nn

import peftkit
from peftkit.quantization import (
    dequantized_weight,
    quant_stats,
    quantize_model,
    quantized_layers,
)

bnb = pytest.importorskip("bitsandbytes")


def tiny_llama() -> nn.Module:
    """Widths that are multiples of NF4's block of 64 (bitsandbytes' CPU kernels need that)."""
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=96,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=0,
    )
    return transformers.LlamaForCausalLM(cfg).eval()


def out(model, inputs):
    return model(**inputs).logits


def perturb(model, seed=3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in model.layers():
            for p in layer.adapter_parameters("default"):
                p.add_(torch.randn(p.shape, generator=g) * 0.1)


def test_quantize_model_stores_linears_in_nf4_and_keeps_the_head():
    model = tiny_llama()
    inputs = make_inputs("llama")
    expected = out(model, inputs)
    quantize_model(model)
    names = [n for n, _ in quantized_layers(model)]
    assert len(names) == 2 * 7 and "lm_head" not in names
    layer = model.model.layers[0].mlp.up_proj
    assert isinstance(layer, bnb.nn.Linear4bit) and layer.weight.dtype == torch.uint8
    assert layer.weight.quant_type == "nf4" and layer.weight.quant_state.nested  # double quantisation
    original = tiny_llama().model.layers[0].mlp.up_proj.weight
    error = (dequantized_weight(layer) - original).norm() / original.norm()
    assert 0 < error < 0.1, f"NF4 weight error {error:.3f}"  # about 0.09 for Gaussian weights
    rel = (out(model, inputs) - expected).norm() / expected.norm()
    assert 0 < rel < 0.2, f"4-bit logits differ from full precision by {rel:.3f}"


def test_bits_per_parameter_approaches_4_127():
    model = nn.Sequential(nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 8))
    quantize_model(model)  # the last Linear is the output head: kept
    stats = quant_stats(model)
    assert stats.layers == 1 and stats.quantized_params == 1024 * 1024
    # 4 + 8/64 + 32/(64*256) = 4.1270 (+ one fp32 offset per layer)
    assert stats.bits_per_parameter == pytest.approx(4 + 8 / 64 + 32 / (64 * 256), abs=1e-4)
    assert stats.other_params == 1024 + 1024 * 8 + 8  # bias of the 4-bit layer and the head
    assert "4.127 bits/param" in str(stats)


def test_lora_on_a_4bit_base_trains_only_the_adapter_and_round_trips(tmp_path):
    model = peftkit.get_peft_model(
        quantize_model(tiny_llama()), peftkit.LoraConfig(r=4, target_modules="all-linear")
    )
    full = peftkit.get_peft_model(tiny_llama(), peftkit.LoraConfig(r=4, target_modules="all-linear"))
    assert model.parameter_report().total == full.parameter_report().total  # 4-bit weights count as weights
    packed = {n: m.weight.data.clone() for n, m in quantized_layers(model)}
    inputs = make_inputs("llama")
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    losses = []
    for _ in range(5):
        loss = out(model, inputs).float().pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    model.eval()
    assert losses[-1] < losses[0]
    assert all(torch.equal(m.weight.data, packed[n]) for n, m in quantized_layers(model)), (
        "4-bit base changed"
    )
    expected = out(model, inputs)
    model.save_pretrained(tmp_path)
    again = peftkit.PeftModel.from_pretrained(quantize_model(tiny_llama()), tmp_path)
    torch.testing.assert_close(out(again, inputs), expected)
    full = peftkit.PeftModel.from_pretrained(tiny_llama(), tmp_path)  # a plain LoRA adapter: fp base too
    assert (out(full, inputs) - expected).norm() / expected.norm() < 0.2  # NF4 error, as above


def test_merge_writes_a_dequantised_full_precision_model():
    model = peftkit.get_peft_model(
        quantize_model(tiny_llama()), peftkit.LoraConfig(r=4, target_modules=["q_proj", "v_proj"])
    )
    perturb(model)
    inputs = make_inputs("llama")
    expected = out(model, inputs)
    with pytest.warns(UserWarning, match="dequantised to full precision"):
        merged = model.merge_and_unload()
    assert not quantized_layers(merged)
    assert all(p.dtype == torch.float32 for p in merged.parameters())
    assert type(merged.model.layers[0].mlp.up_proj) is nn.Linear  # held no adapter: dequantised too
    torch.testing.assert_close(out(merged, inputs), expected, atol=2e-2, rtol=0)  # bf16 vs fp32 matmuls


def test_adalora_on_a_4bit_base():
    config = peftkit.AdaLoraConfig(init_r=4, target_r=2, target_modules="all-linear", tfinal=1)
    model = peftkit.get_peft_model(quantize_model(tiny_llama()), config)
    inputs = make_inputs("llama")
    model.train()
    model.before_training(4)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for step in range(4):
        (out(model, inputs).float().pow(2).mean() + model.regularization_loss()).backward()
        opt.step()
        model.after_optimizer_step(step)
        opt.zero_grad()
    pattern = model.peft_config["default"].rank_pattern
    assert sum(sum(v) for v in pattern.values()) == 2 * 14


def test_transformers_bitsandbytes_model_takes_lora(tmp_path):
    tiny_llama().save_pretrained(tmp_path / "base")
    q = transformers.BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )
    base = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base", quantization_config=q)
    assert len(quantized_layers(base)) == 14
    model = peftkit.get_peft_model(base, peftkit.LoraConfig(r=4, target_modules="all-linear"))
    perturb(model)
    inputs = make_inputs("llama")
    expected = out(model, inputs)
    model.save_pretrained(tmp_path / "adapter")
    ours = peftkit.PeftModel.from_pretrained(quantize_model(tiny_llama()), tmp_path / "adapter")
    torch.testing.assert_close(out(ours, inputs), expected, atol=1e-2, rtol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        merged = model.merge_and_unload()
    assert getattr(merged.config, "quantization_config", None) is None
    merged.save_pretrained(tmp_path / "merged")
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    torch.testing.assert_close(out(reloaded, inputs), out(merged, inputs))


def test_load_model_quantize_option(tmp_path):
    from tiny_tokenizer import tiny_tokenizer

    from peftkit.models import load_model

    tiny_llama().save_pretrained(tmp_path)
    tiny_tokenizer().save_pretrained(tmp_path)
    model, _ = load_model(str(tmp_path), quantize="nf4")
    assert len(quantized_layers(model)) == 14
    with pytest.raises(ValueError, match="nf4"):
        load_model(str(tmp_path), quantize="int3")


def test_without_bitsandbytes_the_error_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import now fails
    with pytest.raises(ImportError, match=r"pip install 'peftkit\[quant\]'"):
        quantize_model(tiny_llama())


def test_merging_on_a_full_precision_base_does_not_dequantise():
    model = peftkit.get_peft_model(tiny_llama(), peftkit.LoraConfig(r=4, target_modules=["q_proj"]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.merge_and_unload()


def test_cli_merge_of_a_qlora_adapter_says_it_is_dequantised(tmp_path):
    import subprocess

    from tiny_tokenizer import tiny_tokenizer

    tiny_llama().save_pretrained(tmp_path / "base")
    tiny_tokenizer().save_pretrained(tmp_path / "base")
    model = peftkit.get_peft_model(
        quantize_model(tiny_llama()), peftkit.LoraConfig(r=4, target_modules=["q_proj"])
    )
    perturb(model)
    model.save_pretrained(tmp_path / "adapter")
    args = ["merge", "--model", str(tmp_path / "base"), "--adapter", str(tmp_path / "adapter")]
    args += ["--quantize", "nf4", "--out", str(tmp_path / "merged")]
    done = subprocess.run(
        [sys.executable, "-m", "peftkit", *args], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert "written dequantised, in full precision (float32)" in done.stdout
    merged = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert not quantized_layers(merged) and getattr(merged.config, "quantization_config", None) is None


@pytest.mark.parametrize(
    "config",
    [
        pytest.param(peftkit.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], use_dora=True), id="dora"),
        pytest.param(peftkit.IA3Config(), id="ia3"),
    ],
)
def test_dora_and_ia3_on_a_4bit_base(config):
    """DoRA's norms read the dequantised weight; IA3 rescales around the 4-bit layer; both merge into a
    dequantised model."""
    model = peftkit.get_peft_model(quantize_model(tiny_llama()), config)
    inputs = make_inputs("llama")
    with model.disable_adapter():
        base_out = out(model, inputs)
    torch.testing.assert_close(out(model, inputs), base_out, atol=1e-4, rtol=1e-4)  # identity at init
    packed = {n: m.weight.data.clone() for n, m in quantized_layers(model)}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(3):
        out(model, inputs).float().pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    assert all(torch.equal(m.weight.data, packed[n]) for n, m in quantized_layers(model))
    expected = out(model, inputs)
    assert not torch.allclose(expected, base_out, atol=1e-3)
    with pytest.warns(UserWarning, match="dequantised to full precision"):
        merged = model.merge_and_unload()
    assert not quantized_layers(merged)
    torch.testing.assert_close(out(merged, inputs), expected, atol=2e-2, rtol=0)
