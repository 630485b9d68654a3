"""peft's checks on custom (non-transformers) models, its ``tests/test_custom_models.py``: training changes
only adapter parameters, round trips, disabling, active adapters, requires_grad, mixed batches, model
cards."""

from __future__ import annotations

import copy
import re

import pytest
import torch
from torch import nn

from .support import (
    MLP,
    adapter_params,
    base_model,
    cases,
    inputs_for,
    layer_deltas,
    perturb,
    probe_inputs,
)

MLP_CASES = cases(where=lambda c: c.kind == "mlp")
X = inputs_for("mlp")


def train_steps(model, lr: float, steps: int = 3, loss_fn=None) -> None:
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        y = model(**X)
        loss = y.sum() if loss_fn is None else loss_fn(y)
        loss.backward()
        optimizer.step()


def nll(y: torch.Tensor) -> torch.Tensor:
    return nn.functional.nll_loss(y, torch.arange(len(y)) % 2)


@pytest.mark.parametrize("case", MLP_CASES)
def test_only_params_are_updated(lib, case):
    model = case.peft_model(lib)
    before = copy.deepcopy(model)
    train_steps(model, lr=100.0 if "use_dora" in case.kwargs else 0.5)
    params_before, params_after = dict(before.named_parameters()), dict(model.named_parameters())
    assert params_before.keys() == params_after.keys()
    adapter = adapter_params(model)
    for name, old in params_before.items():
        new = params_after[name]
        if name in adapter and new.requires_grad:
            assert not torch.allclose(old, new, atol=1e-4, rtol=1e-4), name
        else:
            torch.testing.assert_close(old, new, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("case", MLP_CASES)
def test_save_load_roundtrip(lib, case, tmp_path):
    base = case.base()
    with torch.inference_mode():
        out_base = base(**X)
    model = lib.get_peft_model(base, case.config(lib))
    perturb(model)
    model.eval()
    with torch.inference_mode():
        out_before = model(**X)
    assert not torch.allclose(out_base, out_before, atol=1e-5, rtol=1e-5)
    model.save_pretrained(tmp_path)
    torch.manual_seed(54321)
    loaded = lib.PeftModel.from_pretrained(case.base(), tmp_path)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(**X), out_before, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", MLP_CASES)
def test_parameters_after_loading_model(lib, case, tmp_path):
    model = case.peft_model(lib)
    lr = 1e-4 if case.config_name == "AdaLoraConfig" else 0.1 if "use_dora" in case.kwargs else 0.5
    train_steps(model, lr)
    before = model.state_dict()
    model.save_pretrained(tmp_path)
    after = lib.PeftModel.from_pretrained(case.base(), tmp_path).state_dict()
    assert before.keys() == after.keys()
    for key, value in before.items():
        torch.testing.assert_close(after[key], value, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("case", MLP_CASES)
def test_disable_adapters(lib, case):
    base = case.base()
    out_base = base(**X)
    model = lib.get_peft_model(base, case.config(lib)).eval()
    out_before = model(**X)
    torch.testing.assert_close(out_before, out_base)  # identity at init
    perturb(model, scale=0.01)  # AdaLoRA's lora_E (peft re-randomises it) and the zero factors start moving
    train_steps(model, lr=1e-4 if case.config_name == "AdaLoraConfig" else 0.01, loss_fn=nll)
    model.eval()
    out_after = model(**X)
    with model.disable_adapter():
        out_disabled = model(**X)
    out_enabled_again = model(**X)
    assert not torch.allclose(out_before, out_after, atol=1e-8, rtol=1e-8)
    torch.testing.assert_close(out_disabled, out_before)
    torch.testing.assert_close(out_enabled_again, out_after)


@pytest.mark.parametrize("case", MLP_CASES)
def test_disable_adapters_with_merging(lib, case):
    model = case.peft_model(lib).eval()
    out_before = model(**X)
    perturb(model, scale=0.01)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(3):
        optimizer.zero_grad()
        nll(model(**X)).backward()
        optimizer.step()
    model.eval()
    out_unmerged = model(**X)
    model.merge_adapter()
    out_after = model(**X)
    with model.disable_adapter():
        out_disabled = model(**X)
    out_enabled_again = model(**X)
    tol = 1e-5
    assert not torch.allclose(out_before, out_after, atol=tol, rtol=tol)
    torch.testing.assert_close(out_after, out_unmerged, atol=tol, rtol=tol)
    torch.testing.assert_close(out_disabled, out_before, atol=tol, rtol=tol)
    torch.testing.assert_close(out_enabled_again, out_after, atol=tol, rtol=tol)


@pytest.mark.parametrize("case", cases("mlp-lora"))
def test_disable_adapter_with_bias_warns(lib, case):
    for bias in ("lora_only", "all"):
        model = case.peft_model(lib, bias=bias)
        warns = pytest.warns(
            UserWarning, match="Careful, disabling adapter layers with bias configured to be"
        )
        with warns, model.disable_adapter():
            pass


@pytest.mark.parametrize("case", cases("mlp-lora", "mlp-dora", "mlp-ia3"))
def test_active_adapter(lib, case):
    model = case.peft_model(lib)
    assert model.active_adapters == ["default"] and model.active_adapter == "default"
    model.add_adapter("other", case.config(lib))
    assert model.active_adapters == ["default"] and model.active_adapter == "default"
    model.set_adapter("other")
    assert model.active_adapters == ["other"] and model.active_adapter == "other"
    model.base_model.set_adapter(["default", "other"])  # several active adapters: through the tuner model
    assert model.active_adapters == ["default", "other"]
    assert model.base_model.active_adapter == ["default", "other"]


@pytest.mark.parametrize("case", cases("mlp-lora", "mlp-ia3"))
def test_disable_adapters_exiting_context_restores_previous_state(lib, case):
    model = case.peft_model(lib).eval()
    perturb(model)
    out_base, out_adapter = case.base()(**X), model(**X)
    with model.disable_adapter():
        pass
    torch.testing.assert_close(model(**X), out_adapter)
    model.disable_adapter_layers()
    torch.testing.assert_close(model(**X), out_base)
    with model.disable_adapter():
        pass
    torch.testing.assert_close(model(**X), out_base)  # still disabled after the context
    model.enable_adapter_layers()
    torch.testing.assert_close(model(**X), out_adapter)


@pytest.mark.parametrize("case", cases("mlp-lora", "mlp-dora", "mlp-ia3"))
def test_delete_merged_adapter_raises_without_mutation(lib, case):
    model = case.peft_model(lib).eval()
    perturb(model)
    model.merge_adapter()
    out_merged = model(**X)
    msg = "Cannot delete adapter(s) ['default'] while they are merged. Please unmerge them first."
    with pytest.raises(ValueError, match=re.escape(msg)):
        model.delete_adapter("default")
    assert "default" in model.peft_config
    torch.testing.assert_close(model(**X), out_merged)
    model.unmerge_adapter()
    model.delete_adapter("default")
    assert "default" not in model.peft_config


def test_delete_adapter_with_multiple_adapters_works(lib):
    model = lib.get_peft_model(MLP(), lib.LoraConfig(target_modules=["lin0"]), adapter_name="adapter0")
    model.add_adapter("adapter1", lib.LoraConfig(target_modules=["lin0"]))
    model.add_adapter("adapter2", lib.LoraConfig(target_modules=["lin0"]))
    assert model.active_adapters == ["adapter0"]
    model(**X)
    model.delete_adapter("adapter0")
    assert model.active_adapters == ["adapter1"]
    model(**X)
    model.delete_adapter("adapter2")
    assert model.active_adapters == ["adapter1"]
    model(**X)


def test_weight_bias_attributes(lib):
    model = lib.get_peft_model(MLP(), lib.LoraConfig(target_modules=["lin0"]))
    assert hasattr(model.base_model.model.lin0, "weight")
    assert hasattr(model.base_model.model.lin0, "bias")


MTS_CONFIGS = [
    pytest.param("LoraConfig", {}, id="lora"),
    pytest.param("IA3Config", {"feedforward_modules": ["lin0"]}, id="ia3"),
]


@pytest.mark.parametrize("first_has_mts", [pytest.param(True, id="first"), pytest.param(False, id="second")])
@pytest.mark.parametrize(("config_name", "extra"), MTS_CONFIGS)
def test_multiple_adapters_mixed_modules_to_save(lib, config_name, extra, first_has_mts):
    with_mts = getattr(lib, config_name)(target_modules=["lin0"], modules_to_save=["lin1"], **extra)
    without = getattr(lib, config_name)(target_modules=["lin0"], **extra)
    model = lib.get_peft_model(MLP(), with_mts if first_has_mts else without)
    model.add_adapter("other", without if first_has_mts else with_mts)
    trained_copies = {
        n for n in adapter_params(model, "default") | adapter_params(model, "other") if "lin1" in n
    }
    owner = "default" if first_has_mts else "other"
    assert trained_copies and all(f".{owner}." in n for n in trained_copies)
    model(**X)
    model.set_adapter("other")
    model(**X)


def test_multiple_adapters_mixed_modules_to_save_merging_adapters(lib):
    model = lib.get_peft_model(MLP(), lib.LoraConfig(target_modules=["lin0"], modules_to_save=["lin1"]))
    model.add_adapter("other", lib.LoraConfig(target_modules=["lin0"]))
    model.add_weighted_adapter(["default", "other"], weights=[1.0, 1.0], adapter_name="merged")
    assert any("lin1" in n for n in adapter_params(model, "merged"))  # the merged adapter keeps lin1's copy
    model.set_adapter("merged")
    model(**X)


def test_multiple_adapters_same_modules_to_save_merging_adapters_raises(lib):
    model = lib.get_peft_model(MLP(), lib.LoraConfig(target_modules=["lin0"], modules_to_save=["lin1"]))
    model.add_adapter("other", lib.LoraConfig(target_modules=["lin0"], modules_to_save=["lin1"]))
    msg = "Cannot add weighted adapters if they target the same module with modules_to_save"
    with pytest.raises(ValueError, match=msg):
        model.add_weighted_adapter(["default", "other"], weights=[1.0, 1.0], adapter_name="merged")


def test_add_weighted_adapter_cat_with_rank_pattern(lib):
    model = lib.get_peft_model(
        MLP(), lib.LoraConfig(target_modules=["lin0", "lin1"], r=8, rank_pattern={"lin0": 2})
    )
    model.add_adapter(
        "other", lib.LoraConfig(target_modules=["lin0", "lin1"], r=8, rank_pattern={"lin0": 16})
    )
    model.add_weighted_adapter(
        ["default", "other"], weights=[1.0, 1.0], adapter_name="merged", combination_type="cat"
    )
    model.set_adapter("merged")
    model(**X)


def lin0_delta(model, adapter: str) -> torch.Tensor:
    probe = probe_inputs(model, adapter)
    (delta,) = layer_deltas(model, adapter, probe).values()
    return delta


def test_add_weighted_adapter_negative_weight_negates_adapter(lib):
    torch.manual_seed(42)
    model = lib.get_peft_model(MLP(), lib.LoraConfig(target_modules=["lin0"]), adapter_name="adapter1")
    perturb(model, "adapter1")
    model.add_weighted_adapter(["adapter1"], [-1.0], "merged_negative", combination_type="linear")
    torch.testing.assert_close(
        lin0_delta(model, "merged_negative"), -lin0_delta(model, "adapter1"), atol=1e-6, rtol=1e-5
    )


def test_add_weighted_adapter_subtraction_with_negative_weights(lib):
    base = MLP()
    torch.manual_seed(42)  # two identical adapters
    model = lib.get_peft_model(base, lib.LoraConfig(target_modules=["lin0"]), adapter_name="adapter1")
    torch.manual_seed(42)
    model.add_adapter("adapter2", lib.LoraConfig(target_modules=["lin0"]))
    perturb(model, "adapter1", seed=42)
    perturb(model, "adapter2", seed=42)
    model.add_weighted_adapter(["adapter1", "adapter2"], [1.0, -1.0], "cancelled", combination_type="linear")
    delta = lin0_delta(model, "cancelled")
    torch.testing.assert_close(delta, torch.zeros_like(delta))


def test_add_weighted_adapter_negative_weight_with_different_scaling(lib):
    torch.manual_seed(42)
    model = lib.get_peft_model(MLP(), lib.LoraConfig(r=8, lora_alpha=16, target_modules=["lin0"]), "adapter1")
    model.add_adapter("adapter2", lib.LoraConfig(r=8, lora_alpha=32, target_modules=["lin0"]))
    perturb(model, "adapter1", seed=1)
    perturb(model, "adapter2", seed=2)
    model.add_weighted_adapter(
        ["adapter1", "adapter2"], [0.5, -0.3], "merged_diff_scaling", combination_type="linear"
    )
    model.set_adapter("merged_diff_scaling")
    assert model(torch.randn(2, 10)) is not None


def test_existing_model_card(lib, tmp_path):
    model = lib.get_peft_model(MLP(), lib.LoraConfig(target_modules=["lin0"]))
    (tmp_path / "README.md").write_text("---\nmeta: hello\n---\nThis is a model card\n")
    model.save_pretrained(tmp_path)
    card = (tmp_path / "README.md").read_text()
    assert "library_name: peft" in card and "meta: hello" in card and "This is a model card" in card


def test_non_existing_model_card(lib, tmp_path):
    lib.get_peft_model(MLP(), lib.LoraConfig(target_modules=["lin0"])).save_pretrained(tmp_path)
    card = (tmp_path / "README.md").read_text()
    assert "library_name: peft" in card
    assert len(card) > 1000  # peft fills in its template


@pytest.mark.parametrize("config_name", ["LoraConfig", "AdaLoraConfig", "IA3Config"])
def test_default_target_modules_not_set_raises(lib, config_name):
    extra = {"total_step": 1} if config_name == "AdaLoraConfig" else {}
    with pytest.raises(ValueError, match="Please specify `target_modules`"):
        lib.get_peft_model(MLP(), getattr(lib, config_name)(**extra))


# ---- several active adapters (peft's TestMultipleActiveAdapters) -------------------------------------------
ACTIVE_PAIRS = [
    pytest.param("LoraConfig", {"target_modules": ["lin0"]}, {"target_modules": ["lin0"]}, id="lora-same"),
    pytest.param(
        "LoraConfig", {"target_modules": ["lin0"]}, {"target_modules": ["lin1"]}, id="lora-different"
    ),
    pytest.param(
        "IA3Config",
        {"target_modules": ["lin0"], "feedforward_modules": []},
        {"target_modules": ["lin1"], "feedforward_modules": []},
        id="ia3-different",
    ),
]


def two_adapters(lib, config_name, kw1, kw2):
    torch.manual_seed(0)
    model = lib.get_peft_model(
        MLP().eval(), getattr(lib, config_name)(**kw1), adapter_name="adapter_1"
    ).eval()
    model.add_adapter("adapter_2", getattr(lib, config_name)(**kw2))
    perturb(model, "adapter_1", seed=1)
    perturb(model, "adapter_2", seed=2)
    return model.eval()


@pytest.mark.parametrize(("config_name", "kw1", "kw2"), ACTIVE_PAIRS)
def test_multiple_active_adapters_forward(lib, config_name, kw1, kw2):
    model = two_adapters(lib, config_name, kw1, kw2)
    model.set_adapter("adapter_1")
    out_1 = model(**X)
    model.set_adapter("adapter_2")
    out_2 = model(**X)
    model.base_model.set_adapter(["adapter_1", "adapter_2"])
    combined = model(**X)
    for a, b in ((out_1, out_2), (out_1, combined), (out_2, combined)):
        assert not torch.allclose(a, b, atol=1e-5)
    if config_name == "LoraConfig":
        model.add_weighted_adapter(
            ["adapter_1", "adapter_2"], [1.0, 1.0], "new_combined_adapter", combination_type="cat"
        )
        model.set_adapter("new_combined_adapter")
        torch.testing.assert_close(model(**X), combined, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("config_name", "kw1", "kw2"), ACTIVE_PAIRS)
def test_multiple_active_adapters_merge_and_unmerge(lib, config_name, kw1, kw2):
    base_out = base_model("mlp")(**X)
    model = two_adapters(lib, config_name, kw1, kw2)
    model.base_model.set_adapter(["adapter_1", "adapter_2"])
    combined = model(**X)
    model.merge_adapter()
    torch.testing.assert_close(model(**X), combined, atol=1e-4, rtol=1e-4)
    model.unmerge_adapter()
    with model.disable_adapter():
        torch.testing.assert_close(model(**X), base_out, atol=1e-4, rtol=1e-4)


# ---- requires_grad (peft's TestRequiresGrad) ---------------------------------------------------------------
def trainable(model) -> set[str]:
    """Trainable parameters by their path below the wrapped model (either library's prefix removed)."""
    return {re.sub(r"^.*?(lin[01]\.)", r"\1", n) for n, p in model.named_parameters() if p.requires_grad}


GRAD_PAIRS = [
    pytest.param("LoraConfig", {}, "lin1", ("lora_A", "lora_B"), id="lora-different"),
    pytest.param("LoraConfig", {}, "lin0", ("lora_A", "lora_B"), id="lora-same"),
    pytest.param("IA3Config", {"feedforward_modules": []}, "lin1", ("ia3_l",), id="ia3-different"),
    pytest.param("IA3Config", {"feedforward_modules": []}, "lin0", ("ia3_l",), id="ia3-same"),
]


def expected(layer: str, adapter: str, parts: tuple[str, ...]) -> set[str]:
    return {f"{layer}.{part}.{adapter}" + ("" if part == "ia3_l" else ".weight") for part in parts}


@pytest.mark.parametrize(("config_name", "extra", "second_target", "parts"), GRAD_PAIRS)
def test_requires_grad_two_adapters(lib, config_name, extra, second_target, parts):
    model = lib.get_peft_model(MLP(), getattr(lib, config_name)(target_modules=["lin0"], **extra))
    model.add_adapter("adapter1", getattr(lib, config_name)(target_modules=[second_target], **extra))
    first = expected("lin0", "default", parts)
    assert trainable(model) == first
    model.set_adapter("default")
    assert trainable(model) == first
    model.set_adapter("adapter1")
    second = expected(second_target, "adapter1", parts)
    assert trainable(model) == second
    with model.disable_adapter():
        assert trainable(model) == set()
    assert trainable(model) == second


def test_requires_grad_modules_to_save_default(lib):
    model = lib.get_peft_model(MLP(), lib.LoraConfig(target_modules=["lin0"], modules_to_save=["lin1"]))
    assert trainable(model) == {
        "lin1.modules_to_save.default.weight",
        "lin1.modules_to_save.default.bias",
        "lin0.lora_A.default.weight",
        "lin0.lora_B.default.weight",
    }


@pytest.mark.parametrize(
    "is_trainable", [pytest.param(False, id="frozen"), pytest.param(True, id="trainable")]
)
@pytest.mark.parametrize("case", cases("mlp-lora", "mlp-ia3", "mlp-adalora"))
def test_loading_model_requires_grad_set_correctly(lib, case, is_trainable, tmp_path):
    case.peft_model(lib).save_pretrained(tmp_path)
    model = lib.PeftModel.from_pretrained(case.base(), tmp_path, is_trainable=is_trainable)
    expected_names = {n for n in adapter_params(model) if "ranknum" not in n} if is_trainable else set()
    assert {n for n, p in model.named_parameters() if p.requires_grad} == expected_names
    if case.config_name == "AdaLoraConfig" and is_trainable:
        with pytest.raises(ValueError, match="supports only 1 trainable adapter"):
            model.load_adapter(tmp_path, adapter_name="other", is_trainable=True)
        return
    model.load_adapter(tmp_path, adapter_name="other", is_trainable=is_trainable)
    now_trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert expected_names <= now_trainable and not any(
        ".default." in n for n in now_trainable - expected_names
    )
    if not is_trainable:
        assert now_trainable == set()


# ---- mixed-adapter batches on a custom model (peft's TestMixedAdapterBatches) ------------------------------
def mixed_mlp(lib, kw0=None, kw1=None):
    torch.manual_seed(0)
    model = lib.get_peft_model(
        MLP().eval(), lib.LoraConfig(**(kw0 or {"target_modules": ["lin0"]})), "adapter0"
    )
    model.add_adapter("adapter1", lib.LoraConfig(**(kw1 or {"target_modules": ["lin1"]})))
    perturb(model, "adapter0", seed=1)
    perturb(model, "adapter1", seed=2)
    return model.eval()


MIXED_TARGETS = [
    pytest.param({"target_modules": ["lin0"]}, {"target_modules": ["lin0"]}, id="same"),
    pytest.param({"target_modules": ["lin0"]}, {"target_modules": ["lin1"]}, id="different"),
    pytest.param({"target_modules": ["lin0"]}, {"target_modules": ["lin0", "lin1"]}, id="overlapping"),
    pytest.param(
        {"target_modules": ["lin0"], "modules_to_save": ["lin1"]},
        {"target_modules": ["lin0"], "modules_to_save": ["lin1"]},
        id="modules_to_save",
    ),
]


@pytest.mark.parametrize(("kw0", "kw1"), MIXED_TARGETS)
def test_mixed_adapter_batches_mlp(lib, kw0, kw1):
    model = mixed_mlp(lib, kw0, kw1)
    with model.disable_adapter():
        base = model(**X)
    model.set_adapter("adapter0")
    out0 = model(**X)
    model.set_adapter("adapter1")
    out1 = model(**X)
    names = ["__base__", "adapter0", "adapter1"] * 3
    mixed = model(**X, adapter_names=names)
    for i, reference in enumerate((base, out0, out1)):
        torch.testing.assert_close(mixed[i::3], reference[i::3], atol=1e-6, rtol=1e-6)


MIXED_ERRORS = {
    "length_mismatch": ("Length of `adapter_names` should be the same as the number of inputs", None),
    "training_mode": ("Cannot pass `adapter_names` when the model is in training mode", "train"),
    "merged": ("Cannot pass `adapter_names` when there are merged adapters", "merge"),
    "wrong_adapter_name": ("Trying to infer with non-existing adapter", None),
}


@pytest.mark.parametrize("error", list(MIXED_ERRORS))
def test_mixed_adapter_batches_raises(lib, error):
    model = mixed_mlp(lib)
    message, setup = MIXED_ERRORS[error]
    if setup == "train":
        model.train()
    elif setup == "merge":
        model.merge_adapter()
    names = {
        "length_mismatch": ["__base__"] * 5,
        "wrong_adapter_name": ["adapter0", "does-not-exist", "adapter1"] * 3,
    }
    with pytest.raises(ValueError, match=re.escape(message)):
        model(**X, adapter_names=names.get(error, ["__base__", "adapter0", "adapter1"] * 3))


def test_mixed_adapter_batches_lora_with_dora_raises(lib):
    model = lib.get_peft_model(
        MLP().eval(), lib.LoraConfig(target_modules=["lin0"], use_dora=True), "adapter0"
    ).eval()
    with pytest.raises(ValueError, match="Cannot pass `adapter_names` when DoRA is enabled."):
        model(**X, adapter_names=["adapter0"] * 9)


def test_mixed_adapter_batches_disabled(lib):
    model = mixed_mlp(lib)
    with model.disable_adapter():
        base = model(**X)
        mixed = model(**X, adapter_names=["__base__", "adapter0", "adapter1"] * 3)
    torch.testing.assert_close(mixed, base)
