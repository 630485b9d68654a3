"""Full fine-tuning as a method: the same SGD path as plain fine-tuning, tied weights adapted once."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from conftest import build, logits, make_inputs
from test_contract import perturb
from torch import nn

from peftkit import AdapterError, TargetError, get_peft_model
from peftkit.layer import adapter_layers
from peftkit.methods.full import FullConfig

STEPS, LR = 4, 0.1


def sgd_train(model: nn.Module, kind: str) -> None:
    """Plain SGD (no momentum) on a fixed batch; eval mode keeps the steps deterministic."""
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=LR, momentum=0.0)
    inputs = make_inputs(kind)
    for _ in range(STEPS):
        opt.zero_grad()
        logits(model, inputs).float().pow(2).mean().backward()
        opt.step()


def plain_copy(model: nn.Module) -> nn.Module:
    plain = copy.deepcopy(model)
    for p in plain.parameters():
        p.requires_grad_(True)
    return plain


@pytest.mark.parametrize(
    "kind, config",
    [
        ("llama", FullConfig()),
        ("gpt2", FullConfig()),  # tied wte / lm_head
        ("t5", FullConfig()),  # shared / embed_tokens / lm_head tied, relative position bias included
        ("bert", FullConfig(modules_to_save=["classifier"])),
        ("mlp", FullConfig()),
    ],
    ids=["llama", "gpt2", "t5", "bert", "mlp"],
)
def test_sgd_matches_plain_full_fine_tuning(kind, config):
    base = build(kind)
    plain = plain_copy(base)
    model = get_peft_model(base, config)
    sgd_train(model, kind)
    sgd_train(plain, kind)
    inputs = make_inputs(kind, seed=7)
    expected = logits(plain, inputs)
    assert not torch.allclose(expected, logits(build(kind), inputs), atol=1e-3), "training changed nothing"
    torch.testing.assert_close(logits(model, inputs), expected, atol=1e-5, rtol=0)

    merged = model.merge_and_unload()
    assert type(merged) is type(plain)
    assert not list(adapter_layers(merged))
    want = plain.state_dict()
    got = merged.state_dict()
    assert got.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], atol=1e-5, rtol=0, msg=key)
    torch.testing.assert_close(logits(merged, inputs), expected, atol=1e-5, rtol=0)


def test_forward_uses_base_plus_delta():
    model = get_peft_model(build("mlp"), FullConfig(target_modules=["fc1"]))
    perturb(model)
    layer = model.get_base_model().fc1
    D = layer.full_delta["default"]
    x = torch.randn(4, 16)
    expected = x @ (layer.base.weight + D.weight).T + (layer.base.bias + D.bias)  # (4, 32)
    torch.testing.assert_close(layer(x), expected)
    assert set(layer.adapter_state_dict("default")) == {"full_delta.weight", "full_delta.bias"}


def test_tied_embedding_has_one_delta_and_merges_once():
    model = get_peft_model(build("gpt2"), FullConfig())
    wte, head = model.get_base_model().transformer.wte, model.get_base_model().lm_head
    assert head.full_delta["default"].weight is wte.full_delta["default"].weight
    keys = model.adapter_state_dict("default")
    assert "base_model.model.transformer.wte.full_delta.weight" in keys
    assert not any(k.startswith("base_model.model.lm_head.") for k in keys)
    perturb(model)
    W0 = wte.base.weight.detach().clone()
    model.merge_adapter()
    torch.testing.assert_close(wte.base.weight, W0 + wte.full_delta["default"].weight)
    assert head.base.weight is wte.base.weight
    model.unmerge_adapter()
    torch.testing.assert_close(wte.base.weight, W0)


def test_targeting_one_side_of_a_tie_is_an_error():
    with pytest.raises(TargetError, match="tied"):
        get_peft_model(build("gpt2"), FullConfig(target_modules=["lm_head"]))


def test_explicit_target_adapts_every_parameter_below_it():
    model = get_peft_model(build("llama"), FullConfig(target_modules=["mlp", "gate_proj"]))
    assert model.targets["default"] == ["model.layers.0.mlp", "model.layers.1.mlp"]  # outermost only
    keys = model.get_base_model().model.layers[0].mlp.adapter_state_dict("default")
    assert set(keys) == {f"full_delta.{p}_proj.weight" for p in ("gate", "up", "down")}


class Patches(nn.Module):
    """A module with parameters of its own and a child holding more (like ViT's embeddings)."""

    def __init__(self):
        super().__init__()
        self.cls = nn.Parameter(torch.randn(1, 1, 8))
        self.proj = nn.Linear(4, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.cls.expand(x.shape[0], 1, 8), self.proj(x)], dim=1)  # (B, 1 + T, 8)


def test_default_targets_the_outermost_module_with_own_parameters():
    torch.manual_seed(0)
    net = nn.Sequential(Patches(), nn.LayerNorm(8))
    model = get_peft_model(net, FullConfig())
    assert model.targets["default"] == ["0", "1"]
    layer = model.get_base_model()[0]
    assert set(layer.adapter_state_dict("default")) == {
        "full_delta.cls",
        "full_delta.proj.weight",
        "full_delta.proj.bias",
    }
    perturb(model)
    x = torch.randn(2, 3, 4)
    D = layer.full_delta["default"]
    W, b = layer.base.proj.weight + D.proj.weight, layer.base.proj.bias + D.proj.bias  # (8, 4), (8,)
    expected = torch.cat([(layer.base.cls + D.cls).expand(2, 1, 8), x @ W.T + b], dim=1)  # (2, 4, 8)
    torch.testing.assert_close(layer(x), expected)


def test_modules_to_save_are_not_also_wrapped():
    model = get_peft_model(build("bert"), FullConfig(modules_to_save=["classifier"]))
    assert not any(t.startswith("classifier") for t in model.targets["default"])
    assert "bert.pooler.dense" in model.targets["default"]


def test_mixed_batch_rejects_a_table_shared_by_all_rows():
    model = get_peft_model(build("t5"), FullConfig())
    with pytest.raises(AdapterError, match="exclude_modules"):
        logits(model, make_inputs("t5"), adapter_names=["default", "__base__", "default"])


def test_saved_config_names_the_method(tmp_path):
    model = get_peft_model(build("mlp"), FullConfig(target_modules=["fc2"]))
    model.save_pretrained(tmp_path)
    data = json.loads((tmp_path / "adapter_config.json").read_text())
    assert data["peftkit_method"] == "full" and data["peft_type"] is None
