"""``transformers.Trainer`` with a wrapped model, as peft users run it: adapter-only checkpoints every
``save_steps`` (loadable by peft itself), ``evaluate()``'s ``eval_loss``, ``load_best_model_at_end`` and
``resume_from_checkpoint``."""

from __future__ import annotations

import copy

import peft
import pytest
import torch
import transformers
from safetensors.torch import load_file

from .support import base_model, inputs_for, lm_rows, output, trainer_args

X = inputs_for("llama")


def args(tmp_path, **kw) -> transformers.TrainingArguments:
    defaults = {"per_device_train_batch_size": 4, "per_device_eval_batch_size": 8, "learning_rate": 1e-2}
    defaults["max_steps"] = 4
    return trainer_args(tmp_path / "run", **{**defaults, **kw})


def lora_llama(lib):
    torch.manual_seed(0)
    return lib.get_peft_model(
        base_model("llama"), lib.LoraConfig(target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    )


def trained_with_checkpoints(lib, tmp_path):
    model = lora_llama(lib)
    trainer = transformers.Trainer(
        model=model, args=args(tmp_path, save_strategy="steps", save_steps=2), train_dataset=lm_rows()
    )
    trainer.train()
    return model.eval(), tmp_path / "run"


def test_checkpoints_hold_only_the_adapter(lib, tmp_path):
    model, run = trained_with_checkpoints(lib, tmp_path)
    assert {p.name for p in run.iterdir() if p.name.startswith("checkpoint-")} == {
        "checkpoint-2",
        "checkpoint-4",
    }
    for step in (2, 4):
        names = {p.name for p in (run / f"checkpoint-{step}").iterdir()}
        assert {"adapter_model.safetensors", "adapter_config.json"} <= names
        assert not names & {"model.safetensors", "pytorch_model.bin"}
    loaded = lib.PeftModel.from_pretrained(base_model("llama"), run / "checkpoint-4")
    torch.testing.assert_close(output(loaded, X), output(model, X))


def test_checkpoint_loads_in_peft(lib, tmp_path):
    model, run = trained_with_checkpoints(lib, tmp_path)
    loaded = peft.PeftModel.from_pretrained(base_model("llama"), run / "checkpoint-4")
    torch.testing.assert_close(output(loaded, X), output(model, X))


def test_evaluate_reports_eval_loss(lib, tmp_path):
    model = lora_llama(lib)
    eval_rows = lm_rows(8, seed=1)
    metrics = transformers.Trainer(model=model, args=args(tmp_path), eval_dataset=eval_rows).evaluate()
    # the plain transformers model with the adapter merged in, evaluated by the same Trainer (transformers
    # 5.0's Trainer reports another number than the model's own loss even for a plain model)
    plain = copy.deepcopy(model).merge_and_unload()
    expected = transformers.Trainer(model=plain, args=args(tmp_path), eval_dataset=eval_rows).evaluate()
    assert metrics["eval_loss"] == pytest.approx(expected["eval_loss"], rel=1e-5)


def test_load_best_model_at_end(lib, tmp_path):
    model = lora_llama(lib)
    trainer = transformers.Trainer(
        model=model,
        args=args(
            tmp_path,
            eval_strategy="steps",
            eval_steps=1,
            save_strategy="steps",
            save_steps=1,
            load_best_model_at_end=True,
            metric_for_best_model="eval_loss",
            learning_rate=0.5,
        ),
        train_dataset=lm_rows(),
        eval_dataset=lm_rows(8, seed=1),
    )
    trainer.train()
    best = trainer.state.best_model_checkpoint
    assert best is not None
    reference = lib.PeftModel.from_pretrained(base_model("llama"), best)
    torch.testing.assert_close(output(model.eval(), X), output(reference, X))


def test_resume_from_checkpoint(lib, tmp_path):
    model, run = trained_with_checkpoints(lib, tmp_path / "first")
    resumed = lora_llama(lib)
    trainer = transformers.Trainer(
        model=resumed,
        args=args(tmp_path / "second", save_strategy="steps", save_steps=2),
        train_dataset=lm_rows(),
    )
    trainer.train(resume_from_checkpoint=str(run / "checkpoint-2"))
    assert trainer.state.global_step == 4
    torch.testing.assert_close(output(resumed.eval(), X), output(model, X), atol=1e-5, rtol=1e-5)


def test_seq_cls_checkpoint_holds_the_head(lib, tmp_path):
    torch.manual_seed(0)
    model = lib.get_peft_model(
        base_model("bert_cls"), lib.LoraConfig(task_type="SEQ_CLS", target_modules=["query", "value"])
    )
    data = [{**r, "labels": torch.tensor(i % 3)} for i, r in enumerate(lm_rows())]
    transformers.Trainer(
        model=model, args=args(tmp_path, max_steps=2, save_strategy="steps", save_steps=2), train_dataset=data
    ).train()
    keys = load_file(tmp_path / "run" / "checkpoint-2" / "adapter_model.safetensors")
    assert any("classifier" in k for k in keys)
