"""Training precision: the frozen base in bf16 where asked or detected, everything that trains in fp32,
the base never cast per step; and how the trainer and the pipeline take the new options."""

from __future__ import annotations

import pytest
import torch
from conftest import build
from safetensors.torch import load_file
from scripts.train_tiny import collate, examples
from torch.utils._python_dispatch import TorchDispatchMode

import peftkit
from peftkit import precision
from peftkit.data import Collator
from peftkit.data.packing import PackedBatch, PackingCollator, training_collator
from peftkit.errors import ConfigError
from peftkit.training import TrainConfig, Trainer
from peftkit.training.chunked_loss import CausalLMLoss


def test_base_dtype_follows_precision_and_detection(monkeypatch):
    monkeypatch.setattr(precision, "bf16_speedup", lambda device="cpu": 2.0)
    assert precision.base_dtype("fp32") == torch.float32
    assert precision.base_dtype("bf16") == torch.bfloat16
    assert precision.base_dtype("auto", "bfloat16") == torch.bfloat16
    monkeypatch.setattr(precision, "fast_bf16", lambda device="cpu": True)
    assert precision.base_dtype("auto") == torch.bfloat16
    monkeypatch.setattr(precision, "fast_bf16", lambda device="cpu": False)
    assert precision.base_dtype("auto") == torch.float32
    with pytest.raises(ConfigError, match="train.precision: fp32 asks for a float32 base but model.dtype"):
        precision.base_dtype("fp32", "bfloat16")
    with pytest.raises(ConfigError, match="train.precision: got 'fp16'"):
        precision.base_dtype("fp16")


@pytest.mark.parametrize(
    ("precision_", "model_dtype", "named"),
    [("bf16", "float32", "train.precision: bf16"), ("auto", "bfloat16", "model.dtype: bfloat16")],
)
def test_a_forced_bf16_base_on_slow_bf16_hardware_is_warned_about_by_name(
    monkeypatch, precision_, model_dtype, named
):
    """An AVX2-only CPU emulates bf16 matmuls ~100x slower than fp32: asking for a bf16 base there is
    kept (the user said so) but warned about, naming the setting and what to use instead."""
    monkeypatch.setattr(precision, "bf16_speedup", lambda device="cpu": 0.01)
    with pytest.warns(
        precision.SlowBf16Warning, match=f"{named} asks for bfloat16.*0.01x.*train.precision: auto"
    ):
        assert precision.base_dtype(precision_, model_dtype) == torch.bfloat16
    assert precision.base_dtype("auto") == torch.float32  # auto never picks the slow dtype


def test_auto_compute_dtype_follows_detection(monkeypatch):
    """``model.compute_dtype: auto`` (the default) is a 4-bit base's matmul dtype, as detected."""
    from peftkit.pipeline import _compute_dtype
    from peftkit.run_config import build_run_config

    run = build_run_config(
        {"model": {"name": "x", "quantize": "nf4"}, "data": {"train": "x.jsonl"}, "task": {"type": "sft"}}
    )
    assert run.model.compute_dtype == "auto"
    for speedup, dtype in ((0.01, torch.float32), (3.0, torch.bfloat16)):
        monkeypatch.setattr(precision, "bf16_speedup", lambda device="cpu", s=speedup: s)
        assert _compute_dtype(run) == dtype
    monkeypatch.setattr(precision, "bf16_speedup", lambda device="cpu": 0.01)
    forced = build_run_config(
        {
            "model": {"name": "x", "quantize": "nf4", "compute_dtype": "bfloat16"},
            "data": {"train": "x.jsonl"},
            "task": {"type": "sft"},
        }
    )
    with pytest.warns(precision.SlowBf16Warning, match="model.compute_dtype: bfloat16"):
        assert _compute_dtype(forced) == torch.bfloat16


def test_the_speed_probe_leaves_the_global_rng_alone():
    """The probe runs once per process, wherever the first caller is (possibly after a seed was set for
    the adapters' draws): it must not consume the global generator, or runs would differ by process."""
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    precision._matmul_seconds(torch.float32, "cpu", 16, 1)
    assert torch.equal(torch.rand(3), expected)


def test_speedup_is_measured_once():
    first = precision.bf16_speedup("cpu")
    assert first > 0 and precision.bf16_speedup("cpu") == first


class Created(TorchDispatchMode):
    """Records (shape, dtype) of every tensor an op produces."""

    def __init__(self):
        super().__init__()
        self.seen: set[tuple[tuple[int, ...], torch.dtype]] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.seen.add((tuple(t.shape), t.dtype))
        return out


def test_bf16_base_trains_fp32_adapters_and_is_never_cast(tmp_path):
    model = peftkit.get_peft_model(
        build("llama").to(torch.bfloat16), peftkit.LoraConfig(r=4, target_modules="all-linear")
    )
    frozen = {tuple(p.shape) for p in model.parameters() if not p.requires_grad and p.dim() == 2}
    cfg = TrainConfig(lr=1e-2, max_steps=2, batch_size=5, max_grad_norm=0, precision="bf16")
    trainer = Trainer(model, examples(10), collate, cfg, tmp_path, show_progress=False)
    with Created() as created:
        trainer.train()
    assert not {(shape, torch.float32) for shape in frozen} & created.seen  # no fp32 copy of a base weight
    assert all(p.dtype == torch.float32 for p in trainer.params)
    state = trainer.optimizer.state[trainer.params[0]]
    assert state["exp_avg"].dtype == torch.float32
    assert all(p.dtype == torch.bfloat16 for p in model.parameters() if not p.requires_grad)
    model.save_pretrained(tmp_path / "adapter")  # the saved format is the fp32 one
    saved = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert saved and all(t.dtype == torch.float32 for t in saved.values())
    again = peftkit.PeftModel.from_pretrained(build("llama").to(torch.bfloat16), tmp_path / "adapter")
    ours = {k: v for k, v in model.state_dict().items() if "lora_" in k}
    theirs = {k: v for k, v in again.state_dict().items() if "lora_" in k}
    assert ours.keys() == theirs.keys()
    for key in ours:
        torch.testing.assert_close(theirs[key], ours[key], rtol=0, atol=0)


def test_a_precision_not_offered_is_refused_by_name():
    from peftkit.run_config import build_run_config

    with pytest.raises(ConfigError, match=r"train.precision: must be one of \['auto', 'bf16', 'fp32'\]"):
        build_run_config({"task": {"type": "sft"}, "train": {"precision": "fp16"}})
    with pytest.raises(ConfigError, match=r"train.lm_loss: must be one of"):
        build_run_config({"task": {"type": "sft"}, "train": {"lm_loss": "fused"}})


def test_trainable_base_copies_become_fp32_islands(tmp_path):
    model = peftkit.get_peft_model(
        build("llama").to(torch.bfloat16),
        peftkit.LoraConfig(r=4, target_modules=["q_proj"], modules_to_save=["lm_head"]),
    )
    assert precision.half_trainable(model) == ["base_model.model.lm_head.modules_to_save.default.weight"]
    cfg = TrainConfig(lr=1e-2, max_steps=2, batch_size=5, max_grad_norm=0)
    trainer = Trainer(model, examples(10), collate, cfg, tmp_path, show_progress=False)
    assert precision.half_trainable(model) == []
    assert model.get_base_model().lm_head.original_module.weight.dtype == torch.bfloat16  # frozen: untouched
    result = trainer.train()
    assert result.steps == 2 and all(torch.isfinite(torch.tensor(r["train_loss"])) for r in result.history)
    out = model(**collate(examples(2))).logits
    assert out.dtype == torch.bfloat16  # the island hands back the dtype it was given


def test_trainer_refuses_a_base_in_another_precision(tmp_path):
    model = peftkit.get_peft_model(
        build("llama").to(torch.bfloat16), peftkit.LoraConfig(r=2, target_modules=["q_proj"])
    )
    cfg = TrainConfig(max_steps=1, batch_size=2, precision="fp32")
    with pytest.raises(ConfigError, match=r"train.precision: fp32 was asked for but the base is loaded in"):
        Trainer(model, examples(4), collate, cfg, tmp_path, show_progress=False)


def test_trainer_warns_of_bf16_autocast_on_slow_bf16_hardware(tmp_path, monkeypatch):
    monkeypatch.setattr(precision, "bf16_speedup", lambda device="cpu": 0.01)
    model = peftkit.get_peft_model(build("llama"), peftkit.LoraConfig(r=2, target_modules=["q_proj"]))
    with pytest.warns(precision.SlowBf16Warning, match=r"train.bf16 \(autocast\) asks for bfloat16"):
        Trainer(model, examples(4), collate, TrainConfig(max_steps=1, bf16=True), tmp_path)


def test_trainer_picks_the_loss_and_counts_packed_tokens(tmp_path):
    model = peftkit.get_peft_model(build("llama"), peftkit.LoraConfig(r=2, target_modules=["q_proj"]))
    trainer = Trainer(model, examples(4), collate, TrainConfig(max_steps=1, batch_size=2), tmp_path)
    assert isinstance(trainer.loss_fn, CausalLMLoss) and trainer.loss_fn.mode == "auto"
    plain = Trainer(model, examples(4), collate, TrainConfig(max_steps=1, lm_loss="plain"), tmp_path)
    assert plain.loss_fn.mode == "plain"
    with pytest.raises(ConfigError, match="train.lm_loss: chunked applies to the causal-LM loss"):
        Trainer(
            model, examples(4), collate, TrainConfig(max_steps=1, lm_loss="chunked"), tmp_path, loss_fn=len
        )
    packed = PackingCollator(0, max_tokens=64)
    sft = [{**e, "labels": e["input_ids"]} for e in examples(4)]
    trainer = Trainer(
        model, sft, packed, TrainConfig(max_steps=1, batch_size=4), tmp_path, show_progress=False
    )
    assert trainer._step(0)[1] == sum(len(e["input_ids"]) for e in sft)
    with pytest.raises(ConfigError, match="packing: must be one of"):
        TrainConfig(packing="yes")


def test_training_collator_packs_sft_only():
    model, padded = build("llama"), Collator(0)
    sft = [{"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1], "labels": [-100, 6, 7]}]
    assert isinstance(training_collator("auto", model, sft, padded, 0, "sft", 128)(sft), PackedBatch)
    assert training_collator("padded", model, sft, padded, 0, "sft") is padded
    assert training_collator("auto", model, sft, padded, 0, "classification") is padded
    with pytest.raises(ConfigError, match="train.packing: packing applies to sft tasks, not classification"):
        training_collator("packed", model, sft, padded, 0, "classification")
    tasks = [{**sft[0], "tasks": "a"}]
    assert training_collator("auto", model, tasks, padded, 0, "sft") is padded
    bert = build("bert")
    assert training_collator("auto", bert, sft, padded, 0, "sft") is padded
    prompt = peftkit.get_peft_model(build("llama"), peftkit.PromptTuningConfig(num_virtual_tokens=2))
    assert training_collator("auto", prompt, sft, padded, 0, "sft") is padded
    with pytest.raises(ConfigError, match="train.packing: virtual-token adapters .* not per example"):
        training_collator("packed", prompt, sft, padded, 0, "sft")
    with pytest.raises(ConfigError, match="does not keep packed examples apart"):
        training_collator("packed", bert, sft, padded, 0, "sft")


@pytest.mark.slow
def test_compiled_training_gives_the_eager_losses(tmp_path):
    losses = []
    for flag in (False, True):
        torch.manual_seed(0)
        model = peftkit.get_peft_model(build("llama"), peftkit.LoraConfig(r=2, target_modules=["q_proj"]))
        cfg = TrainConfig(lr=1e-2, max_steps=2, batch_size=2, log_every=1, compile=flag)
        result = Trainer(model, examples(4), collate, cfg, tmp_path / str(flag), show_progress=False).train()
        losses.append([r["train_loss"] for r in result.history])
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)


def test_a_training_run_takes_train_precision_and_an_evaluation_model_dtype(tmp_path, monkeypatch):
    """train.precision is the training base's dtype; `peftkit eval` of a saved adapter keeps model.dtype."""
    from test_cli_e2e import QA, save_llama, write_jsonl

    from peftkit.pipeline import prepare
    from peftkit.run_config import build_run_config

    monkeypatch.setattr(precision, "fast_bf16", lambda device="cpu": True)
    data = write_jsonl(tmp_path / "qa.jsonl", [{"prompt": p, "response": r} for p, r in QA])
    run = build_run_config(
        {
            "model": {"name": str(save_llama(tmp_path / "llama"))},
            "task": {"type": "sft", "max_length": 48},
            "data": {"train": str(data), "eval_fraction": 0.25},
            "adapter": {"method": "lora", "r": 2, "target_modules": ["q_proj"]},
        }
    )
    trained = prepare(run)
    assert trained.model.get_base_model().model.embed_tokens.weight.dtype == torch.bfloat16
    trained.model.save_pretrained(tmp_path / "adapter")
    evaluated = prepare(run, adapter_path=str(tmp_path / "adapter"))
    assert evaluated.model.get_base_model().model.embed_tokens.weight.dtype == torch.float32
    fp32 = build_run_config({**run.to_dict(), "train": {**run.train.to_dict(), "precision": "fp32"}})
    assert prepare(fp32).model.get_base_model().model.embed_tokens.weight.dtype == torch.float32


def test_over_several_processes_the_loss_is_plain_and_chunked_refused():
    from peftkit.training import speedups
    from peftkit.training.trainer import default_loss

    assert speedups.training_loss(default_loss, TrainConfig(), default_loss, several=True).mode == "plain"
    assert speedups.training_loss(default_loss, TrainConfig(), default_loss).mode == "auto"
    with pytest.raises(ConfigError, match="train.lm_loss: chunked is not supported in a run over several"):
        speedups.training_loss(default_loss, TrainConfig(lm_loss="chunked"), default_loss, several=True)


def test_a_packed_batch_keeps_its_token_count_on_another_device():
    from peftkit.training.distributed import to_device

    batch = PackingCollator(0, max_tokens=16)([{"input_ids": [5, 6, 7], "labels": [5, 6, 7]}] * 3)
    moved = to_device(batch, torch.device("meta"))
    assert isinstance(moved, PackedBatch) and moved.real_tokens == 9
    assert moved["input_ids"].device.type == "meta" and batch["input_ids"].device.type == "cpu"
