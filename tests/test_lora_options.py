"""LoRA's ``trainable_token_indices`` (chosen embedding rows train) and ``layer_replication`` (a deeper model
of shared-weight layer copies): behaviour, refusals, and checkpoints crossing with peft both ways."""

from __future__ import annotations

import pytest
import torch
from conftest import build, logits, make_inputs
from test_contract import perturb, train_steps
from torch import nn

import peftkit
from peftkit.errors import AdapterError, ConfigError, TargetError

peft = pytest.importorskip("peft")

TOKENS = [3, 7, 11]
LLAMA_QV = ["q_proj", "v_proj"]


def tokens_model(kind: str = "llama", name: str = "default", ids=TOKENS, **kw):
    targets = {"llama": LLAMA_QV, "gpt2": ["c_attn"]}[kind]
    config = peftkit.LoraConfig(target_modules=targets, trainable_token_indices=ids, **kw)
    return peftkit.get_peft_model(build(kind), config, adapter_name=name)


def with_rows(kind: str, rows: dict[int, torch.Tensor]) -> nn.Module:
    """The bare base with input-embedding rows overwritten (a tied output embedding changes with them)."""
    model = build(kind)
    with torch.no_grad():
        for i, value in rows.items():
            model.get_input_embeddings().weight[i] = value
    return model


def delta_rows(model, name: str = "default") -> dict[int, torch.Tensor]:
    layer = model.get_base_model().get_input_embeddings()
    return dict(zip(layer.token_indices[name].tolist(), layer.trainable_tokens_delta[name].detach()))


# ---- trainable_token_indices ----------------------------------------------------------------------------
def test_only_the_chosen_rows_train():
    model = tokens_model()
    before = model.get_input_embeddings().base.weight.detach().clone()
    train_steps(model, make_inputs("llama"))
    ids = torch.arange(before.shape[0])
    after = model.get_input_embeddings()(ids).detach()
    assert (after != before).any(dim=-1).nonzero().flatten().tolist() == TOKENS
    torch.testing.assert_close(model.get_input_embeddings().base.weight, before, atol=0, rtol=0)  # frozen
    torch.testing.assert_close(model.get_input_embeddings().weight, after, atol=0, rtol=0)  # as peft's
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert sum("trainable_tokens_delta" in n for n in trainable) == 1
    assert all("lora_" in n or "trainable_tokens_delta" in n for n in trainable)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_runs_as_the_base_with_those_rows_replaced(kind):
    """GPT-2 ties lm_head to wte: the output embedding follows the rows (as if the tied weight changed)."""
    model = tokens_model(kind)
    perturb(model)
    with torch.no_grad():  # LoRA an identity again: only the rows differ from the base
        for name, p in model.named_parameters():
            if ".lora_B." in name:
                p.zero_()
    expected = logits(with_rows(kind, delta_rows(model)), make_inputs(kind))
    torch.testing.assert_close(logits(model, make_inputs(kind)), expected, atol=1e-5, rtol=1e-5)


def test_tied_output_embedding_follows_and_saves_nothing(tmp_path):
    model = tokens_model("gpt2")
    head = model.get_base_model().get_output_embeddings()
    assert type(head).__name__ == "TiedTokensLayer"
    assert head.base.weight is model.get_base_model().get_input_embeddings().base.weight
    assert not any("lm_head" in k for k in model.adapter_state_dict("default"))


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_merge_unmerge_and_unload(kind):
    model = tokens_model(kind)
    perturb(model)
    inputs = make_inputs(kind)
    expected = logits(model, inputs)
    base_weight = model.get_base_model().get_input_embeddings().base.weight.detach().clone()
    model.merge_adapter()
    torch.testing.assert_close(logits(model, inputs), expected, atol=1e-5, rtol=1e-5)
    model.unmerge_adapter()
    torch.testing.assert_close(
        model.get_base_model().get_input_embeddings().base.weight, base_weight, atol=0, rtol=0
    )
    merged = model.merge_and_unload()
    assert type(merged.get_input_embeddings()) is nn.Embedding
    torch.testing.assert_close(logits(merged, inputs), expected, atol=1e-5, rtol=1e-5)


def test_disable_and_delete_give_the_base_back():
    model = tokens_model()
    perturb(model)
    inputs = make_inputs("llama")
    base = logits(build("llama"), inputs)
    with model.disable_adapter():
        torch.testing.assert_close(logits(model, inputs), base, atol=1e-6, rtol=1e-6)
    model.add_adapter("other", peftkit.LoraConfig(target_modules=LLAMA_QV))
    model.delete_adapter("default")
    assert type(model.get_base_model().get_input_embeddings()) is nn.Embedding
    torch.testing.assert_close(logits(model, inputs), base, atol=1e-6, rtol=1e-6)


def test_per_row_adapters_take_their_own_rows():
    model = tokens_model(name="a", ids=[3, 4, 5])
    model.add_adapter("b", peftkit.LoraConfig(target_modules=LLAMA_QV, trainable_token_indices=[5, 6]))
    perturb(model, "a", seed=1)
    perturb(model, "b", seed=2)
    inputs = make_inputs("llama")
    inputs["input_ids"][:, 1:4] = torch.tensor([3, 5, 6])
    each = {}
    for name in ("a", "b"):
        model.set_adapter(name)
        each[name] = logits(model, inputs)
    mixed = logits(model, inputs, adapter_names=["a", "b", "__base__"])
    torch.testing.assert_close(mixed[0], each["a"][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mixed[1], each["b"][1], atol=1e-5, rtol=1e-5)
    with model.disable_adapter():
        torch.testing.assert_close(mixed[2], logits(model, inputs)[2], atol=1e-5, rtol=1e-5)
    model.set_adapter(["a", "b"])  # both write row 5: refused, as peft
    with pytest.raises(AdapterError, match="Token indices of adapter b"):
        logits(model, inputs)


def test_dict_form_names_the_module():
    model = tokens_model(ids={"embed_tokens": [2, 9]})
    assert delta_rows(model).keys() == {2, 9}


@pytest.mark.parametrize(
    ("ids", "error", "match"),
    [
        ([3, 500], ConfigError, "outside"),
        ([3, 3], ConfigError, "repeat"),
        ([], ConfigError, "non-empty list"),
        (["a"], ConfigError, "trainable_token_indices"),
        ({"nope": [1]}, TargetError, "matches no module"),
    ],
)
def test_bad_token_indices_are_refused_by_name(ids, error, match):
    with pytest.raises(error, match=match):
        tokens_model(ids=ids)


def test_embedding_also_trained_whole_or_by_lora_is_refused():
    with pytest.raises(ConfigError, match="modules_to_save"):
        tokens_model(modules_to_save=["embed_tokens"])
    with pytest.raises(TargetError, match="trainable_token_indices"):
        peftkit.get_peft_model(
            build("llama"),
            peftkit.LoraConfig(target_modules=["embed_tokens"], trainable_token_indices=[1]),
        )


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_tokens_checkpoint_crosses_with_peft(kind, tmp_path):
    targets = {"llama": LLAMA_QV, "gpt2": ["c_attn"]}[kind]
    inputs = make_inputs(kind, seed=7)
    theirs = peft.get_peft_model(
        build(kind), peft.LoraConfig(target_modules=targets, trainable_token_indices=TOKENS)
    )
    train_steps(theirs, make_inputs(kind))
    theirs.save_pretrained(tmp_path / "peft")
    ours = peftkit.PeftModel.from_pretrained(build(kind), tmp_path / "peft")
    torch.testing.assert_close(logits(ours, inputs), logits(theirs, inputs), atol=1e-5, rtol=1e-4)

    ours = tokens_model(kind)
    train_steps(ours, make_inputs(kind))
    ours.save_pretrained(tmp_path / "peftkit")
    theirs = peft.PeftModel.from_pretrained(build(kind), tmp_path / "peftkit")
    torch.testing.assert_close(logits(theirs, inputs), logits(ours, inputs), atol=1e-5, rtol=1e-4)


# ---- layer_replication ----------------------------------------------------------------------------------
def replicated(layer_map=((0, 1), (0, 2), (1, 2)), **kw):
    config = peftkit.LoraConfig(target_modules=["up_proj", "down_proj"], layer_replication=layer_map, **kw)
    return peftkit.get_peft_model(build("llama"), config)


def test_copies_share_base_weights_and_own_their_lora():
    model = replicated()
    layers = model.get_base_model().model.layers
    assert len(layers) == 4 and model.get_base_model().config.num_hidden_layers == 4
    up = [layer.mlp.up_proj for layer in layers]
    assert up[0].base.weight is up[1].base.weight and up[2].base.weight is up[3].base.weight
    assert up[0].base.weight is not up[2].base.weight
    assert len({id(u.lora_A["default"].weight) for u in up}) == 4
    assert [layer.self_attn.layer_idx for layer in layers] == [0, 1, 2, 3]
    model.generate(**make_inputs("llama"), max_new_tokens=3)  # the KV cache has a slot per copy


def test_replication_at_init_is_the_stacked_base():
    """[[0, 2]] on a two-layer model rebuilds the same stack: a fresh adapter gives the base's logits."""
    inputs = make_inputs("llama")
    model = replicated(layer_map=[[0, 2]])
    torch.testing.assert_close(logits(model, inputs), logits(build("llama"), inputs), atol=1e-6, rtol=1e-6)


def test_replicated_adapters_refuse_merging():
    model = replicated()
    for call in (model.merge_adapter, model.merge_and_unload):
        with pytest.raises(AdapterError, match="layer_replication"):
            call()


def test_second_adapter_same_map_reuses_the_copies_and_other_maps_are_refused():
    model = replicated()
    model.add_adapter("same", replicated().peft_config["default"])
    assert len(model.get_base_model().model.layers) == 4
    with pytest.raises(ConfigError, match="already replicated"):
        model.add_adapter("other", peftkit.LoraConfig(target_modules=["up_proj"], layer_replication=[[0, 2]]))
    plain = peftkit.get_peft_model(build("llama"), peftkit.LoraConfig(target_modules=["q_proj"]))
    with pytest.raises(ConfigError, match="already hold adapters"):
        plain.add_adapter("rep", peftkit.LoraConfig(target_modules=["up_proj"], layer_replication=[[0, 2]]))


@pytest.mark.parametrize(
    ("layer_map", "match"),
    [([[0, 3]], "past the model's 2 layers"), ([[1, 1]], "start < end"), ([0, 1], "layer_replication")],
)
def test_bad_layer_maps_are_refused_by_name(layer_map, match):
    with pytest.raises(ConfigError, match=match):
        replicated(layer_map=layer_map)


def test_model_without_a_layer_list_is_refused():
    config = peftkit.LoraConfig(target_modules=["fc1"], layer_replication=[[0, 1]])
    with pytest.raises(TargetError, match="layer_replication"):
        peftkit.get_peft_model(build("mlp"), config)


def test_replication_checkpoint_crosses_with_peft(tmp_path):
    layer_map = [[0, 1], [0, 2], [1, 2]]
    inputs = make_inputs("llama", seed=7)
    kw = {"target_modules": ["up_proj", "down_proj"], "layer_replication": layer_map}
    theirs = peft.get_peft_model(build("llama"), peft.LoraConfig(init_lora_weights=False, **kw))
    theirs.save_pretrained(tmp_path / "peft")
    ours = peftkit.PeftModel.from_pretrained(build("llama"), tmp_path / "peft")
    torch.testing.assert_close(logits(ours, inputs), logits(theirs, inputs), atol=1e-5, rtol=1e-4)

    ours = replicated(layer_map=layer_map)
    train_steps(ours, make_inputs("llama"))
    ours.save_pretrained(tmp_path / "peftkit")
    theirs = peft.PeftModel.from_pretrained(build("llama"), tmp_path / "peftkit")
    torch.testing.assert_close(logits(theirs, inputs), logits(ours, inputs), atol=1e-5, rtol=1e-4)
    again = peftkit.PeftModel.from_pretrained(build("llama"), tmp_path / "peftkit")  # base fingerprint fits
    torch.testing.assert_close(logits(again, inputs), logits(ours, inputs), atol=1e-6, rtol=1e-6)
    assert again.peft_config["default"].layer_replication == layer_map


def test_token_rows_are_not_weighted_and_the_tied_head_reports_them():
    model = tokens_model("gpt2")
    model.add_adapter("b", peftkit.LoraConfig(target_modules=["c_attn"], trainable_token_indices=[5]))
    with pytest.raises(AdapterError, match="trainable_token_indices"):
        model.add_weighted_adapter(["default", "b"], [0.5, 0.5], "w", combination_type="linear")
    assert "w" not in model.peft_config
    head = [s for s in model.get_layer_status() if s.name == "model.lm_head"]
    assert head and head[0].requires_grad == {"b": False, "default": True}
