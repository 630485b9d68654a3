"""Checkpoints cross between peftkit and the ``peft`` library both ways with identical outputs."""

from __future__ import annotations

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


def test_pissa_saved_as_lora_loads_in_peft(tmp_path):
    ours = peftkit.get_peft_model(
        build("llama"), peftkit.LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights="pissa")
    )
    perturb(ours)
    inputs = make_inputs("llama")
    expected = logits(ours, inputs)
    ours.save_pretrained(tmp_path)
    theirs = peft.PeftModel.from_pretrained(build("llama"), tmp_path).eval()
    torch.testing.assert_close(logits(theirs, inputs), expected, atol=1e-5, rtol=1e-4)


def test_unsupported_peft_option_is_refused(tmp_path):
    theirs = peft.get_peft_model(
        build("llama"), peft.LoraConfig(r=2, target_modules=["q_proj"], use_dora=True)
    )
    theirs.save_pretrained(tmp_path)
    with pytest.raises(peftkit.ConfigError, match="use_dora"):
        peftkit.PeftModel.from_pretrained(build("llama"), tmp_path)
