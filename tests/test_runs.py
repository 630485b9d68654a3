"""Training runs under faults: one run per folder (refusal, --overwrite, a lock between processes),
--resume checked against the saved config, metrics and checkpoints that survive a full disk or a
kill, and exact resume for every kind of method (AdaLoRA's allocation state included)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import build
from safetensors.torch import load_file
from scripts.train_tiny import collate, examples
from test_cli_e2e import ENV, QA, save_llama, write_jsonl, write_yaml

import peftkit
import peftkit.training.metrics as metrics
import peftkit.training.state as state
from peftkit import (
    AdaLoraConfig,
    AdaPtLoraConfig,
    BottleneckConfig,
    ConfigError,
    LoraConfig,
    PrefixTuningConfig,
    PromptTuningConfig,
    PTuningConfig,
    PTuningV2Config,
)
from peftkit.cli import main
from peftkit.methods.bitfit import BitFitConfig
from peftkit.methods.diff_pruning import DiffPruningConfig
from peftkit.methods.full import FullConfig
from peftkit.methods.selection import SelectionConfig
from peftkit.plotting import read_metrics
from peftkit.training import TrainConfig, Trainer
from peftkit.training.chunked_loss import CausalLMLoss

SCRIPTS = Path(__file__).parent / "scripts"
METHODS = {  # name -> (tiny model, config): a row per kind of method (layer, virtual tokens, sparse)
    "lora": ("llama", lambda: LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.1)),
    "adalora": ("llama", lambda: AdaLoraConfig(
        init_r=4, target_r=2, tinit=1, tfinal=1, target_modules=["q_proj", "v_proj"], lora_dropout=0.1
    )),
    "prompt_tuning": ("llama", lambda: PromptTuningConfig(num_virtual_tokens=4)),
    "bottleneck": ("llama", lambda: BottleneckConfig(bottleneck_size=4)),
    "prefix_tuning": ("llama", lambda: PrefixTuningConfig(num_virtual_tokens=3, prefix_projection=True)),
    "p_tuning": ("llama", lambda: PTuningConfig(num_virtual_tokens=3,
        encoder_reparameterization_type="LSTM")),
    "p_tuning_v2": ("llama", lambda: PTuningV2Config(num_virtual_tokens=2)),
    "adaptlora": ("llama", lambda: AdaPtLoraConfig(
        tasks=["a"], default_task="a", num_virtual_tokens=2, r=2, target_modules=["q_proj"])),
    "full": ("llama", lambda: FullConfig(target_modules=["q_proj", "up_proj"])),
    "bitfit": ("gpt2", lambda: BitFitConfig()),
    "selection": ("llama", lambda: SelectionConfig(rule="last_k_layers", last_k=1)),
    "diff_pruning": ("llama", lambda: DiffPruningConfig(density=0.1, mask="hard_concrete")),
}  # fmt: skip
CFG = {"lr": 1e-2, "max_steps": 8, "batch_size": 4, "save_every": 2, "log_every": 1, "seed": 3}


def tiny(method: str = "lora"):
    kind, config = METHODS[method]
    model = build(kind)
    torch.manual_seed(0)
    return peftkit.get_peft_model(model, config())


def trainer(out: Path, method: str = "lora", model=None, loss_fn=None, **cfg) -> Trainer:
    kw = {"loss_fn": loss_fn} if loss_fn else {}
    config = TrainConfig(**{**CFG, **cfg})
    return Trainer(model or tiny(method), examples(), collate, config, out, show_progress=False, **kw)


def crash_at(step: int):
    """A loss function that raises inside optimizer step ``step`` (1-based): a crashed process. Until
    then it is the trainer's default loss (the chunked causal-LM loss where it applies), so the steps
    before the crash are the uninterrupted run's, bit for bit."""
    calls = {"n": 0}
    default = CausalLMLoss("auto")

    def loss_fn(model, batch):
        calls["n"] += 1
        if calls["n"] == step:
            raise RuntimeError("crash")
        return default(model, batch)

    return loss_fn


def weights(model) -> dict[str, torch.Tensor]:
    return {**state.trainable_tensors(model), **state.persistent_buffers(model)}


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"differ from the uninterrupted run: {differ[:4]}"


def steps(out: Path) -> list[int]:
    return [r["step"] for r in read_metrics(out / "metrics.jsonl")]


# --- 1. one run per folder ------------------------------------------------------------------------


def test_fresh_run_into_a_run_folder_is_refused(tmp_path):
    out = tmp_path / "run"
    trainer(out, max_steps=2).train()
    before = (out / "metrics.jsonl").read_bytes()
    with pytest.raises(ConfigError, match=r"holds another run") as err:
        trainer(out, max_steps=2, seed=9).train()
    assert str(out) in str(err.value) and "--resume" in str(err.value) and "--overwrite" in str(err.value)
    assert (out / "metrics.jsonl").read_bytes() == before
    assert [p.name for p in state.complete_checkpoints(out / "checkpoints")] == ["step-0000002"]


def test_overwrite_replaces_the_old_runs_files_only(tmp_path):
    out = tmp_path / "run"
    trainer(out, max_steps=4).train()
    (out / "notes.txt").write_text("mine")
    model = tiny()
    trainer(out, model=model, max_steps=2, seed=9).train(overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"
    assert [p.name for p in state.complete_checkpoints(out / "checkpoints")] == ["step-0000002"]
    assert steps(out) == [1, 2]
    assert not [p for p in out.iterdir() if p.name.startswith(".peftkit-replaced-")]
    with pytest.raises(ConfigError, match="--overwrite"):
        trainer(out).train(resume=True, overwrite=True)


HOLD = (
    "from peftkit.training.run_folder import claim_run_folder as c\nimport sys, time\nwith c(sys.argv[1]):\n"
)
HOLD += "    print('held', flush=True)\n    time.sleep(120)\n"


def test_a_second_process_is_refused_and_a_killed_holder_leaves_no_lock(tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True, env=ENV
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError, match=rf"in use by another peftkit run \(pid {holder.pid}\)"):
            trainer(out, max_steps=2).train()
        assert not (out / "metrics.jsonl").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    trainer(out, max_steps=2).train()  # the OS dropped the dead holder's lock
    assert steps(out) == [1, 2]


# --- the command line: refusal, --overwrite, --resume against run.yaml ------------------------------


@pytest.fixture(scope="module")
def tiny_run_config(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("runs")
    data = write_jsonl(root / "qa.jsonl", [{"prompt": p, "response": r} for p, r in QA])
    write_jsonl(root / "other.jsonl", [{"prompt": p, "response": r} for p, r in QA[:6]])
    return {
        "model": {"name": str(save_llama(root / "llama"))},
        "task": {"type": "sft", "max_length": 48},
        "data": {"train": str(data), "eval_fraction": 0.25},
        "adapter": {"method": "lora", "r": 2, "target_modules": ["q_proj", "v_proj"]},
        "train": {"lr": 1e-2, "max_steps": 4, "batch_size": 2, "save_every": 2, "log_every": 1},
    }


def cli(capsys, config: Path, out: Path, *flags: str) -> tuple[int, str]:
    code = main(["train", "--config", str(config), "--output-dir", str(out), "--quiet", *flags])
    return code, capsys.readouterr().err


def one_line_error(err: str, *needles: str) -> None:
    lines = [x for x in err.splitlines() if x.startswith("peftkit train: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]}"


def test_cli_refuses_a_fresh_run_into_a_run_folder(tiny_run_config, tmp_path, capsys):
    config, out = write_yaml(tmp_path / "run.yaml", tiny_run_config), tmp_path / "run"
    assert cli(capsys, config, out)[0] == 0
    saved = (out / "adapter" / "adapter_model.safetensors").read_bytes()
    code, err = cli(capsys, config, out, "--train.seed", "5")
    assert code == 2
    one_line_error(err, str(out), "--resume", "--overwrite", "another output dir")
    assert (out / "adapter" / "adapter_model.safetensors").read_bytes() == saved
    assert cli(capsys, config, out, "--train.seed", "5", "--overwrite")[0] == 0
    assert (out / "adapter" / "adapter_model.safetensors").read_bytes() != saved
    assert yaml.safe_load((out / "run.yaml").read_text())["train"]["seed"] == 5
    code, err = cli(capsys, config, out, "--resume", "--overwrite")
    assert code == 2
    one_line_error(err, "--overwrite", "--resume")


def test_cli_resume_refuses_changed_fields_and_records_safe_ones(tiny_run_config, tmp_path, capsys):
    config, out = write_yaml(tmp_path / "run.yaml", tiny_run_config), tmp_path / "run"
    assert cli(capsys, config, out, "--train.max_steps", "2")[0] == 0
    other = str(Path(tiny_run_config["data"]["train"]).with_name("other.jsonl"))
    code, err = cli(
        capsys, config, out, "--train.max_steps", "2", "--resume", "--train.lr", "0.02", "--data.train", other
    )
    assert code == 2
    one_line_error(err, str(out / "run.yaml"), "train.lr 0.01 -> 0.02", f"-> '{other}'")
    assert yaml.safe_load((out / "run.yaml").read_text())["train"]["lr"] == 0.01
    code, err = cli(capsys, config, out, "--train.max_steps", "4", "--resume")
    assert code == 2
    one_line_error(err, "train.max_steps 2 -> 4", "schedule")  # the linear decay depends on the length
    code, err = cli(
        capsys, config, out, "--train.max_steps", "2", "--resume", "--train.log_every", "2",
        "--train.keep_checkpoints", "3",
    )  # fmt: skip
    assert code == 0, err
    assert "train.log_every 1 -> 2" in err and "train.keep_checkpoints 2 -> 3" in err
    saved = yaml.safe_load((out / "run.yaml").read_text())["train"]
    assert saved["log_every"] == 2 and saved["keep_checkpoints"] == 3


def test_cli_resumes_a_run_yaml_written_before_the_speed_levers(tiny_run_config, tmp_path, capsys):
    config, out = write_yaml(tmp_path / "run.yaml", tiny_run_config), tmp_path / "run"
    old = [x for k, v in OLD_LEVERS.items() for x in (f"--train.{k}", v)]
    assert cli(capsys, config, out, "--train.max_steps", "2", *old)[0] == 0
    saved = yaml.safe_load((out / "run.yaml").read_text())
    for name in OLD_LEVERS:
        saved["train"].pop(name)
    (out / "run.yaml").write_text(yaml.safe_dump(saved))
    drop_saved_fields(out, *OLD_LEVERS)
    code, err = cli(capsys, config, out, "--train.max_steps", "2", "--resume")
    assert code == 2
    one_line_error(err, "train.precision 'fp32' -> 'auto'")
    code, err = cli(capsys, config, out, "--train.max_steps", "2", "--resume", *old)
    assert code == 0, err


def test_the_demo_refuses_resume(capsys):
    assert main(["train", "--resume", "--output-dir", "/nonexistent/demo", "--demo-steps", "1"]) == 2
    one_line_error(capsys.readouterr().err, "--resume", "demo")


# --- 2. the trainer checks what resume may change ----------------------------------------------------


def test_trainer_resume_refuses_a_changed_run(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="crash"):
        trainer(out, loss_fn=crash_at(4)).train()
    with pytest.raises(ConfigError, match=r"train.lr 0.01 -> 0.02.*train.seed 3 -> 4"):
        trainer(out, lr=2e-2, seed=4).train(resume=True)
    other = Trainer(tiny(), examples(40)[::-1], collate, TrainConfig(**CFG), out, show_progress=False)
    with pytest.raises(ConfigError, match="training examples differ"):
        other.train(resume=True)
    assert steps(out) == [1, 2, 3]  # nothing was touched by the refused resumes


def test_a_checkpoint_written_before_a_config_field_existed_resumes(tmp_path):
    """A field the checkpoint's config lacks (added to TrainConfig since) reads as its default."""
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="crash"):
        trainer(out, loss_fn=crash_at(4)).train()
    drop_saved_fields(out, "loraplus_lr_ratio")  # as written before the field existed
    trainer(out).train(resume=True)
    assert steps(out)[-1] == CFG["max_steps"]


def drop_saved_fields(out: Path, *names: str) -> None:
    """Remove train fields (and the base dtype) from the newest checkpoint, as an older peftkit wrote it."""
    newest = max((out / "checkpoints").glob("step-*"))
    state = torch.load(newest / "state.pt", weights_only=False)
    for name in names:
        state["config"].pop(name)
    state.pop("base_dtype")
    torch.save(state, newest / "state.pt")
    manifest = json.loads((newest / "complete.json").read_text())
    manifest["sha256"]["state.pt"] = hashlib.sha256((newest / "state.pt").read_bytes()).hexdigest()
    (newest / "complete.json").write_text(json.dumps(manifest))


OLD_LEVERS = {"precision": "fp32", "lm_loss": "plain", "packing": "padded"}  # what runs did before them


def test_a_checkpoint_written_before_the_speed_levers_resumes_only_as_it_trained(tmp_path):
    """A checkpoint without train.precision/lm_loss/packing trained an fp32 base on the model's own loss:
    resuming it under the new 'auto' defaults is refused by name, with the old values it resumes."""
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="crash"):
        trainer(out, loss_fn=crash_at(4), **OLD_LEVERS).train()
    drop_saved_fields(out, *OLD_LEVERS)
    with pytest.raises(
        ConfigError, match=r"train.lm_loss 'plain' -> 'auto'.*train.precision 'fp32' -> 'auto'"
    ):
        trainer(out).train(resume=True)
    trainer(out, **OLD_LEVERS).train(resume=True)
    assert steps(out)[-1] == CFG["max_steps"]


def test_resume_refuses_a_base_in_another_dtype_than_the_checkpoints(tmp_path):
    """train.precision 'auto' decides per machine: a checkpoint keeps the base dtype it trained with."""
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="crash"):
        trainer(out, loss_fn=crash_at(4)).train()
    with pytest.raises(
        ConfigError, match=r"trained with a torch.float32 base, this run loads it in torch.bfloat16"
    ):
        trainer(out, model=tiny().to(torch.bfloat16)).train(resume=True)
    assert steps(out) == [1, 2, 3]


def test_a_constant_schedule_run_can_be_extended_exactly(tmp_path):
    const = {"schedule": "constant", "warmup_steps": 2}
    whole = tiny()
    trainer(tmp_path / "whole", model=whole, max_steps=10, **const).train()
    trainer(tmp_path / "run", max_steps=6, **const).train()
    longer = tiny()
    trainer(tmp_path / "run", model=longer, max_steps=10, save_every=3, **const).train(resume=True)
    assert_same(weights(whole), weights(longer))
    assert steps(tmp_path / "run") == list(range(1, 11))


# --- 3. metrics.jsonl ----------------------------------------------------------------------------------


class FullDisk:
    """``open`` for metrics.py: its files take half of the ``n``-th row written, then fail (ENOSPC)."""

    def __init__(self, n: int):
        self.n, self.rows = n, 0

    def __call__(self, path, mode="r", *args, **kwargs):
        return _FillingFile(open(path, mode, *args, **kwargs), self)  # noqa: SIM115 (closed by the caller)


class _FillingFile:
    def __init__(self, f, disk: FullDisk):
        self.f, self.disk = f, disk

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()

    def write(self, data):
        self.disk.rows += 1
        if self.disk.rows == self.disk.n:
            self.f.write(data[: len(data) // 2])
            self.f.flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self.f.write(data)


def test_a_full_disk_while_appending_leaves_whole_rows(tmp_path, monkeypatch):
    out = tmp_path / "run"
    monkeypatch.setattr(metrics, "open", FullDisk(5), raising=False)
    with pytest.raises(OSError, match=r"metrics.jsonl: could not append a metrics row.*--resume"):
        trainer(out).train()
    monkeypatch.undo()
    text = (out / "metrics.jsonl").read_text()
    assert text.endswith("\n") and [json.loads(x)["step"] for x in text.splitlines()] == [1, 2, 3, 4]
    model = tiny()
    trainer(out, model=model).train(resume=True)
    assert steps(out) == list(range(1, 9))


def test_a_partial_last_line_is_skipped_and_trimmed_by_a_new_file(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="crash"):
        trainer(out, loss_fn=crash_at(6)).train()
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 6, "train_lo')  # the process died inside write()
    with pytest.warns(UserWarning, match="partial last line"):
        assert steps(out) == [1, 2, 3, 4, 5]
    os.link(out / "metrics.jsonl", tmp_path / "old.jsonl")  # sees any rewrite in place
    old = (tmp_path / "old.jsonl").read_bytes()
    with pytest.warns(UserWarning, match="partial last line"):
        trainer(out).train(resume=True)
    assert (tmp_path / "old.jsonl").read_bytes() == old
    assert steps(out) == list(range(1, 9))


# --- 4. checkpoints ------------------------------------------------------------------------------------


def full_disk_at_state(n: int):
    write, seen = state.write_file, {"n": 0}

    def patched(path: Path, data: bytes) -> None:
        if path.name == state.STATE:
            seen["n"] += 1
            if seen["n"] == n:
                write(path, data[:100])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        write(path, data)

    return patched


def test_a_full_disk_while_writing_state_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    out, whole = tmp_path / "run", tiny()
    trainer(tmp_path / "whole", model=whole).train()
    monkeypatch.setattr(state, "write_file", full_disk_at_state(2))
    with pytest.raises(OSError, match=r"step-0000004 \(No space left on device\); the previous checkpoint .*"
                       r"step-0000002 is intact"):  # fmt: skip
        trainer(out).train()
    monkeypatch.undo()
    root = out / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["step-0000002"]  # no temporary folder left
    model = tiny()
    trainer(out, model=model).train(resume=True)
    assert_same(weights(whole), weights(model))


def test_cli_full_disk_while_writing_state_is_one_line(tiny_run_config, tmp_path, monkeypatch, capsys):
    config, out = write_yaml(tmp_path / "run.yaml", tiny_run_config), tmp_path / "run"
    monkeypatch.setattr(state, "write_file", full_disk_at_state(2))
    code, err = cli(capsys, config, out)
    assert code == 2
    one_line_error(err, "step-0000004", "No space left on device", "step-0000002 is intact", "--resume")


def test_pruning_removes_the_completion_marker_first(tmp_path, monkeypatch):
    import shutil

    rmtree, out = shutil.rmtree, tmp_path / "run"

    def killed_half_way(path, *args, **kwargs):
        path = Path(path)
        if path.name == "step-0000002":
            (path / state.TRAINABLE).unlink()
            raise KeyboardInterrupt  # the process stops with the folder half removed
        return rmtree(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", killed_half_way)
    with pytest.raises(KeyboardInterrupt):
        trainer(out, keep_checkpoints=1).train()
    monkeypatch.undo()
    root = out / "checkpoints"
    assert (root / "step-0000002").is_dir() and not (root / "step-0000002" / state.MARKER).exists()
    assert [p.name for p in state.complete_checkpoints(root)] == ["step-0000004"]


@pytest.mark.parametrize("broken", [state.STATE, state.TRAINABLE])
def test_resume_falls_back_past_a_truncated_checkpoint(tmp_path, broken):
    out, whole = tmp_path / "run", tiny()
    trainer(tmp_path / "whole", model=whole).train()
    with pytest.raises(RuntimeError, match="crash"):
        trainer(out, loss_fn=crash_at(7), keep_checkpoints=3).train()
    newest = out / "checkpoints" / "step-0000006"
    data = (newest / broken).read_bytes()
    (newest / broken).write_bytes(data[: len(data) // 2])
    model = tiny()
    with pytest.warns(UserWarning, match=r"skipped checkpoint .*step-0000006 .*resuming from step-0000004"):
        trainer(out, model=model, keep_checkpoints=3).train(resume=True)
    assert_same(weights(whole), weights(model))
    assert steps(out) == list(range(1, 9))
    assert (out / "checkpoints" / ".unreadable-step-0000006").is_dir()  # set aside, for inspection


# --- 5. AdaLoRA's allocation state, and exact resume for every kind of method -----------------------


def test_adalora_state_lives_in_buffers(tmp_path):
    model = tiny("adalora")
    model.add_adapter("other", METHODS["adalora"][1]())
    keys = [k for k in model.state_dict() if ".allocation." in k]
    want = {"rank_mask", "seen", "total_step", "sensitivity_A", "uncertainty_B"}
    assert want <= {k.rsplit(".", 1)[1] for k in keys}
    assert {k.split(".allocation.")[1].split(".")[0] for k in keys} == {"default", "other"}
    model.delete_adapter("other")
    assert not [k for k in model.state_dict() if ".allocation.other." in k]


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_resumes_exactly_after_a_crash(tmp_path, method):
    whole = tiny(method)
    trainer(tmp_path / "whole", model=whole).train()
    with pytest.raises(RuntimeError, match="crash"):
        # resumed from step 6: AdaLoRA's final allocation (step 7) ranks by the importance EMAs
        trainer(tmp_path / "run", method, loss_fn=crash_at(7)).train()
    resumed = tiny(method)
    trainer(tmp_path / "run", model=resumed).train(resume=True)
    assert_same(weights(whole), weights(resumed))
    assert_same(whole.adapter_state_dict("default"), resumed.adapter_state_dict("default"))
    whole.save_pretrained(tmp_path / "a")
    resumed.save_pretrained(tmp_path / "b")
    config = "adapter_config.json"
    assert (tmp_path / "a" / config).read_text() == (tmp_path / "b" / config).read_text()
    if method == "adalora":
        assert json.loads((tmp_path / "b" / config).read_text())["rank_pattern"] is not None  # pruned


def test_adalora_refuses_to_resume_with_another_schedule_length(tmp_path):
    const = {"schedule": "constant"}
    with pytest.raises(RuntimeError, match="crash"):
        trainer(tmp_path / "run", "adalora", loss_fn=crash_at(5), **const).train()
    with pytest.raises(ValueError, match="budget schedule runs over 8 steps .* this run takes 10"):
        trainer(tmp_path / "run", "adalora", max_steps=10, **const).train(resume=True)


# --- 5b. SIGKILL of real `peftkit train` processes at several points ---------------------------------

RUN_METHODS = {
    "lora": {"method": "lora", "r": 2, "target_modules": ["q_proj", "v_proj"], "lora_dropout": 0.1},
    "adalora": {
        "method": "adalora", "init_r": 4, "target_r": 2, "tinit": 1, "tfinal": 2, "lora_dropout": 0.1,
        "target_modules": ["q_proj", "v_proj"],
    },
    "prompt_tuning": {"method": "prompt_tuning", "num_virtual_tokens": 3},
    "bottleneck": {"method": "bottleneck", "bottleneck_size": 4},
}  # fmt: skip
# each process is killed at one point, then the next resumes: a step (5: after checkpoint 4, in
# AdaLoRA's pruning phase), the write of checkpoint 6, the pruning of checkpoint 4 (after 6 is done)
KILLS = [("step", 5), ("checkpoint", 1), ("prune", 1)]


def kill_at(point: str, n: int, *args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPTS / "kill_at.py"), point, str(n), "train", *map(str, args)],
        capture_output=True, text=True, timeout=300, env=ENV,
    )  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(RUN_METHODS))
def test_sigkill_at_several_points_then_resume_is_bit_identical(tiny_run_config, tmp_path, method):
    config = {**tiny_run_config, "adapter": RUN_METHODS[method]}
    config["train"] = {**config["train"], "max_steps": 8, "keep_checkpoints": 1, "eval_every": 4}
    path = write_yaml(tmp_path / "run.yaml", config)
    args = ("--config", path, "--quiet", "--output-dir")
    whole = kill_at("none", 0, *args, tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr
    run = tmp_path / "run"
    for i, (point, n) in enumerate(KILLS):
        killed = kill_at(point, n, *args, run, *(["--resume"] if i else []))
        assert killed.returncode == -signal.SIGKILL, f"{point}: {killed.stderr}"
    checkpoints = run / "checkpoints"
    assert not (checkpoints / "step-0000004" / state.MARKER).exists()  # killed while pruning it
    done = kill_at("none", 0, *args, run, "--resume")
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step-0000008"]  # the half-pruned one too
    a, b = tmp_path / "whole" / "adapter", run / "adapter"
    config = "adapter_config.json"
    assert (a / config).read_text() == (b / config).read_text()
    assert_same(*(load_file(x / "adapter_model.safetensors") for x in (a, b)))  # bit-equal tensors
    rows = [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in read_metrics(run / "metrics.jsonl")]
    want = read_metrics(tmp_path / "whole" / "metrics.jsonl")
    assert rows == [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in want]


# --- 6. the main job shows progress while it answers the held-out prompts ----------------------------


def test_demo_answers_show_progress_and_equal_one_generate_call(capsys):
    from tiny_tokenizer import tiny_tokenizer

    from peftkit.demo import answer
    from peftkit.generation import generate_texts

    tok, model = tiny_tokenizer(), build("llama")
    prompts = [f"the {w} was" for w in ("movie", "film", "story", "plot", "actor")] * 8  # 40: two batches
    got = answer(model, tok, prompts, "answers before training", show=True)
    err = capsys.readouterr().err
    assert "answers before training" in err and "40/40" in err
    assert got == generate_texts(model, tok, prompts, max_new_tokens=96, batch_size=32)
    answer(model, tok, prompts[:2], "quiet", show=False)
    assert "quiet" not in capsys.readouterr().err


def test_resume_rules_are_precise():
    from peftkit.training.resume import resume_changes

    def train(**kw) -> dict:  # as runs save it: the warm-up resolved (the method's default, here 0)
        return {"train": {**TrainConfig(warmup_ratio=0.0).to_dict(), **kw}}

    assert resume_changes(train(max_steps=8), train(max_steps=8, epochs=3), "x") == ["train.epochs 1.0 -> 3"]
    with pytest.raises(ConfigError, match=r"train.epochs 1.0 -> 3 \(the learning rate schedule depends"):
        resume_changes(train(), train(epochs=3), "x")
    assert resume_changes(train(eval_every=2), train(eval_every=5), "x") == ["train.eval_every 2 -> 5"]
    with pytest.raises(ConfigError, match="train.eval_every 2 -> 5 .*early_stopping_patience"):
        resume_changes(
            train(eval_every=2, early_stopping_patience=1),
            train(eval_every=5, early_stopping_patience=1),
            "x",
        )
    constant = train(max_steps=8, schedule="constant")
    assert resume_changes(constant, train(max_steps=20, schedule="constant"), "x") == [
        "train.max_steps 8 -> 20"
    ]
    with pytest.raises(
        ConfigError, match=r"train.max_steps 8 -> 9 \(the learning rate .*warmup_ratio 0.0 -> 0.1"
    ):
        resume_changes(constant, train(max_steps=9, schedule="constant", warmup_ratio=0.1), "x")
