"""Checkpoints cross between peftkit and the ``peft`` library both ways with identical outputs."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import build, logits, make_inputs
from test_contract import perturb, train_steps

import peftkit

peft = pytest.importorskip("peft")

# (model kind, peftkit/peft config kwargs) - the same fields mean the same thing in both libraries
INTEROP = [
    ("llama", {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}),
    ("llama_cls", {"r": 4, "target_modules": ["q_proj", "v_proj"], "modules_to_save": ["score"]}),
    (
        "bert",
        {"r": 2, "target_modules": ["query", "value"], "modules_to_save": ["classifier"], "use_rslora": True},
    ),
    ("gpt2", {"r": 4, "target_modules": ["c_attn"], "bias": "all"}),
    ("t5", {"r": 2, "target_modules": "all-linear", "rank_pattern": {"wo": 3}, "alpha_pattern": {"wi": 5}}),
    ("llama", {"r": 4, "target_modules": ["embed_tokens", "down_proj"], "layers_to_transform": [0]}),
]


@pytest.mark.parametrize(("kind", "kwargs"), INTEROP, ids=lambda x: x if isinstance(x, str) else None)
def test_peftkit_checkpoint_loads_in_peft(kind, kwargs, tmp_path):
    ours = peftkit.get_peft_model(build(kind), peftkit.LoraConfig(**kwargs))
    train_steps(ours, make_inputs(kind))
    inputs = make_inputs(kind, seed=7)
    expected = logits(ours, inputs)
    ours.save_pretrained(tmp_path)
    theirs = peft.PeftModel.from_pretrained(build(kind), tmp_path).eval()
    torch.testing.assert_close(logits(theirs, inputs), expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(("kind", "kwargs"), INTEROP, ids=lambda x: x if isinstance(x, str) else None)
def test_peft_checkpoint_loads_in_peftkit(kind, kwargs, tmp_path):
    theirs = peft.get_peft_model(build(kind), peft.LoraConfig(init_lora_weights=False, **kwargs))
    train_steps(theirs, make_inputs(kind))
    inputs = make_inputs(kind, seed=7)
    expected = logits(theirs, inputs)
    theirs.save_pretrained(tmp_path)
    ours = peftkit.PeftModel.from_pretrained(build(kind), tmp_path)
    torch.testing.assert_close(logits(ours, inputs), expected, atol=1e-5, rtol=1e-4)


# DoRA, IA3 and LoRA's options: (model kind, config class name, fields) - the same in both libraries
METHODS = [
    ("llama", "LoraConfig", {"r": 4, "target_modules": ["q_proj", "v_proj"], "use_dora": True}),
    ("gpt2", "LoraConfig", {"r": 2, "target_modules": ["c_attn"], "use_dora": True, "fan_in_fan_out": True}),
    ("llama", "LoraConfig", {"r": 2, "target_modules": ["embed_tokens", "o_proj"], "use_dora": True}),
    (
        "bert",
        "LoraConfig",
        {"r": 2, "target_modules": ["query"], "lora_bias": True, "modules_to_save": ["classifier"]},
    ),
    ("llama", "IA3Config", {"task_type": "CAUSAL_LM"}),  # peft's default targets for Llama
    (
        "gpt2",
        "IA3Config",
        {"target_modules": ["c_attn", "mlp.c_proj"], "feedforward_modules": ["mlp.c_proj"]},
    ),
    ("t5", "IA3Config", {"target_modules": ["k", "v", "wo"], "feedforward_modules": ["wo"]}),
    ("bert", "IA3Config", {"modules_to_save": ["classifier"]}),
    (
        "gpt2",
        "LoraConfig",
        {
            "r": 2,
            "target_modules": ["c_attn", "mlp.c_proj"],
            "init_lora_weights": False,
            "fan_in_fan_out": True,
        },
    ),
]
METHOD_IDS = [
    "dora-llama",
    "dora-gpt2",
    "dora-llama-embed",
    "lora-bias-bert",
    "ia3-llama",
    "ia3-gpt2",
    "ia3-t5",
    "ia3-bert",
    "lora-init-false-gpt2",
]
RANDOM_INIT = {"LoraConfig": {"init_lora_weights": False}, "IA3Config": {"init_ia3_weights": False}}


@pytest.mark.parametrize(("kind", "config_name", "kwargs"), METHODS, ids=METHOD_IDS)
def test_method_checkpoint_loads_in_peft(kind, config_name, kwargs, tmp_path):
    ours = peftkit.get_peft_model(build(kind), getattr(peftkit, config_name)(**kwargs))
    train_steps(ours, make_inputs(kind))
    inputs = make_inputs(kind, seed=7)
    expected = logits(ours, inputs)
    ours.save_pretrained(tmp_path)
    theirs = peft.PeftModel.from_pretrained(build(kind), tmp_path).eval()
    torch.testing.assert_close(logits(theirs, inputs), expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(("kind", "config_name", "kwargs"), METHODS, ids=METHOD_IDS)
def test_peft_method_checkpoint_loads_in_peftkit(kind, config_name, kwargs, tmp_path):
    config = getattr(peft, config_name)(**{**RANDOM_INIT[config_name], **kwargs})
    theirs = peft.get_peft_model(build(kind), config)
    train_steps(theirs, make_inputs(kind))
    inputs = make_inputs(kind, seed=7)
    expected = logits(theirs, inputs)
    theirs.save_pretrained(tmp_path)
    ours = peftkit.PeftModel.from_pretrained(build(kind), tmp_path)
    torch.testing.assert_close(logits(ours, inputs), expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_peft_residual_init_saved_without_conversion_loads_exactly(init, tmp_path):
    """peft saves PiSSA/OLoRA adapters as trained, for the *residual* base; loading runs the init again on the
    original base, so the base holds the same residual (peft reloads them so too)."""
    config = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"], "init_lora_weights": init}
    theirs = peft.get_peft_model(build("llama"), peft.LoraConfig(**config))
    train_steps(theirs, make_inputs("llama"))
    inputs = make_inputs("llama", seed=7)
    expected = logits(theirs, inputs)
    theirs.save_pretrained(tmp_path)
    ours = peftkit.PeftModel.from_pretrained(build("llama"), tmp_path)
    torch.testing.assert_close(logits(ours, inputs), expected, atol=1e-5, rtol=1e-4)
    with ours.disable_adapter():  # the rows without the adapter get the original base back
        torch.testing.assert_close(logits(ours, inputs), logits(build("llama"), inputs), atol=1e-5, rtol=1e-4)


def test_peft_randomised_pissa_saved_without_conversion_warns(tmp_path):
    config = peft.LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights="pissa_niter_2")
    peft.get_peft_model(build("llama"), config).save_pretrained(tmp_path)
    with pytest.warns(UserWarning, match="randomised SVD"):
        loaded = peftkit.PeftModel.from_pretrained(build("llama"), tmp_path)
    assert loaded.peft_config["default"].init_lora_weights == "pissa_niter_2"


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_residual_init_saved_as_lora_loads_in_peft(init, tmp_path):
    ours = peftkit.get_peft_model(
        build("llama"), peftkit.LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=init)
    )
    perturb(ours)
    inputs = make_inputs("llama")
    expected = logits(ours, inputs)
    ours.save_pretrained(tmp_path)
    theirs = peft.PeftModel.from_pretrained(build("llama"), tmp_path).eval()
    torch.testing.assert_close(logits(theirs, inputs), expected, atol=1e-5, rtol=1e-4)


def test_unsupported_peft_option_is_refused(tmp_path):
    theirs = peft.get_peft_model(build("llama"), peft.LoraConfig(r=2, target_modules=["q_proj"]))
    theirs.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    config["alora_invocation_tokens"] = [5, 6]  # aLoRA (Greenewald et al. 2025): not in peftkit
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(peftkit.ConfigError, match="alora_invocation_tokens"):
        peftkit.PeftModel.from_pretrained(build("llama"), tmp_path)
