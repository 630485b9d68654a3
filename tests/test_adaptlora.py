"""AdaPtLoRA: per-task prompts plus shared LoRA gated per task and layer; rows of different tasks in
one batch, inference by task name, gates readable and drawn, multi-task training from a task column."""

from __future__ import annotations

import pytest
import torch
from conftest import build, logits, make_inputs

import peftkit
from peftkit import AdaPtLoraConfig, ConfigError
from peftkit.methods.adaptlora import GatedLoraLinear, gate_values
from peftkit.plotting import write_figures

KW = {"tasks": ["sent", "topic"], "num_virtual_tokens": 2, "r": 4, "target_modules": ["q_proj", "v_proj"]}


def model_with_weights(**extra):
    model = peftkit.get_peft_model(build("llama"), AdaPtLoraConfig(**KW, **extra))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.3)
    return model.eval()


def test_rows_of_different_tasks_equal_running_each_task_alone():
    model = model_with_weights()
    inputs = make_inputs("llama")
    mixed = logits(model, inputs, tasks=["sent", "topic", "sent"])
    for i, task in enumerate(["sent", "topic", "sent"]):
        with model.task(task):
            alone = logits(model, inputs)
        torch.testing.assert_close(mixed[i], alone[i], atol=1e-5, rtol=1e-4)
    with model.task("sent"):
        sent = logits(model, inputs)
    assert not torch.allclose(sent, logits(model, inputs, tasks="topic"), atol=1e-3)


def test_gate_scales_the_shared_update_per_task():
    model = model_with_weights()
    inputs = make_inputs("llama")
    layers = [la for _, la in model.layers() if isinstance(la, GatedLoraLinear)]
    with torch.no_grad():
        for layer in layers:
            layer.lora_gate["default"][0] = -1e4  # task "sent": s = 0, the LoRA is off
    closed = logits(model, inputs, tasks="sent")
    with torch.no_grad():
        for layer in layers:
            layer.lora_B["default"].weight.zero_()
    torch.testing.assert_close(logits(model, inputs, tasks="sent"), closed)  # only its prompt is left
    values = gate_values(model, "default")
    assert set(values) == {f"model.layers.{i}.self_attn.{m}" for i in (0, 1) for m in ("q_proj", "v_proj")}
    assert all(v["sent"] == 0.0 and 0 < v["topic"] < 1 for v in values.values())


def test_gate_is_the_sigmoid_of_the_logit():
    model = peftkit.get_peft_model(build("llama"), AdaPtLoraConfig(**KW, gate_init=1.5))
    for v in gate_values(model, "default").values():
        assert v == {"sent": pytest.approx(1 / (1 + torch.exp(torch.tensor(-1.5)).item()))} | {
            "topic": pytest.approx(1 / (1 + torch.exp(torch.tensor(-1.5)).item()))
        }


def test_the_task_must_be_named_and_known():
    model = model_with_weights()
    inputs = make_inputs("llama")
    with pytest.raises(ConfigError, match="needs the task of each row"):
        logits(model, inputs)
    with pytest.raises(ConfigError, match="unknown task 'nope'"):
        logits(model, inputs, tasks="nope")
    with pytest.raises(ConfigError, match="tasks"):
        AdaPtLoraConfig(tasks=[])
    with pytest.raises(ConfigError, match="distinct"):
        AdaPtLoraConfig(tasks=["a", "a"])


def test_save_load_keeps_every_task(tmp_path):
    model = model_with_weights()
    inputs = make_inputs("llama", seed=4)
    expected = {t: logits(model, inputs, tasks=t) for t in KW["tasks"]}
    model.save_pretrained(tmp_path)
    state, _ = peftkit.checkpoint.read_weights(tmp_path)
    assert state["prompt_embeddings"].shape == (2 * 2, 32)  # tasks * l_p, d
    assert state["base_model.model.model.layers.0.self_attn.q_proj.lora_gate"].shape == (2,)
    loaded = peftkit.PeftModel.from_pretrained(build("llama"), tmp_path)
    for task, out in expected.items():
        torch.testing.assert_close(logits(loaded, inputs, tasks=task), out)


def test_decoding_by_task_name():
    model = model_with_weights()
    ids = torch.randint(3, 90, (2, 4), generator=torch.Generator().manual_seed(2))
    with model.task("topic"):
        a = model.generate(ids, max_new_tokens=4)
        b = model.generate(ids, max_new_tokens=4)
    assert torch.equal(a, b) and a.shape == (2, 8)
    with model.task("sent"):
        first = model(input_ids=ids).logits[:, -1].argmax(-1)
    with model.task("sent"):
        assert torch.equal(model.generate(ids, max_new_tokens=1)[:, -1], first)


def test_multi_task_training_from_a_task_column(tmp_path):
    from tiny_tokenizer import tiny_tokenizer

    from peftkit.data import Collator, TaskSpec, encode
    from peftkit.training import TrainConfig, Trainer

    records = [
        {"text": f"{w} {i}", "label": i % 2, "task": "sent" if i % 3 else "topic"}
        for i, w in enumerate(["good", "bad", "fine", "poor"] * 6)
    ]
    spec = TaskSpec(type="classification", task_column="task", max_length=16)
    assert spec.required_columns() == ["text", "label", "task"]
    encoded = encode(records, tiny_tokenizer(), spec)
    assert {e["tasks"] for e in encoded.examples} == {"sent", "topic"}
    batch = Collator(0)(encoded.examples[:4])
    assert batch["tasks"] == [e["tasks"] for e in encoded.examples[:4]]
    config = AdaPtLoraConfig(tasks=["sent", "topic"], num_virtual_tokens=2, r=2, target_modules=["q_proj"])
    config.modules_to_save = ["score"]
    model = peftkit.get_peft_model(build("llama_cls"), config)
    prompts_before = model.prompt_encoder["default"].prompts.detach().clone()
    Trainer(
        model,
        encoded.examples,
        Collator(0),
        TrainConfig(lr=1e-2, max_steps=3, batch_size=8),
        tmp_path,
        show_progress=False,
    ).train()
    moved = (model.prompt_encoder["default"].prompts - prompts_before).abs().sum(dim=(1, 2))
    assert bool((moved > 0).all()), "every task's prompt trains"
    gates = gate_values(model, "default")
    assert any(v["sent"] != 0.5 for v in gates.values())


def test_gates_figure(tmp_path):
    pytest.importorskip("matplotlib")
    model = model_with_weights()
    (png,) = write_figures(model, tmp_path)
    assert png.name == "gates_default.png" and png.stat().st_size > 1000
