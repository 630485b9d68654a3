"""The training loop: exact resume after SIGKILL, schedules, accumulation, early stopping, logs."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import build
from safetensors.torch import load_file
from scripts.train_tiny import collate, examples

import peftkit
from peftkit.training import TrainConfig, Trainer
from peftkit.training.schedule import lr_factor

SCRIPT = Path(__file__).parent / "scripts" / "train_tiny.py"


def run_script(out: Path, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), str(out), *flags], capture_output=True, text=True, timeout=300
    )


def test_sigkill_then_resume_is_bit_identical(tmp_path):
    full = run_script(tmp_path / "full")
    assert full.returncode == 0, full.stderr
    killed = run_script(tmp_path / "crash", "--kill-after", "15")  # 2 micro-batches/step: dies in step 8
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "crash" / "adapter").exists()
    steps = sorted(p.name for p in (tmp_path / "crash" / "checkpoints").glob("step-*"))
    assert steps == ["step-0000003", "step-0000006"]
    resumed = run_script(tmp_path / "crash", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    a = load_file(tmp_path / "full" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "crash" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"
    rows = [json.loads(x) for x in (tmp_path / "crash" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 13))  # nothing logged twice, nothing lost


def tiny_lora():
    return peftkit.get_peft_model(
        build("llama"), peftkit.LoraConfig(r=4, target_modules=["q_proj", "v_proj"])
    )


def test_schedules():
    assert lr_factor(0, 10, 2, "linear") == 0.5 and lr_factor(1, 10, 2, "linear") == 1.0
    assert lr_factor(6, 10, 2, "linear") == pytest.approx(0.5)
    assert lr_factor(6, 10, 2, "cosine") == pytest.approx(0.5)
    assert lr_factor(10, 10, 2, "cosine") == pytest.approx(0.0)
    assert lr_factor(7, 10, 0, "constant") == 1.0


def test_accumulation_matches_a_larger_batch(tmp_path):
    weights = []
    for bs, acc in ((4, 1), (2, 2)):
        model = tiny_lora()
        cfg = TrainConfig(lr=1e-2, max_steps=3, batch_size=bs, grad_accum=acc, max_grad_norm=0)
        Trainer(model, examples(12), collate, cfg, tmp_path / f"{bs}", show_progress=False).train()
        weights.append({k: v.clone() for k, v in model.adapter_state_dict("default").items()})
    for k in weights[0]:
        torch.testing.assert_close(weights[0][k], weights[1][k], atol=1e-6, rtol=1e-5)


def test_early_stopping_and_metrics_log(tmp_path):
    scores = iter([0.5, 0.6, 0.4, 0.3, 0.2, 0.1])
    cfg = TrainConfig(
        lr=1e-3,
        max_steps=20,
        batch_size=4,
        eval_every=2,
        early_stopping_patience=2,
        metric_for_best="eval_accuracy",
        log_every=1,
    )
    result = Trainer(
        tiny_lora(),
        examples(),
        collate,
        cfg,
        tmp_path,
        show_progress=False,
        eval_fn=lambda m: {"eval_accuracy": next(scores)},
    ).train()
    assert result.stopped_early and result.steps == 8 and result.best == {"step": 4, "eval_accuracy": 0.6}
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "eval_accuracy" in r] == [2, 4, 6, 8]
    train_rows = [r for r in rows if "train_loss" in r]
    assert len(train_rows) == 8 and all(r["tokens_per_s"] > 0 for r in train_rows)


def test_bad_metric_for_best_is_named(tmp_path):
    cfg = TrainConfig(max_steps=2, batch_size=4, eval_every=1, metric_for_best="eval_f1")
    with pytest.raises(ValueError, match="eval_f1"):
        Trainer(
            tiny_lora(),
            examples(),
            collate,
            cfg,
            tmp_path,
            show_progress=False,
            eval_fn=lambda m: {"eval_loss": 1.0},
        ).train()


def test_gradient_checkpointing_and_bf16_run(tmp_path):
    for kw in ({"gradient_checkpointing": True}, {"bf16": True}):
        model = tiny_lora()
        before = model.adapter_state_dict("default")[
            "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"
        ].clone()
        cfg = TrainConfig(lr=1e-2, max_steps=2, batch_size=4, **kw)
        Trainer(model, examples(8), collate, cfg, tmp_path / str(kw), show_progress=False).train()
        after = model.adapter_state_dict("default")[
            "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"
        ]
        assert not torch.equal(before, after)


def test_resume_without_checkpoint_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        Trainer(
            tiny_lora(), examples(), collate, TrainConfig(max_steps=2), tmp_path, show_progress=False
        ).train(resume=True)


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="schedule"):
        TrainConfig(schedule="exp")
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=0)


def test_works_inside_transformers_trainer(tmp_path):
    import transformers

    model = tiny_lora()
    before = {k: v.clone() for k, v in model.adapter_state_dict("default").items()}
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=3,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        logging_steps=1,
    )
    trainer = transformers.Trainer(model=model, args=args, train_dataset=examples())
    trainer.train()
    after = model.adapter_state_dict("default")
    assert any(not torch.equal(before[k], after[k]) for k in before)
    model.save_pretrained(
        tmp_path / "saved"
    )  # transformers.Trainer saves only PreTrainedModel/peft via save_pretrained
    loaded = peftkit.PeftModel.from_pretrained(build("llama"), tmp_path / "saved")
    ids = torch.tensor([[5, 6, 7]])
    torch.testing.assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits)
