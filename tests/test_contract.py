"""Checks every method passes, over tiny Llama, BERT, GPT-2, T5 and plain-torch models."""

from __future__ import annotations

import copy

import pytest
import torch
from cases import CASES
from conftest import build, logits, make_inputs

import peftkit
from peftkit import BASE_ROW, AdapterError, BaseModelMismatchError

ATOL = 1e-5
# merged weights round differently from base + adapter paths: the gap grows with the delta's size and
# the depth (seen: 4.8e-5 on logits of magnitude 3.4, T5 all-linear rsLoRA, transformers 5.0); a wrong
# merge is off by orders of magnitude more
MERGE_ATOL = 1e-4


def second_config(case):
    """The config of a second adapter beside the case's: the same, but the base's biases are trained by one
    adapter at most (peft's rule: two would train, and save, the same tensors)."""
    config = case.make_config()
    return config.replace(bias="none") if getattr(config, "bias", "none") != "none" else config


def wrapped(case, name="default"):
    return case.wrap(build(case.kind), name)


def perturb(model, name="default", seed=3):
    """Give an adapter non-trivial weights (B starts at zero) without touching the base."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in model.layers():
            for p in layer.adapter_parameters(name):
                p.add_(torch.randn(p.shape, generator=g) * 0.2)


def train_steps(model, inputs, steps=3):
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        logits(model, inputs).float().pow(2).mean().backward()
        opt.step()
    model.eval()


@pytest.fixture(params=CASES, ids=str)
def case(request):
    return request.param


def test_identity_at_init(case):
    if not case.identity_at_init:
        pytest.skip("method changes outputs at init by design")
    inputs = make_inputs(case.kind)
    expected = logits(build(case.kind), inputs)
    torch.testing.assert_close(logits(wrapped(case), inputs), expected, atol=ATOL, rtol=1e-4)


def test_only_adapter_parameters_change(case):
    model = wrapped(case)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable, "nothing trainable"
    train_steps(model, make_inputs(case.kind))
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p)}
    assert changed, "training changed nothing"
    assert changed <= trainable, f"frozen parameters changed: {sorted(changed - trainable)[:5]}"
    report = model.parameter_report()
    assert report.trainable == sum(p.numel() for n, p in model.named_parameters() if n in trainable)
    assert 0 < report.percent < 100 and report.adapter_bytes > 0


def test_deepcopy_is_independent(case):
    """A deep copy computes with its own weights: training it leaves the original as it was."""
    model = wrapped(case)
    inputs = make_inputs(case.kind)
    before = logits(model, inputs)
    twin = copy.deepcopy(model)
    train_steps(twin, inputs)
    torch.testing.assert_close(logits(model, inputs), before, atol=0, rtol=0)
    assert not torch.allclose(logits(twin, inputs), before, atol=1e-5), "the copy did not train"


def test_save_load_round_trip(case, tmp_path):
    model = wrapped(case)
    train_steps(model, make_inputs(case.kind))
    inputs = make_inputs(case.kind, seed=5)
    expected = logits(model, inputs)
    model.save_pretrained(tmp_path, adapter_names=["default"])
    assert {p.name for p in tmp_path.iterdir()} == {
        "adapter_config.json",
        "adapter_model.safetensors",
        "README.md",
    }
    loaded = case.load(build(case.kind), tmp_path)
    torch.testing.assert_close(logits(loaded, inputs), expected, atol=ATOL, rtol=1e-4)
    assert not any(p.requires_grad for p in loaded.parameters()), "loaded for inference must be frozen"


def test_merge_equals_unmerged(case):
    if not case.mergeable:
        pytest.skip("not mergeable")
    model = wrapped(case)
    perturb(model)
    inputs = make_inputs(case.kind)
    unmerged = logits(model, inputs)
    model.merge_adapter()
    torch.testing.assert_close(logits(model, inputs), unmerged, atol=MERGE_ATOL, rtol=1e-4)
    model.merge_adapter()  # second merge must not double the delta
    torch.testing.assert_close(logits(model, inputs), unmerged, atol=MERGE_ATOL, rtol=1e-4)
    with pytest.raises(AdapterError, match="unmerged"):  # rows cannot pick adapters out of merged weights
        logits(model, inputs, adapter_names=["default"] * inputs["input_ids"].shape[0])
    model.unmerge_adapter()
    torch.testing.assert_close(logits(model, inputs), unmerged, atol=MERGE_ATOL, rtol=1e-4)
    merged_plain = model.merge_and_unload()
    assert not list(peftkit.layer.adapter_layers(merged_plain))
    torch.testing.assert_close(logits(merged_plain, inputs), unmerged, atol=MERGE_ATOL, rtol=1e-4)


def test_disabled_equals_base(case):
    inputs = make_inputs(case.kind)
    base_out = logits(build(case.kind), inputs)
    model = wrapped(case)
    perturb(model)
    with model.disable_adapter():
        torch.testing.assert_close(logits(model, inputs), base_out, atol=ATOL, rtol=1e-4)
    assert not torch.allclose(logits(model, inputs), base_out, atol=1e-3), "adapter had no effect"
    unloaded = model.unload()
    torch.testing.assert_close(logits(unloaded, inputs), base_out, atol=ATOL, rtol=1e-4)


def test_add_switch_delete(case):
    if getattr(case.make_config(), "residual_init", False):
        pytest.skip("PiSSA and OLoRA own their layers' base weights: one adapter per layer")
    model = wrapped(case)
    model.add_adapter("other", second_config(case))
    perturb(model, "default", seed=1)
    perturb(model, "other", seed=2)
    inputs = make_inputs(case.kind)
    out_default = logits(model, inputs)
    model.set_adapter("other")
    out_other = logits(model, inputs)
    assert not torch.allclose(out_default, out_other)
    assert all(p.requires_grad is False for n, p in model.named_parameters() if ".default" in n)
    with pytest.raises(AdapterError, match="exists"):
        model.add_adapter("other", second_config(case))
    with pytest.raises(AdapterError, match="unknown adapter"):
        model.set_adapter("nope")
    model.delete_adapter("other")
    assert model.active_adapter == list(model.peft_config)[0]  # the first remaining, as peft does
    model.set_adapter("default")
    torch.testing.assert_close(logits(model, inputs), out_default)


def test_mixed_batch_equals_single_runs(case):
    if getattr(case.make_config(), "residual_init", False):
        rows, names = ["default", BASE_ROW, "default"], ["default"]
    else:
        rows, names = ["other", BASE_ROW, "default"], ["default", "other"]
    model = wrapped(case)
    if "other" in names:
        model.add_adapter("other", second_config(case))
    for i, name in enumerate(names):
        perturb(model, name, seed=i + 1)
    inputs = make_inputs(case.kind)
    mixed = logits(model, inputs, adapter_names=rows)
    for i, row in enumerate(rows):
        if row == BASE_ROW:
            with model.disable_adapter():
                single = logits(model, inputs)
        else:
            model.set_adapter(row)
            single = logits(model, inputs)
        torch.testing.assert_close(mixed[i], single[i], atol=ATOL, rtol=1e-4)
    with pytest.raises(AdapterError, match="unknown adapter"):
        logits(model, inputs, adapter_names=["nope"] * len(rows))


def test_mismatched_base_raises(case, tmp_path):
    model = wrapped(case)
    model.save_pretrained(tmp_path)
    other = {
        "llama": "gpt2",
        "llama_cls": "bert",
        "bert": "llama_cls",
        "gpt2": "llama",
        "t5": "llama",
        "mlp": "llama",
    }
    with pytest.raises((BaseModelMismatchError, peftkit.TargetError)):
        peftkit.PeftModel.from_pretrained(build(other[case.kind]), tmp_path)
