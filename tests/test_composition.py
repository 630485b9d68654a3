"""Weighted merging of LoRA adapters: exact maths for linear, cat and svd, and the errors."""

from __future__ import annotations

import pytest
import torch
from conftest import build, logits, make_inputs

from peftkit import AdapterError, ConfigError, LoraConfig, PeftModel, get_peft_model
from peftkit.composition import add_weighted_adapter

TARGETS = ["q_proj", "v_proj", "embed_tokens"]


def two_loras(r2: int = 4, alpha2: float = 8, targets2=TARGETS):
    model = get_peft_model(build("llama"), LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS), "a")
    model.add_adapter("b", LoraConfig(r=r2, lora_alpha=alpha2, target_modules=targets2))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, layer in model.layers():
            for name in ("a", "b"):
                for p in layer.adapter_parameters(name):
                    p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model


def deltas(model, name):
    return {path: layer.delta_weight(name) for path, layer in model.layers() if name in layer.adapter_names()}


def test_cat_is_the_weighted_sum_of_deltas_with_negative_weights():
    model = two_loras(r2=2, alpha2=5)
    add_weighted_adapter(model, ["a", "b"], [0.7, -1.3], "m", combination="cat")
    da, db, dm = deltas(model, "a"), deltas(model, "b"), deltas(model, "m")
    for path in dm:
        torch.testing.assert_close(dm[path], 0.7 * da[path] - 1.3 * db[path], atol=1e-5, rtol=1e-5)
    layer = dict(model.layers())["model.layers.0.self_attn.q_proj"]
    assert layer.lora_A["m"].weight.shape[0] == 6  # ranks add


def test_cat_of_one_adapter_runs_like_it_and_is_saved_loadable(tmp_path):
    model = two_loras()
    add_weighted_adapter(model, ["a", "b"], [1.0, 0.0], "m", combination="cat")
    inputs = make_inputs("llama")
    model.set_adapter("a")
    expected = logits(model, inputs)
    model.set_adapter("m")
    torch.testing.assert_close(logits(model, inputs), expected, atol=1e-5, rtol=1e-4)
    model.save_pretrained(tmp_path, adapter_names=["m"])
    loaded = PeftModel.from_pretrained(build("llama"), tmp_path / "m")
    torch.testing.assert_close(logits(loaded, inputs), expected, atol=1e-5, rtol=1e-4)


def test_linear_weights_a_and_b_each():
    model = two_loras(alpha2=16)  # different scales are folded into the factors
    w = [0.5, -0.25]
    add_weighted_adapter(model, ["a", "b"], w, "m", combination="linear")
    for _path, layer in model.layers():
        if not hasattr(layer, "lora_A"):
            continue
        sa, sb = layer.scaling["a"], layer.scaling["b"]
        A = w[0] * sa**0.5 * layer.lora_A["a"].weight + w[1] * sb**0.5 * layer.lora_A["b"].weight
        B = w[0] * sa**0.5 * layer.lora_B["a"].weight + w[1] * sb**0.5 * layer.lora_B["b"].weight
        torch.testing.assert_close(layer.delta_weight("m"), B @ A, atol=1e-5, rtol=1e-5)
        assert layer.scaling["m"] == 1.0


def test_linear_with_one_weight_one_equals_the_adapter():
    model = two_loras()
    add_weighted_adapter(model, ["a", "b"], [1.0, 0.0], "m")
    da, dm = deltas(model, "a"), deltas(model, "m")
    for path in dm:
        torch.testing.assert_close(dm[path], da[path], atol=1e-5, rtol=1e-5)


def test_svd_is_exact_at_full_rank_and_optimal_when_truncated():
    model = two_loras()
    w = [0.6, 0.9]
    add_weighted_adapter(model, ["a", "b"], w, "full", combination="svd", svd_rank=8)
    add_weighted_adapter(model, ["a", "b"], w, "low", combination="svd", svd_rank=3)
    da, db = deltas(model, "a"), deltas(model, "b")
    full, low = deltas(model, "full"), deltas(model, "low")
    for path in full:
        exact = w[0] * da[path] + w[1] * db[path]
        torch.testing.assert_close(full[path], exact, atol=1e-4, rtol=1e-4)
        S = torch.linalg.svdvals(exact)
        best = S[3:].pow(2).sum().sqrt()  # Eckart-Young: the smallest possible rank-3 error
        assert torch.linalg.matrix_rank(low[path], atol=1e-4) <= 3
        torch.testing.assert_close(torch.linalg.norm(low[path] - exact), best, atol=1e-4, rtol=1e-4)


def test_cat_and_svd_treat_a_missing_module_as_zero_linear_refuses():
    model = two_loras(targets2=["q_proj"])
    add_weighted_adapter(model, ["a", "b"], [1.0, 2.0], "m", combination="cat")
    da, db, dm = deltas(model, "a"), deltas(model, "b"), deltas(model, "m")
    for path in dm:
        expected = da[path] + (2.0 * db[path] if path in db else 0)
        torch.testing.assert_close(dm[path], expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(AdapterError, match="same modules"):
        add_weighted_adapter(model, ["a", "b"], [1.0, 1.0], "lin")


def test_errors_name_the_problem():
    model = two_loras(r2=2)
    with pytest.raises(AdapterError, match="equal ranks"):
        add_weighted_adapter(model, ["a", "b"], [1.0, 1.0], "m")
    with pytest.raises(ConfigError, match="weights"):
        add_weighted_adapter(model, ["a", "b"], [1.0], "m", combination="cat")
    with pytest.raises(ConfigError, match="svd_rank"):
        add_weighted_adapter(model, ["a", "b"], [1.0, 1.0], "m", combination="svd")
    with pytest.raises(ConfigError, match="combination"):
        add_weighted_adapter(model, ["a", "b"], [1.0, 1.0], "m", combination="ties")
    with pytest.raises(AdapterError, match="unknown adapter"):
        add_weighted_adapter(model, ["a", "zzz"], [1.0, 1.0], "m", combination="cat")


# --- LoRAHub ------------------------------------------------------------------------------------

nevergrad = pytest.importorskip("nevergrad")


def hub_setup():
    """Three random LoRAs and few-shot targets that adapter 'a' predicts (so composing can help)."""
    model = two_loras()
    model.add_adapter("c", LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS))
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for _, layer in model.layers():
            for p in layer.adapter_parameters("c"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    ids = torch.randint(3, 96, (4, 8), generator=g)
    model.set_adapter("a")
    with torch.no_grad():
        teacher = model(input_ids=ids).logits.argmax(-1)  # (4, 8)
    labels = torch.full_like(ids, -100)
    labels[:, 1:] = teacher[:, :-1]
    return model, [{"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}]


def test_lorahub_finds_better_weights_within_bounds_and_is_deterministic():
    from peftkit.composition.lorahub import LoraHubConfig, few_shot_loss, lorahub_search

    config = LoraHubConfig(budget=25, seed=1)
    model, batches = hub_setup()
    first = lorahub_search(model, ["a", "b", "c"], batches, config, progress=False)
    assert len(first.history) == 25 and len(first.weights) == 3
    assert all(-1.5 <= w <= 1.5 for h in first.history for w in h["weights"])
    # the adapter left in the model holds the chosen weights
    assert few_shot_loss(model, batches) == pytest.approx(first.loss)
    write_zero = LoraHubConfig(budget=1, seed=1)  # budget 1: only the starting point, w = 0
    model0, _ = hub_setup()
    at_zero = lorahub_search(model0, ["a", "b", "c"], batches, write_zero, progress=False)
    assert at_zero.weights == [0.0, 0.0, 0.0]
    assert first.objective < at_zero.objective
    again, _ = hub_setup()
    second = lorahub_search(again, ["a", "b", "c"], batches, config, progress=False)
    assert second.weights == first.weights and second.history == first.history


def test_lorahub_config_errors():
    from peftkit.composition.lorahub import LoraHubConfig

    with pytest.raises(ConfigError, match="lower/upper"):
        LoraHubConfig(lower=0.5)
    with pytest.raises(ConfigError, match="budget"):
        LoraHubConfig(budget=0)
    with pytest.raises(ConfigError, match="combination"):
        LoraHubConfig(combination="svd")


def test_few_shot_batches_score_the_output_tokens_only():
    from tiny_tokenizer import tiny_tokenizer

    from peftkit.composition.lorahub import few_shot_batches

    tok = tiny_tokenizer()
    records = [{"input": "the cat", "output": "sat on the mat"}, {"input": "a dog", "output": "hello"}]
    (batch,) = few_shot_batches(tok, records, batch_size=8)
    prompt = len(tok("the cat\n")["input_ids"])
    assert (batch["labels"][0, :prompt] == -100).all()
    assert (batch["labels"][0, prompt:] != -100).sum() == len(
        tok("sat on the mat", add_special_tokens=False)["input_ids"]
    ) + 1
    with pytest.raises(ValueError, match="no value for column 'output'"):
        few_shot_batches(tok, [{"input": "x"}])
