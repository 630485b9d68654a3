"""Targeting is shared by every method: names, suffixes, regex, all-linear, exclusions, layers."""

from __future__ import annotations

import pytest
from conftest import build

from peftkit import LoraConfig, TargetError, get_peft_model
from peftkit.targeting import layer_index


def targets(kind, **kw):
    return get_peft_model(build(kind), LoraConfig(r=2, **kw)).targets["default"]


def test_list_matches_exact_names_and_suffixes():
    found = targets("llama", target_modules=["q_proj", "model.layers.1.mlp.up_proj"])
    assert found == [
        "model.layers.0.self_attn.q_proj",
        "model.layers.1.self_attn.q_proj",
        "model.layers.1.mlp.up_proj",
    ]


def test_suffix_must_be_a_whole_component():
    with pytest.raises(TargetError):
        targets("llama", target_modules=["proj"])  # 'q_proj' ends with 'proj' but not '.proj'


def test_regex_is_a_full_match():
    assert targets("llama", target_modules=r".*\.0\.self_attn\.(k|v)_proj") == [
        "model.layers.0.self_attn.k_proj",
        "model.layers.0.self_attn.v_proj",
    ]


@pytest.mark.parametrize(
    ("kind", "head"),
    [
        ("llama", "lm_head"),
        ("llama_cls", "score"),
        ("bert", "classifier"),
        ("gpt2", "lm_head"),
        ("t5", "lm_head"),
        ("mlp", "head"),
    ],
)
def test_all_linear_skips_the_output_head(kind, head):
    found = targets(kind, target_modules="all-linear")
    assert found and not any(t.split(".")[-1] == head for t in found)
    if kind == "llama":
        assert len(found) == 2 * 7  # q k v o gate up down per layer
    if kind == "gpt2":
        assert "transformer.h.0.attn.c_attn" in found  # Conv1D counts as linear


def test_exclude_and_layers_to_transform():
    found = targets(
        "llama",
        target_modules="all-linear",
        exclude_modules=["mlp.down_proj", "o_proj"],
        layers_to_transform=1,
    )
    assert all(".layers.1." in t for t in found)
    assert not any(t.endswith(("down_proj", "o_proj")) for t in found) and len(found) == 5


def test_layer_index():
    assert layer_index("model.layers.12.mlp.up_proj") == 12
    assert layer_index("transformer.h.3.attn.c_attn", "h") == 3
    assert layer_index("lm_head") is None


def test_no_match_lists_candidates():
    with pytest.raises(TargetError, match=r"matched no module.*q_proj"):
        targets("llama", target_modules=["query"])
    with pytest.raises(TargetError, match=r"Please specify `target_modules`.*'fc1'"):
        targets("mlp")  # a plain torch model: no architecture default


def test_default_targets_follow_the_architecture():
    """peft's per-architecture tables fill a config without target_modules (and are written into it)."""
    config = LoraConfig(r=2)
    model = get_peft_model(build("llama"), config)
    assert config.target_modules == ["q_proj", "v_proj"]
    assert {t.rsplit(".", 1)[-1] for t in model.targets["default"]} == {"q_proj", "v_proj"}
    assert {t.rsplit(".", 1)[-1] for t in targets("gpt2")} == {"c_attn"}


def test_each_unmatched_entry_is_reported():
    with pytest.warns(UserWarning, match=r"\['qproj'\]"):
        targets("llama", target_modules=["q_proj", "qproj"])


def test_unsupported_module_type_is_named():
    with pytest.raises(TargetError, match="LlamaRMSNorm"):
        targets("llama", target_modules=["input_layernorm"])


def test_adding_a_second_adapter_targets_wrapped_layers():
    model = get_peft_model(build("llama"), LoraConfig(r=2, target_modules=["q_proj"]))
    model.add_adapter("b", LoraConfig(r=3, target_modules=["q_proj", "v_proj"]))
    assert model.targets["b"] == [
        f"model.layers.{i}.self_attn.{m}" for i in (0, 1) for m in ("q_proj", "v_proj")
    ]
