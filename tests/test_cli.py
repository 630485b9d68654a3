"""The command line, run as a user runs it: a subprocess with exit codes."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import build


def peftkit(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "peftkit", *args], capture_output=True, text=True, timeout=300
    )


@pytest.fixture
def tiny_llama_dir(tmp_path):
    build("llama").save_pretrained(tmp_path / "model")
    return tmp_path / "model"


def test_inspect_prints_tree_estimate_and_adapter_cost(tiny_llama_dir, tmp_path):
    cfg = tmp_path / "lora.yaml"
    cfg.write_text("method: lora\nr: 4\ntarget_modules: [q_proj, v_proj]\n")
    out = peftkit("inspect", str(tiny_llama_dir), "--config", str(cfg))
    assert out.returncode == 0, out.stderr
    assert "layers: 2 x LlamaDecoderLayer" in out.stdout
    assert "12*32^2*2 + 96*32 = 27,648" in out.stdout
    # q_proj: A 4x32 + B 32x4, v_proj: A 4x32 + B 16x4 -> 448 per layer, two layers
    assert "lora adds 896 parameters on 4 modules" in out.stdout
    assert "3.5 KiB as fp32" in out.stdout


def test_bad_config_exits_non_zero_naming_the_field(tiny_llama_dir, tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("method: lora\nr: 0\ntarget_modules: [q_proj]\n")
    out = peftkit("inspect", str(tiny_llama_dir), "--config", str(cfg))
    assert out.returncode == 2 and "r: must be a positive integer" in out.stderr
    cfg.write_text("method: nope\n")
    out = peftkit("inspect", str(tiny_llama_dir), "--config", str(cfg))
    assert out.returncode == 2 and "registered methods" in out.stderr


def test_unknown_model_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = peftkit("inspect", "someone/not-a-model")
    assert out.returncode == 2
    assert "smollm2-135m" in out.stderr  # the error lists what is available locally


def test_help_documents_every_option():
    out = peftkit("inspect", "--help")
    assert out.returncode == 0 and "--config" in out.stdout and "--depth" in out.stdout


def adapter_flags(help_text: str) -> set[str]:
    return {line.split()[0] for line in help_text.splitlines() if line.strip().startswith("--adapter.")}


def test_train_help_lists_the_shared_adapter_fields_and_a_methods_own_on_request():
    common = peftkit("train", "--help")
    assert common.returncode == 0 and "--adapter.method METHOD --help" in common.stdout
    shared = adapter_flags(common.stdout)
    assert "--adapter.target_modules" in shared and "--adapter.r" not in shared
    assert len(shared) <= 10  # not every field of every method in one list
    lora = peftkit("train", "--adapter.method", "lora", "--help")
    own = adapter_flags(lora.stdout) - shared
    assert {"--adapter.r", "--adapter.lora_alpha", "--adapter.init_lora_weights"} <= own
    assert "--adapter.num_virtual_tokens" not in own and "rank of B A" in lora.stdout
    prompt = peftkit("train", "--adapter.method=prompt_tuning", "--help")
    assert (
        "--adapter.num_virtual_tokens" in adapter_flags(prompt.stdout) and "--adapter.r " not in prompt.stdout
    )


def test_a_hidden_method_field_still_sets_its_value(tmp_path):
    """Fields hidden from --help are still flags: setting one reaches the config (and a bad value for it
    is an error naming it)."""
    out = peftkit("train", "--adapter.method", "lora", "--adapter.r", "-3", "--output-dir", str(tmp_path))
    assert out.returncode == 2 and "r" in out.stderr and "Traceback" not in out.stderr
