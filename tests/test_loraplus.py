"""LoRA+ (Hayou et al. 2024): B factors at ``loraplus_lr_ratio`` times A's learning rate, peft's groups."""

from __future__ import annotations

import pytest
import torch
from conftest import build

import peftkit
from peftkit.optimizers import create_loraplus_optimizer

peft = pytest.importorskip("peft")
peft_optimizers = pytest.importorskip("peft.optimizers")


def settings(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, tuple[float, float]]:
    """Each trainable parameter's (lr, weight_decay) by its path below the base model (no adapter name)."""
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    out = {}
    for name, p in model.get_base_model().named_parameters():
        if p.requires_grad:
            out[name.replace(".default", "")] = (group_of[id(p)]["lr"], group_of[id(p)]["weight_decay"])
    return out


def test_groups_by_factor():
    config = peftkit.LoraConfig(r=2, target_modules=["q_proj", "embed_tokens"], lora_bias=False)
    model = peftkit.get_peft_model(build("llama"), config)
    optimizer = create_loraplus_optimizer(
        model, torch.optim.AdamW, lr=1e-3, loraplus_lr_ratio=16, loraplus_weight_decay=0.1, eps=1e-7
    )
    got = settings(model, optimizer)
    assert got["model.layers.0.self_attn.q_proj.lora_A.weight"] == (1e-3, 0.1)
    assert got["model.layers.0.self_attn.q_proj.lora_B.weight"] == (16e-3, 0.1)
    assert got["model.embed_tokens.lora_embedding_B"] == (1e-6, 0.1)  # peft's loraplus_lr_embedding
    assert optimizer.defaults["eps"] == 1e-7  # the other keywords go to the optimizer


@pytest.mark.parametrize(
    ("kind", "kwargs"),
    [
        # LoRA on embeddings left out: peft before 0.21 put its factors in A's group, later in their own
        ("llama", {"target_modules": ["q_proj", "v_proj"], "use_dora": True}),
        (
            "bert",
            {"target_modules": ["query", "value"], "lora_bias": True, "modules_to_save": ["classifier"]},
        ),
        ("gpt2", {"target_modules": ["c_attn"], "bias": "all"}),
    ],
    ids=["llama-dora", "bert-lora-bias-head", "gpt2-bias-all"],
)
def test_groups_match_peft(kind, kwargs):
    """Every trainable parameter gets the learning rate and weight decay peft's optimizer gives it."""
    kw = {"lr": 2e-4, "loraplus_lr_ratio": 8, "loraplus_weight_decay": 0.01, "loraplus_lr_embedding": 1e-5}
    ours = peftkit.get_peft_model(build(kind), peftkit.LoraConfig(r=2, **kwargs))
    theirs = peft.get_peft_model(build(kind), peft.LoraConfig(r=2, **kwargs))
    expected = settings(theirs, peft_optimizers.create_loraplus_optimizer(theirs, torch.optim.AdamW, **kw))
    got = settings(ours, create_loraplus_optimizer(ours, torch.optim.AdamW, **kw))
    # peft keeps a DoRA magnitude as `.lora_magnitude_vector.<adapter>.weight`; its saved key drops `.weight`
    expected = {
        k.replace("lora_magnitude_vector.weight", "lora_magnitude_vector"): v for k, v in expected.items()
    }
    assert got == expected


def test_bad_ratio_is_refused():
    model = peftkit.get_peft_model(build("mlp"), peftkit.LoraConfig(r=2, target_modules=["fc1"]))
    with pytest.raises(peftkit.ConfigError, match="loraplus_lr_ratio"):
        create_loraplus_optimizer(model, torch.optim.SGD, lr=0.1, loraplus_lr_ratio=0)


def test_trainer_takes_loraplus_lr_ratio(tmp_path):
    """``train.loraplus_lr_ratio``: peftkit's trainer builds LoRA+'s groups (and schedules every group)."""
    from peftkit.data import Collator
    from peftkit.training import TrainConfig, Trainer

    model = peftkit.get_peft_model(build("llama"), peftkit.LoraConfig(r=2, target_modules=["q_proj"]))
    g = torch.Generator().manual_seed(0)
    examples = [
        {"input_ids": ids, "labels": ids} for ids in torch.randint(3, 90, (8, 6), generator=g).tolist()
    ]
    cfg = TrainConfig(lr=1e-2, max_steps=2, batch_size=4, loraplus_lr_ratio=16, schedule="constant")
    trainer = Trainer(model, examples, Collator(0), cfg, tmp_path, show_progress=False)
    got = settings(model, trainer.optimizer)
    assert got["model.layers.0.self_attn.q_proj.lora_B.weight"][0] == pytest.approx(0.16)
    assert got["model.layers.0.self_attn.q_proj.lora_A.weight"][0] == pytest.approx(0.01)
    B = model.get_base_model().model.layers[0].self_attn.q_proj.lora_B["default"].weight
    trainer.train()
    assert B.abs().sum() > 0
    with pytest.raises(peftkit.ConfigError, match="loraplus_lr_ratio"):
        TrainConfig(loraplus_lr_ratio=-1.0)
