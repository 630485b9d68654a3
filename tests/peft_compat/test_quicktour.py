"""peft's quicktour (``docs/source/quicktour.md``), its nine steps on a tiny Llama with the test tokenizer.

Only the model names are changed (a tiny model saved to a temporary folder stands in for
``meta-llama/Llama-3.2-1B``), and ``report_to=[]`` / ``use_cpu=True`` are added to the TrainingArguments.
Step 8 passes the config that the page's ``add_adapter(adapter_name='new_adapter')`` leaves out (peft's
``add_adapter`` requires it).
"""

from __future__ import annotations

import contextlib
import io
import re

import pytest
import torch
import transformers
from tiny_tokenizer import tiny_tokenizer

from .support import adapter_params, perturb, word_llama


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llama")
    word_llama().save_pretrained(folder)
    return folder


def load_base(base_dir):
    return transformers.AutoModelForCausalLM.from_pretrained(base_dir)


def quicktour_config(lib):
    return lib.LoraConfig(
        target_modules=["q_proj"],
        task_type=lib.TaskType.CAUSAL_LM,
        inference_mode=False,
        r=8,
        lora_alpha=32,
        lora_dropout=0.1,
    )


def test_step1_config(lib):
    config = quicktour_config(lib)
    assert config.task_type == "CAUSAL_LM" and config.inference_mode is False
    assert (config.r, config.lora_alpha, config.lora_dropout) == (8, 32, 0.1)


def test_step2_get_peft_model_and_print_trainable_parameters(lib, base_dir):
    peft_model = lib.get_peft_model(load_base(base_dir), quicktour_config(lib))
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        peft_model.print_trainable_parameters()
    match = re.fullmatch(
        r"trainable params: ([\d,]+) \|\| all params: ([\d,]+) \|\| trainable%: ([\d.]+)",
        buffer.getvalue().strip(),
    )
    assert match, buffer.getvalue()
    trainable, total = (int(g.replace(",", "")) for g in match.groups()[:2])
    assert trainable == sum(p.numel() for p in peft_model.parameters() if p.requires_grad) == 2 * 2 * 8 * 32
    assert total == sum(p.numel() for p in peft_model.parameters())


def lm_rows(n: int, seed: int) -> list[dict]:
    tok = tiny_tokenizer()
    g = torch.Generator().manual_seed(seed)
    words = tok.convert_ids_to_tokens(list(range(8, len(tok) - 12)))
    rows = []
    for _ in range(n):
        text = " ".join(words[i] for i in torch.randint(len(words), (6,), generator=g).tolist())
        ids = tok(text)["input_ids"]
        rows.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": list(ids)})
    return rows


def compute_metrics(eval_pred):
    logits, labels = eval_pred
    predictions = logits[:, :-1].argmax(-1)
    return {"accuracy": float((predictions == labels[:, 1:]).mean())}


def test_step3_train_with_trainer(lib, base_dir, tmp_path):
    peft_model = lib.get_peft_model(load_base(base_dir), quicktour_config(lib))
    training_args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "your-name/my-llama3.2-adapter"),
        learning_rate=1e-3,
        per_device_train_batch_size=32,
        per_device_eval_batch_size=32,
        num_train_epochs=2,
        weight_decay=0.01,
        eval_strategy="epoch",
        save_strategy="epoch",
        load_best_model_at_end=True,
        report_to=[],
        use_cpu=True,
    )
    trainer = transformers.Trainer(
        model=peft_model,
        args=training_args,
        train_dataset=lm_rows(16, seed=0),
        eval_dataset=lm_rows(8, seed=1),
        data_collator=transformers.default_data_collator,
        compute_metrics=compute_metrics,
    )
    trainer.train()
    assert trainer.state.best_model_checkpoint is not None
    assert "eval_accuracy" in trainer.evaluate()


@pytest.fixture
def saved(lib, base_dir, tmp_path):
    peft_model = lib.get_peft_model(load_base(base_dir), quicktour_config(lib))
    perturb(peft_model)
    peft_model.eval()
    peft_model.save_pretrained(tmp_path / "output_dir")
    return tmp_path / "output_dir", peft_model


def test_step4_save_pretrained_writes_only_the_adapter(saved):
    folder, _ = saved
    names = {p.name for p in folder.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= names
    assert names <= {"adapter_config.json", "adapter_model.safetensors", "README.md"}


def test_step5_auto_peft_model_for_causal_lm_and_generate(lib, saved):
    folder, trained = saved
    peft_model = lib.AutoPeftModelForCausalLM.from_pretrained(folder)
    tokenizer = tiny_tokenizer()
    peft_model = peft_model.to("cpu")
    peft_model.eval()
    inputs = tokenizer("the movie was very good and the plot", return_tensors="pt")
    outputs = peft_model.generate(input_ids=inputs["input_ids"].to(peft_model.device), max_new_tokens=50)
    text = tokenizer.batch_decode(outputs.detach().cpu().numpy(), skip_special_tokens=True)[0]
    assert text.startswith("the movie was very good and the plot")
    expected = trained.generate(input_ids=inputs["input_ids"], max_new_tokens=50)
    assert torch.equal(outputs, expected)


def test_step6_auto_peft_model(lib, base_dir, tmp_path):
    plain = lib.LoraConfig(target_modules=["q_proj"], r=8)  # no task type: the plain AutoPeftModel's case
    lib.get_peft_model(load_base(base_dir), plain).save_pretrained(tmp_path)
    peft_model = lib.AutoPeftModel.from_pretrained(tmp_path)
    assert isinstance(peft_model, lib.PeftModel)


def test_step7_peft_model_from_pretrained(lib, saved, base_dir):
    folder, trained = saved
    base_model = transformers.AutoModelForCausalLM.from_pretrained(base_dir)
    peft_model = lib.PeftModel.from_pretrained(base_model, folder)
    ids = torch.tensor([[5, 6, 7, 8]])
    torch.testing.assert_close(peft_model(input_ids=ids).logits, trained(input_ids=ids).logits)


def test_step8_add_adapter(lib, saved):
    _, peft_model = saved
    peft_model.add_adapter(adapter_name="new_adapter", peft_config=quicktour_config(lib))
    assert set(peft_model.peft_config) == {"default", "new_adapter"}
    assert peft_model.active_adapter == "default"


def test_step9_set_adapter(lib, saved):
    _, peft_model = saved
    peft_model.add_adapter(adapter_name="new_adapter", peft_config=quicktour_config(lib))
    peft_model.set_adapter("new_adapter")
    assert peft_model.active_adapter == "new_adapter"
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable == set(adapter_params(peft_model, "new_adapter"))
