"""peftkit as a drop-in for peft, beyond the ported checks (tests/peft_compat): what peftkit's own machinery
keeps (its training checkpoints' keys, its trainer's loss), the trainers' integration (transformers' and
TRL's), peft's forward reachable on the virtual-token stage, and generate's arguments."""

from __future__ import annotations

import json

import peft
import pytest
import torch
import transformers
from conftest import build, make_inputs, tiny_llama
from safetensors.torch import load_file
from scripts.train_tiny import collate, examples

import peftkit
from peftkit import hf_integration
from peftkit.training import TrainConfig, Trainer


def tiny_lora(**kw):
    torch.manual_seed(0)
    config = peftkit.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM", **kw)
    return peftkit.get_peft_model(build("llama"), config)


# ---- peftkit's own training ----------------------------------------------------------------------------
def test_training_checkpoints_keep_their_keys(tmp_path):
    """The tuner level in parameter names (``base_model.model.<path>``) stays out of peftkit's training
    checkpoints: their keys are ``base_model.<path>``, as before, so older runs resume."""
    cfg = TrainConfig(lr=1e-2, max_steps=2, batch_size=4, save_every=2)
    Trainer(tiny_lora(), examples(8), collate, cfg, tmp_path, show_progress=False).train()
    keys = set(load_file(tmp_path / "checkpoints" / "step-0000002" / "trainable.safetensors"))
    assert "base_model.model.layers.0.self_attn.q_proj.lora_A.default.weight" in keys
    assert not any(k.startswith("base_model.model.model.") for k in keys)


def test_adalora_penalty_is_counted_once_in_peftkits_trainer(tmp_path):
    """The forward's loss carries peft's AdaLoRA term; peftkit's trainer adds its own term and switches the
    forward's off, so the logged loss is the task loss plus one penalty."""
    torch.manual_seed(0)
    config = peftkit.AdaLoraConfig(
        target_modules=["q_proj", "v_proj"], init_r=4, target_r=2, total_step=1, orth_reg_weight=0.5
    )
    model = peftkit.get_peft_model(build("llama"), config)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.3)  # factors far from orthogonal: a large penalty
    batch = collate(examples(4))
    model.train()
    task = model.get_base_model()(**batch).loss.item()
    penalty = model.regularization_loss().item()
    assert model(**batch).loss.item() > task + 1e-3  # peft's term in the forward's loss
    trainer = Trainer(model, examples(4), collate, TrainConfig(lr=1e-3, max_steps=1, batch_size=4), tmp_path)
    loss, _ = trainer._step(0)
    assert loss == pytest.approx(task + penalty, rel=1e-5)


# ---- transformers' and TRL's trainers -----------------------------------------------------------------
def test_trainers_recognise_peftkit_models_until_unregistered():
    import transformers.trainer as hf_trainer
    import transformers.trainer_utils as hf_utils

    # transformers 5.0 defines _is_peft_model in trainer.py only; later releases in trainer_utils.py
    checks = [m._is_peft_model for m in (hf_utils, hf_trainer) if hasattr(m, "_is_peft_model")]
    assert checks
    model = tiny_lora()
    assert all(check(model) for check in checks)
    if hasattr(hf_utils, "unwrap_peft_model"):
        assert hf_utils.unwrap_peft_model(model) is model.get_base_model()
    assert not any(check(build("llama")) for check in checks)  # anything else: the original check
    hf_integration.unregister()
    try:
        checks = [m._is_peft_model for m in (hf_utils, hf_trainer) if hasattr(m, "_is_peft_model")]
        assert not any(check(model) for check in checks)
        assert hf_trainer.PeftModel is peft.PeftModel
    finally:
        hf_integration.register()
    checks = [m._is_peft_model for m in (hf_utils, hf_trainer) if hasattr(m, "_is_peft_model")]
    assert all(check(model) for check in checks)


def test_plain_peft_model_in_trainer_reports_eval_loss(tmp_path):
    """Without a task type (a plain PeftModel, whose forward names no labels) the Trainer still finds the
    label column through the wrapped model, as for peft's models."""
    model = peftkit.get_peft_model(build("llama"), peftkit.LoraConfig(r=4, target_modules=["q_proj"]))
    assert type(model) is peftkit.PeftModel
    args = transformers.TrainingArguments(
        str(tmp_path), report_to=[], use_cpu=True, per_device_eval_batch_size=4
    )
    metrics = transformers.Trainer(model=model, args=args, eval_dataset=examples(8)).evaluate()
    assert "eval_loss" in metrics


@pytest.fixture
def sft_run(tmp_path):
    trl = pytest.importorskip("trl")
    from datasets import Dataset
    from tiny_tokenizer import tiny_tokenizer

    tok = tiny_tokenizer()
    texts = ["the movie was very good and the plot", "a dull film with a bad story", "what a fun cat"]
    rows = [{"text": texts[i % 3]} for i in range(12)]

    def base():
        torch.manual_seed(0)
        return tiny_llama(vocab_size=len(tok)).eval()

    def model():
        return peftkit.get_peft_model(
            base(), peftkit.LoraConfig(task_type="CAUSAL_LM", target_modules=["q_proj", "v_proj"])
        )

    def run(out, resume=None, **kw):
        args = trl.SFTConfig(
            output_dir=str(out),
            max_steps=4,
            save_strategy="steps",
            save_steps=2,
            per_device_train_batch_size=4,
            learning_rate=1e-2,
            report_to=[],
            use_cpu=True,
            bf16=False,  # else accelerate leaves the model's forward under bf16 autocast
            **kw,
        )
        peft_model = model()
        trainer = trl.SFTTrainer(
            model=peft_model,
            args=args,
            train_dataset=Dataset.from_list(rows),
            eval_dataset=Dataset.from_list(rows[:6]),
            processing_class=tok,
        )
        trainer.train(resume_from_checkpoint=resume)
        return trainer, peft_model.eval()

    return run, base, tmp_path


def test_sft_trainer_checkpoints_are_peft_adapters(sft_run):
    run, base, tmp_path = sft_run
    trainer, trained = run(tmp_path / "a")
    ckpt = tmp_path / "a" / "checkpoint-4"
    names = {p.name for p in ckpt.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json"} <= names
    assert not names & {"model.safetensors", "pytorch_model.bin"}
    x = {"input_ids": torch.tensor([[5, 6, 7, 8]])}
    theirs = peft.PeftModel.from_pretrained(base(), ckpt).eval()
    torch.testing.assert_close(theirs(**x).logits, trained(**x).logits)
    assert "eval_loss" in trainer.evaluate()


def test_sft_trainer_resumes_and_loads_the_best_checkpoint(sft_run):
    run, _, tmp_path = sft_run
    _, straight = run(tmp_path / "a")
    trainer, resumed = run(tmp_path / "b", resume=str(tmp_path / "a" / "checkpoint-2"))
    assert trainer.state.global_step == 4
    x = {"input_ids": torch.tensor([[5, 6, 7, 8]])}
    torch.testing.assert_close(resumed(**x).logits, straight(**x).logits, atol=1e-5, rtol=1e-5)
    best = dict(
        eval_strategy="steps", eval_steps=2, load_best_model_at_end=True, metric_for_best_model="eval_loss"
    )
    trainer, _ = run(tmp_path / "c", **best)
    assert trainer.state.best_model_checkpoint is not None


# ---- peft's forward on the virtual-token stage --------------------------------------------------------
PROMPTS = [
    pytest.param("PromptTuningConfig", {}, id="prompt"),
    pytest.param("PrefixTuningConfig", {}, id="prefix"),
    pytest.param("PromptEncoderConfig", {"encoder_hidden_size": 16}, id="ptuning"),
]


@pytest.mark.parametrize(("name", "extra"), PROMPTS)
def test_peft_forward_gives_peft_outputs_for_padded_rows(name, extra, tmp_path):
    """peftkit counts a row's real tokens and returns the real tokens' logits; ``peft_forward`` gives peft's
    positions and its virtual-token logits: the same outputs as peft on the same checkpoint."""
    x = make_inputs("llama")  # its first row is left-padded
    torch.manual_seed(0)
    config = getattr(peft, name)(task_type="CAUSAL_LM", num_virtual_tokens=4, **extra)
    theirs = peft.get_peft_model(build("llama"), config).eval()
    theirs.save_pretrained(tmp_path)
    ours = peftkit.PeftModel.from_pretrained(build("llama"), tmp_path)
    with torch.no_grad():
        expected = theirs(**x).logits
        ours.prompt_encoder.peft_forward = True
        torch.testing.assert_close(ours(**x).logits, expected)
        ours.prompt_encoder.peft_forward = False
        assert ours(**x).logits.shape[1] == x["input_ids"].shape[1]


# ---- generate: transformers' arguments ----------------------------------------------------------------
def test_generate_follows_the_given_generation_config_and_refuses_what_it_cannot_do():
    model, x = tiny_lora(), make_inputs("llama")
    base = build("llama")
    gen = transformers.GenerationConfig(max_new_tokens=3, no_repeat_ngram_size=2)
    expected = base.generate(**x, generation_config=gen)
    assert torch.equal(model.generate(**x, generation_config=gen), expected)
    assert torch.equal(
        model.generate(**x, min_length=8, max_length=9), base.generate(**x, min_length=8, max_length=9)
    )
    with pytest.raises(peftkit.ConfigError, match="typical_p"):
        model.generate(**x, do_sample=True, typical_p=0.5)
    with pytest.raises(peftkit.ConfigError, match="output_scores"):
        model.generate(**x, num_beams=2, output_scores=True)
    with pytest.raises(peftkit.ConfigError, match="use_cache"):
        model.generate(**x, use_cache=False)


def test_sampled_scores_are_the_warped_ones():
    model, x = tiny_lora(), make_inputs("llama")
    torch.manual_seed(1)
    out = model.generate(
        **x, do_sample=True, top_k=5, max_new_tokens=2, return_dict_in_generate=True, output_scores=True
    )
    assert [int(torch.isfinite(s).sum(-1).max()) for s in out.scores] == [5, 5]  # top-k left 5 per row


def test_saved_config_names_the_base_for_auto_classes(tmp_path):
    base = build("llama")
    base.save_pretrained(tmp_path / "base")
    model = peftkit.get_peft_model(
        transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base"),
        peftkit.LoraConfig(r=4, target_modules=["q_proj"]),
    )
    model.save_pretrained(tmp_path / "adapter")
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert saved["base_model_name_or_path"] == str(tmp_path / "base")
    assert saved["auto_mapping"]["base_model_class"] == "LlamaForCausalLM"  # no task type: AutoPeftModel's
    loaded = peftkit.AutoPeftModel.from_pretrained(tmp_path / "adapter")
    assert type(loaded.get_base_model()).__name__ == "LlamaForCausalLM"
