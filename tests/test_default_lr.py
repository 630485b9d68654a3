"""``train.lr`` unset takes the adapter method's ``default_lr``, ``train.warmup_ratio`` (with no
``warmup_steps``) its ``default_warmup_ratio`` (issue 21); set, they are kept."""

from __future__ import annotations

import math
import re

import pytest
from conftest import build
from scripts.train_tiny import collate, examples

import peftkit
from peftkit.config import PeftConfig
from peftkit.errors import ConfigError
from peftkit.registry import get_method, list_methods
from peftkit.run_config import build_run_config
from peftkit.training import TrainConfig, Trainer
from peftkit.training.config import resolve_lr, resolve_warmup


def trainer_lr(model, tmp_path, **train) -> float:
    cfg = TrainConfig(max_steps=1, batch_size=2, **train)
    trainer = Trainer(model, examples(4), collate, cfg, tmp_path, show_progress=False)
    assert trainer.cfg.lr == trainer.optimizer.defaults["lr"]  # what is saved is what trains
    return trainer.optimizer.defaults["lr"]


def lora():
    return peftkit.get_peft_model(build("llama"), peftkit.LoraConfig(r=4, target_modules=["q_proj"]))


def ptuning():
    return peftkit.get_peft_model(
        build("llama"), peftkit.PTuningConfig(num_virtual_tokens=2, encoder_hidden_size=8)
    )


def test_unset_lr_is_none_and_a_set_one_is_checked():
    assert TrainConfig().lr is None
    with pytest.raises(ConfigError, match="lr"):
        TrainConfig(lr=0.0)


def prompt():
    return peftkit.get_peft_model(build("llama"), peftkit.PromptTuningConfig(num_virtual_tokens=2))


@pytest.mark.parametrize("build_model", [lora, ptuning, prompt], ids=["lora", "ptuning", "prompt"])
def test_unset_lr_takes_the_methods_default(build_model, tmp_path):
    model = build_model()
    assert trainer_lr(model, tmp_path) == model.active_peft_config.default_lr


def test_a_set_lr_wins(tmp_path):
    assert trainer_lr(ptuning(), tmp_path, lr=5e-5) == 5e-5


def test_a_model_without_peftkit_adapters_takes_the_base_default():
    assert resolve_lr(TrainConfig(), build("llama")).lr == PeftConfig.default_lr


def test_active_adapters_with_different_defaults_are_refused():
    class Two:  # two active adapters of methods whose defaults differ
        peft_config = {"a": peftkit.LoraConfig(r=4), "b": peftkit.PTuningConfig(num_virtual_tokens=2)}
        active_adapters = ["a", "b"]

    if peftkit.LoraConfig.default_lr == peftkit.PTuningConfig.default_lr:
        pytest.skip("LoRA and P-tuning share a default rate")
    with pytest.raises(ConfigError, match="set train.lr"):
        resolve_lr(TrainConfig(), Two())
    assert resolve_lr(TrainConfig(lr=1e-3), Two()).lr == 1e-3


REQUIRED = {"adaptlora": {"tasks": ["a", "b"]}, "fusion": {"adapter_names": ["a", "b"]}}


@pytest.mark.parametrize("method", list_methods())
def test_every_methods_default_is_a_positive_rate(method):
    config = get_method(method).config_class(**REQUIRED.get(method, {}))
    rate = config.default_lr
    assert isinstance(rate, float) and math.isfinite(rate) and 0 < rate < 1


def test_resuming_after_the_default_changed_is_refused_naming_the_rate(tmp_path, monkeypatch):
    """The rate a run resolved is in its checkpoints: a later default is a changed config, not a silent
    switch of rate mid-run."""
    cfg = TrainConfig(max_steps=2, batch_size=2, save_every=1)
    Trainer(ptuning(), examples(4), collate, cfg, tmp_path, show_progress=False).train()
    old = peftkit.PTuningConfig.default_lr
    monkeypatch.setattr(peftkit.PTuningConfig, "default_lr", 3e-2)
    resumed = TrainConfig(max_steps=2, batch_size=2, save_every=1)
    with pytest.raises(ConfigError, match=re.escape(f"train.lr {old} -> 0.03")):
        Trainer(ptuning(), examples(4), collate, resumed, tmp_path, show_progress=False).train(resume=True)


def trainer_warmup(model, tmp_path, **train) -> tuple[float, float]:
    """(the warm-up ratio the trainer resolved, its first step's rate as a fraction of the peak)."""
    cfg = TrainConfig(max_steps=10, batch_size=2, lr=1e-2, **train)
    trainer = Trainer(model, examples(4), collate, cfg, tmp_path, show_progress=False)
    return trainer.cfg.warmup_ratio, trainer.scheduler.get_last_lr()[0] / 1e-2


def test_unset_warmup_takes_the_methods_default(tmp_path):
    assert TrainConfig().warmup_ratio is None
    assert peftkit.PTuningConfig.default_warmup_ratio == 0.2
    ratio, first = trainer_warmup(ptuning(), tmp_path / "p")
    assert ratio == 0.2 and first < 1.0  # 2 warm-up steps of 10: the first below the peak
    assert trainer_warmup(lora(), tmp_path / "l") == (0.0, 1.0)  # no warm-up: the peak from step 0


def test_a_set_warmup_wins_and_warmup_steps_replace_the_default(tmp_path):
    assert trainer_warmup(ptuning(), tmp_path / "a", warmup_ratio=0.0) == (0.0, 1.0)
    assert resolve_warmup(TrainConfig(warmup_steps=3), ptuning()).warmup_ratio == 0.0
    assert resolve_warmup(TrainConfig(), build("llama")).warmup_ratio == PeftConfig.default_warmup_ratio


def test_a_run_config_writes_the_methods_warmup():
    """run.yaml records what trained, so a resume compares it (a later default is a changed run)."""

    def run(adapter: dict, **train) -> float:
        config = {"task": {"type": "classification"}, "adapter": adapter, "train": train}
        return build_run_config(config).train.warmup_ratio

    ptune = {"method": "p_tuning", "num_virtual_tokens": 2}
    assert run(ptune) == 0.2 and run(ptune, warmup_ratio=0.05) == 0.05 and run(ptune, warmup_steps=4) == 0.0
    assert run({"method": "lora", "target_modules": ["q_proj"]}) == 0.0


def test_active_adapters_with_different_warmups_are_refused():
    class Two:
        peft_config = {"a": peftkit.LoraConfig(r=4), "b": peftkit.PTuningConfig(num_virtual_tokens=2)}
        active_adapters = ["a", "b"]

    with pytest.raises(ConfigError, match="set train.warmup_ratio"):
        resolve_warmup(TrainConfig(), Two())
    assert resolve_warmup(TrainConfig(warmup_ratio=0.1), Two()).warmup_ratio == 0.1


@pytest.mark.parametrize("method", list_methods())
def test_every_methods_default_warmup_is_a_fraction(method):
    ratio = get_method(method).config_class(**REQUIRED.get(method, {})).default_warmup_ratio
    assert isinstance(ratio, float) and 0 <= ratio < 1
