"""BitFit, rule-based selection and the learned sparse diff: what trains, sparse saves, exact merges."""

from __future__ import annotations

import pytest
import torch
from conftest import build, logits, make_inputs
from safetensors.torch import load_file

from peftkit import (
    BitFitConfig,
    ConfigError,
    DiffPruningConfig,
    PeftModel,
    SelectionConfig,
    TargetError,
    get_peft_model,
)
from peftkit.methods.selection import smallest_magnitude_mask


def train(model, kind, steps=4, lr=1e-2):
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    inputs = make_inputs(kind)
    for _ in range(steps):
        opt.zero_grad()
        logits(model, inputs).float().pow(2).mean().backward()
        opt.step()
    model.eval()


def test_bitfit_trains_exactly_the_biases():
    base = build("bert")
    biases = {
        n: p.numel() for n, p in base.named_parameters() if n.endswith("bias") and "classifier" not in n
    }
    head = sum(p.numel() for p in base.classifier.parameters())
    model = get_peft_model(base, BitFitConfig(modules_to_save=["classifier"]))
    assert model.parameter_report().trainable == sum(biases.values()) + head
    before = {
        n: p.detach().clone() for n, p in model.get_base_model().named_parameters() if "base_layer" in n
    }
    train(model, "bert")
    for name, p in model.get_base_model().named_parameters():
        if name in before:
            assert torch.equal(before[name], p), f"{name} is base and must stay frozen"
    model.merge_adapter()
    changed = [
        n
        for n, p in model.get_base_model().named_parameters()
        if n in before and not torch.equal(before[n], p)
    ]
    assert changed and all(n.endswith("bias") for n in changed)


def test_bitfit_on_a_model_without_biases_says_so():
    with pytest.raises(TargetError, match="no bias terms.*Llama"):
        get_peft_model(build("llama"), BitFitConfig())


def test_smallest_magnitude_mask_picks_the_smallest_entries():
    w = torch.tensor([[0.5, -0.01, 2.0], [0.02, -3.0, 0.001]])
    mask = smallest_magnitude_mask(w, 0.5)
    assert mask.tolist() == [[False, True, False], [True, False, True]]


def test_smallest_magnitude_saves_a_sparse_diff_that_merges_exactly(tmp_path):
    config = SelectionConfig(rule="smallest_magnitude", density=0.1, target_modules=["fc1", "fc2"])
    model = get_peft_model(build("mlp"), config)
    w0 = build("mlp").fc1.weight.detach().clone()
    train(model, "mlp")
    model.save_pretrained(tmp_path)
    saved = load_file(str(tmp_path / "adapter_model.safetensors"))
    idx, values = (
        saved["base_model.model.fc1.sparse_delta.weight.indices"],
        saved["base_model.model.fc1.sparse_delta.weight.values"],
    )
    assert idx.dtype == torch.int64 and idx.numel() == values.numel() == round(0.1 * w0.numel())
    assert set(idx.tolist()) == set(smallest_magnitude_mask(w0, 0.1).flatten().nonzero().squeeze(1).tolist())
    expected = w0.flatten().index_add(0, idx, values).view(w0.shape)
    merged = model.merge_and_unload()
    torch.testing.assert_close(merged.fc1.weight, expected, atol=0, rtol=0)


def test_last_k_layers_targets_only_the_last_layers():
    model = get_peft_model(build("llama"), SelectionConfig(rule="last_k_layers", last_k=1))
    targets = model.targets["default"]
    assert targets and all(t.startswith("model.layers.1.") for t in targets)
    n_layer = sum(p.numel() for p in build("llama").model.layers[1].parameters())
    assert model.parameter_report().trainable == n_layer


def assert_sparse_roundtrip(model, k: int, tmp_path) -> torch.nn.Module:
    """fc1's saved diff holds exactly ``k`` values; loading it, then merging it, gives the same
    outputs as ``model``. Returns the merged model."""
    inputs = make_inputs("mlp", seed=4)
    expected = logits(model, inputs)
    model.save_pretrained(tmp_path)
    saved = load_file(str(tmp_path / "adapter_model.safetensors"))
    assert saved["base_model.model.fc1.sparse_delta.weight.values"].numel() == k
    loaded = PeftModel.from_pretrained(build("mlp"), tmp_path)
    torch.testing.assert_close(logits(loaded, inputs), expected, atol=1e-6, rtol=1e-5)
    merged = loaded.merge_and_unload()
    torch.testing.assert_close(logits(merged, inputs), expected, atol=1e-5, rtol=1e-5)
    return merged


def test_diff_pruning_ends_at_the_target_density_and_learns_its_mask(tmp_path):
    config = DiffPruningConfig(density=0.1, target_modules=["fc1", "fc2"])
    model = get_peft_model(build("mlp"), config)
    layer = dict(model.layers())["fc1"]
    delta = layer.sparse_delta["default"]
    mask0 = delta.mask("weight").clone()
    train(model, "mlp", steps=30, lr=5e-2)
    mask1 = delta.mask("weight")
    k = round(0.1 * mask1.numel())
    assert int(mask1.sum()) == k
    assert not torch.equal(mask0, mask1), "the scores never changed the mask"
    merged = assert_sparse_roundtrip(model, k, tmp_path)
    diff = merged.fc1.weight - build("mlp").fc1.weight
    assert int((diff != 0).sum()) <= k


def test_straight_through_gradients():
    """dL/dD is dense (entries outside the mask keep learning) and dL/dS = dL/dE * D."""
    model = get_peft_model(build("mlp"), DiffPruningConfig(density=0.25, target_modules=["fc1"]))
    delta = dict(model.layers())["fc1"].sparse_delta["default"]
    D, S = delta.dense["weight"], delta.scores["weight"]
    with torch.no_grad():
        D.normal_()
    E = delta.delta("weight")
    torch.testing.assert_close(E, delta.mask("weight") * D)
    upstream = torch.randn_like(E)
    (E * upstream).sum().backward()
    torch.testing.assert_close(D.grad, upstream)
    torch.testing.assert_close(S.grad, upstream * D.detach())


def test_tied_weights_are_refused_with_the_fix():
    with pytest.raises(TargetError, match="tied"):
        get_peft_model(build("gpt2"), SelectionConfig(rule="smallest_magnitude", exclude_modules=["lm_head"]))
    with pytest.raises(TargetError, match="tied"):
        get_peft_model(build("gpt2"), DiffPruningConfig())


def test_config_errors():
    with pytest.raises(ConfigError, match="rule"):
        SelectionConfig(rule="random")
    with pytest.raises(ConfigError, match="density"):
        DiffPruningConfig(density=0.0)
    with pytest.raises(ConfigError, match="last_k"):
        SelectionConfig(last_k=0)


def test_hard_concrete_gates_reach_the_target_density(tmp_path):
    """mask=hard_concrete: the L0 penalty brings the expected density from 0.5 down to the target;
    the saved diff has exactly the target density and loads and merges to the eval-mode model."""
    torch.manual_seed(0)
    config = DiffPruningConfig(
        density=0.1, mask="hard_concrete", init_density=0.5, target_modules=["fc1", "fc2"]
    )
    model = get_peft_model(build("mlp"), config)
    gates = dict(model.layers())["fc1"].sparse_delta["default"]
    assert abs(gates.expected_density("weight").item() - 0.5) < 0.01
    mask0 = gates.mask("weight").clone()
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-2)
    inputs = make_inputs("mlp")
    for _ in range(70):
        opt.zero_grad()
        (logits(model, inputs).float().pow(2).mean() + model.regularization_loss()).backward()
        opt.step()
    model.eval()
    for _, layer in model.layers():
        item = layer.sparse_delta["default"]
        for path in item.shapes:
            assert item.expected_density(path).item() < 0.11, path
    assert not torch.equal(gates.mask("weight"), mask0), "the gates never changed the mask"
    k = round(0.1 * gates.mask("weight").numel())
    inputs = make_inputs("mlp", seed=4)
    torch.testing.assert_close(logits(model, inputs), logits(model, inputs))  # deterministic in eval
    merged = assert_sparse_roundtrip(model, k, tmp_path)
    assert int((merged.fc1.weight - build("mlp").fc1.weight != 0).sum()) <= k


def test_hard_concrete_gates_are_stochastic_in_training_and_reparameterised():
    model = get_peft_model(
        build("mlp"), DiffPruningConfig(density=0.25, mask="hard_concrete", target_modules=["fc1"])
    )
    gates = dict(model.layers())["fc1"].sparse_delta["default"]
    D, log_alpha = gates.dense["weight"], gates.log_alpha["weight"]
    with torch.no_grad():
        D.normal_()
    gates.train()
    torch.manual_seed(1)
    first = gates.delta("weight")
    assert not torch.equal(first, gates.delta("weight")), "training gates are not sampled"
    assert bool(((first == 0) | (first == D)).float().mean() > 0.5), "hard gates are mostly exactly 0 or 1"
    (first * torch.randn_like(first)).sum().backward()
    assert D.grad.abs().sum() > 0 and log_alpha.grad.abs().sum() > 0
    gates.eval()
    outside = gates.delta("weight")
    assert int((outside != 0).sum()) <= round(0.25 * D.numel())
    torch.testing.assert_close(outside, gates.delta("weight"))
    no_penalty = DiffPruningConfig(mask="hard_concrete", l0_weight=0.0, target_modules=["fc1"])
    assert get_peft_model(build("mlp"), no_penalty).regularization_loss() == 0


def test_hard_concrete_config_errors():
    with pytest.raises(ConfigError, match="mask"):
        DiffPruningConfig(mask="l1")
    with pytest.raises(ConfigError, match="l0_weight"):
        DiffPruningConfig(mask="hard_concrete", l0_weight=-1.0)
    with pytest.raises(ConfigError, match="init_density"):
        DiffPruningConfig(mask="hard_concrete", init_density=1.0)
