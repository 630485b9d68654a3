"""AdaLoRA: budget schedule, importance-based masking, the orthogonality penalty, the trainer hooks,
the rank map, and checkpoints that cross with peft both ways (pruned ones included)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import build, logits, make_inputs

import peftkit
from peftkit import AdaLoraConfig, AdapterError, ConfigError
from peftkit.methods.adalora import RankBudget, rank_map
from peftkit.methods.adalora.allocation import adalora_layers
from peftkit.plotting import write_figures

peft = pytest.importorskip("peft")

KW = {"init_r": 4, "target_r": 2, "target_modules": ["q_proj", "v_proj"], "lora_alpha": 8}


def train_ours(model, steps: int, inputs: dict, lr: float = 1e-2, total: int | None = None) -> None:
    """The order the trainer uses: loss + regulariser, backward, step, allocation, zero_grad."""
    model.train()
    model.before_training(total or steps)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    for step in range(steps):
        loss = logits(model, inputs).float().pow(2).mean() + model.regularization_loss()
        loss.backward()
        opt.step()
        model.after_optimizer_step(step)
        opt.zero_grad()
    model.eval()


def ranks(model, name="default") -> dict[str, int]:
    return {p: layer.rank(name) for p, layer in adalora_layers(model.get_base_model(), name)}


def test_budget_is_cubic_between_tinit_and_tfinal():
    b = RankBudget(init=40, target=16, tinit=2, tfinal=3, total=12, every=1)
    assert b.at(1) == (40, False) and b.at(2) == (40, False)
    assert b.at(3) == (int(24 * (1 - 1 / 7) ** 3 + 16), True)
    assert [b.at(t)[0] for t in range(3, 10)] == sorted([b.at(t)[0] for t in range(3, 10)], reverse=True)
    assert b.at(9) == (16, True)  # the final allocation, at total - tfinal
    assert b.at(10) == (16, False) and b.at(12) == (16, False)
    every3 = RankBudget(init=40, target=16, tinit=0, tfinal=0, total=12, every=3)
    assert [t for t in range(1, 12) if every3.at(t)[1]] == [3, 6, 9]


def test_allocation_reaches_the_target_budget_and_masks_singular_values():
    model = peftkit.get_peft_model(build("llama"), AdaLoraConfig(**KW, tinit=1, tfinal=2))
    train_ours(model, 8, make_inputs("llama"))
    got = ranks(model)
    assert sum(got.values()) == 2 * len(got)  # target_r x modules
    for _, layer in adalora_layers(model.get_base_model(), "default"):
        masked = ~layer.rank_mask("default")
        assert torch.all(layer.lora_E["default"][masked] == 0)
        assert layer.lora_A["default"].shape[0] == 4  # masked, not deleted
    pattern = model.peft_config["default"].rank_pattern
    assert sum(sum(v) for v in pattern.values()) == 2 * len(got)


def test_masked_triplet_can_come_back():
    model = peftkit.get_peft_model(build("llama"), AdaLoraConfig(**KW, tinit=0, tfinal=0, deltaT=1))
    inputs = make_inputs("llama")
    train_ours(model, 4, inputs, total=10)  # budget falls: some triplets are masked
    path, layer = next(
        (p, la) for p, la in adalora_layers(model.get_base_model(), "default") if la.rank("default") < 4
    )
    lost = int((~layer.rank_mask("default")).nonzero()[0])
    state = layer.allocation["default"]  # make the lost triplet the most important one in the model
    state.sensitivity_E[lost] = state.uncertainty_E[lost] = 1e3
    from peftkit.methods.adalora.allocation import _mask_to_budget

    _mask_to_budget(adalora_layers(model.get_base_model(), "default"), "default", 10)
    assert bool(layer.rank_mask("default")[lost]), f"{path}: triplet {lost} did not come back"


def test_orthogonality_penalty_is_zero_for_orthonormal_factors_and_reaches_the_loss():
    assert AdaLoraConfig().orth_reg_form == "peft"  # the default since issue 21's tuning
    config = AdaLoraConfig(**KW, orth_reg_weight=0.3, orth_reg_form="squared")
    model = peftkit.get_peft_model(build("llama"), config)
    with torch.no_grad():
        for _, layer in adalora_layers(model.get_base_model(), "default"):
            q, _ = torch.linalg.qr(torch.randn(layer.in_features, 4))
            p, _ = torch.linalg.qr(torch.randn(layer.out_features, 4))
            layer.lora_A["default"].copy_(q.T)  # rows orthonormal: Q Q^T = I
            layer.lora_B["default"].copy_(p)  # columns orthonormal: P^T P = I
    assert model.regularization_loss().item() == pytest.approx(0.0, abs=1e-9)
    layer = adalora_layers(model.get_base_model(), "default")[0][1]
    with torch.no_grad():
        layer.lora_A["default"].mul_(2)  # Q Q^T = 4 I: ||3 I||_F^2 = 9 r = 36 on one of 4 modules
    assert model.regularization_loss().item() == pytest.approx(0.3 * 36 / 4, rel=1e-4)
    off = peftkit.get_peft_model(build("llama"), AdaLoraConfig(**KW, orth_reg_weight=0.0))
    assert off.regularization_loss() == 0.0


def test_peft_orthogonality_form_is_the_term_peft_adds_to_its_loss(tmp_path):
    """``orth_reg_form="peft"``: the mean over every P and Q of ``||. - I||_F`` (not squared), exactly what
    peft's AdaLoraModel adds to the forward loss, on the same weights; the paper's form differs."""
    config = AdaLoraConfig(
        **KW, orth_reg_weight=1.0, orth_reg_form="peft", total_step=10, task_type="CAUSAL_LM"
    )
    ours = peftkit.get_peft_model(build("llama"), config)
    with torch.no_grad():
        for p in ours.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.3)
    ours.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert "orth_reg_form" not in config  # training-only: peft's config has no such field
    inputs = make_inputs("llama")
    labels = {**inputs, "labels": inputs["input_ids"]}

    def peft_loss(weight: float) -> float:
        model = peft.PeftModel.from_pretrained(build("llama"), tmp_path, is_trainable=True)
        model.peft_config["default"].orth_reg_weight = weight
        model.train()
        with torch.no_grad():
            return model(**labels).loss.item()

    peft_term = peft_loss(2.0) - peft_loss(1.0)  # peft before 0.19 refuses a weight of 0 in the forward
    assert ours.regularization_loss().item() == pytest.approx(peft_term, rel=1e-4)
    paper = peftkit.methods.adalora.allocation.orthogonal_penalty(ours.base_model, "default", "squared")
    assert abs(paper.item() - peft_term) > 1e-2


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="target_r"):
        AdaLoraConfig(init_r=4, target_r=6)
    with pytest.raises(ConfigError, match="tinit"):
        AdaLoraConfig(tinit=5, tfinal=5, total_step=10)
    with pytest.raises(ConfigError, match="rank_pattern"):
        AdaLoraConfig(init_r=3, target_r=2, rank_pattern={"a.lora_E": [True]})


def test_trainer_fills_total_step_and_refuses_a_pruned_adapter(tmp_path):
    model = peftkit.get_peft_model(build("llama"), AdaLoraConfig(**KW, tfinal=1))
    model.before_training(6)
    assert model.peft_config["default"].total_step == 6
    train_ours(model, 6, make_inputs("llama"))
    model.save_pretrained(tmp_path)
    loaded = peftkit.PeftModel.from_pretrained(build("llama"), tmp_path, is_trainable=True)
    with pytest.raises(AdapterError, match="pruned"):
        loaded.before_training(6)


def test_rank_map_and_figure(tmp_path):
    pytest.importorskip("matplotlib")
    model = peftkit.get_peft_model(build("llama"), AdaLoraConfig(**KW, tfinal=1))
    train_ours(model, 5, make_inputs("llama"))
    rows, cols, grid = rank_map(model.get_base_model(), "default")
    assert rows == ["0", "1"] and cols == ["self_attn.q_proj", "self_attn.v_proj"]
    assert sum(sum(r) for r in grid) == 2 * 4
    (png,) = write_figures(model, tmp_path)
    assert png.name == "ranks_default.png" and png.stat().st_size > 1000


def test_trainer_runs_the_hooks(tmp_path):
    from peftkit.data import Collator
    from peftkit.training import TrainConfig, Trainer

    model = peftkit.get_peft_model(build("llama"), AdaLoraConfig(**KW, tinit=1, tfinal=1))
    g = torch.Generator().manual_seed(0)
    examples = [
        {"input_ids": ids, "labels": ids} for ids in torch.randint(3, 90, (16, 6), generator=g).tolist()
    ]
    cfg = TrainConfig(lr=1e-2, max_steps=6, batch_size=4, log_every=1)
    Trainer(model, examples, Collator(0), cfg, tmp_path, show_progress=False).train()
    assert sum(ranks(model).values()) == 8  # the budget was allocated: the hooks ran with gradients


# ---- peft interop ------------------------------------------------------------------------------
def peft_config(**extra):
    return peft.AdaLoraConfig(
        init_r=4, target_r=2, target_modules=["q_proj", "v_proj"], lora_alpha=8, total_step=8, **extra
    )


@pytest.mark.parametrize("pruned", [False, True])
def test_peft_checkpoint_loads_in_peftkit(pruned, tmp_path):
    theirs = peft.get_peft_model(build("llama"), peft_config(tinit=1, tfinal=2))
    inputs = make_inputs("llama")
    opt = torch.optim.AdamW([p for p in theirs.parameters() if p.requires_grad], lr=1e-2)
    theirs.train()
    for step in range(6 if pruned else 1):
        theirs(**inputs).logits.pow(2).mean().backward()
        opt.step()
        theirs.base_model.update_and_allocate(step)
        opt.zero_grad()
    theirs.eval()
    test_inputs = make_inputs("llama", seed=7)
    expected = logits(theirs, test_inputs)
    theirs.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert (saved["rank_pattern"] is not None) == pruned
    ours = peftkit.PeftModel.from_pretrained(build("llama"), tmp_path)
    torch.testing.assert_close(logits(ours, test_inputs), expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("pruned", [False, True])
def test_peftkit_checkpoint_loads_in_peft(pruned, tmp_path):
    ours = peftkit.get_peft_model(build("llama"), AdaLoraConfig(**KW, tinit=1, tfinal=2))
    train_ours(ours, 8 if pruned else 1, make_inputs("llama"), total=8)  # one step: nothing pruned yet
    inputs = make_inputs("llama", seed=7)
    expected = logits(ours, inputs)
    ours.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert (saved["rank_pattern"] is not None) == pruned
    theirs = peft.PeftModel.from_pretrained(build("llama"), tmp_path).eval()
    torch.testing.assert_close(logits(theirs, inputs), expected, atol=1e-5, rtol=1e-4)
    again = peftkit.PeftModel.from_pretrained(build("llama"), tmp_path)
    torch.testing.assert_close(logits(again, inputs), expected, atol=1e-5, rtol=1e-4)
