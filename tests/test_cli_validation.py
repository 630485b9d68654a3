"""Issue 15 through the command line: bad values exit 2 with one line before anything runs, generation
refuses what it would silently do wrong, merge/export/compose write usual file modes, and a
classification adapter with three labels merges."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import transformers
from test_cli_e2e import ENV, SENTIMENT, STEPS, fails, ok, peftkit_cli, save_bert, save_llama, write_jsonl
from test_composition_cli import save_adapter

import peftkit


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("validate")


@pytest.fixture(scope="module")
def llama_dir(root) -> Path:
    return save_llama(root / "llama")


@pytest.fixture(scope="module")
def bert_dir(root) -> Path:
    return save_bert(root / "bert")


@pytest.fixture(scope="module")
def adapter(root, llama_dir) -> Path:
    return save_adapter(llama_dir, root / "adapter", seed=1)


def classification(bert_dir: Path, data: Path, out: Path, *flags: str) -> tuple[str, ...]:
    return (
        "train",
        *("--model.name", bert_dir, "--task.type", "classification", "--task.max_length", "32"),
        *("--data.train", data, "--data.eval_fraction", "0.25"),
        *("--adapter.method", "lora", "--adapter.r", "2", "--adapter.target_modules", "[query, value]"),
        *("--output-dir", out, *STEPS, *flags),
    )


@pytest.fixture(scope="module")
def sentiment(root) -> Path:
    return write_jsonl(root / "sentiment.jsonl", [{"text": t, "label": y} for t, y in SENTIMENT])


# --- values refused when the config is built: exit 2, one line, nothing written ------------------


@pytest.mark.parametrize(
    ("flag", "value", "needle"),
    [
        ("--train.lr", ".inf", "train.lr: must be a finite number"),
        ("--train.max_grad_norm", ".nan", "train.max_grad_norm: must be a finite number"),
        ("--adapter.lora_alpha", ".inf", "adapter.lora_alpha: must be a finite number"),
        ("--train.epochs", '"1"', "train.epochs: expected float, got '1'"),
        ("--train.lr", "[1,", "--train.lr: '[1,' is not a YAML value"),
        (
            "--adapter.target_modules",
            "q((",
            "adapter.target_modules: 'q((' is not a valid regular expression",
        ),
        ("--train.metric_for_best", "eval_bleu", "train.metric_for_best: 'eval_bleu' is not reported"),
    ],
)
def test_bad_values_exit_2_before_anything_runs(bert_dir, sentiment, tmp_path, flag, value, needle):
    out = tmp_path / "run"
    fails(peftkit_cli(*classification(bert_dir, sentiment, out, flag, value)), "train", needle)
    assert not out.exists()  # refused before the model loads, not after the last step


@pytest.mark.parametrize(
    ("label", "needle"),
    [("NaN", "data.jsonl line 3: label nan"), ('{"a": 1}', "data.jsonl line 3: label {'a': 1}")],
)
def test_a_label_that_is_no_class_exits_2_naming_the_line(bert_dir, tmp_path, label, needle):
    rows = [json.dumps({"text": t, "label": y}) for t, y in SENTIMENT]
    rows.insert(2, f'{{"text": "odd film", "label": {label}}}')
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(rows) + "\n")
    fails(
        peftkit_cli(*classification(bert_dir, data, tmp_path / "run")), "train", needle, "not a class label"
    )


def test_a_single_class_exits_2(bert_dir, tmp_path):
    data = write_jsonl(tmp_path / "one.jsonl", [{"text": t, "label": 1} for t, _ in SENTIMENT])
    fails(
        peftkit_cli(*classification(bert_dir, data, tmp_path / "run")), "train", "single class", "task.labels"
    )


def test_compose_refuses_a_nan_weight(llama_dir, adapter, tmp_path):
    out = tmp_path / "composed"
    args = ("compose", "--model", llama_dir, "--adapters", adapter, adapter, "--out", out)
    fails(peftkit_cli(*args, "--weights", "nan", "1"), "compose", "weights[0]: must be a finite number")
    assert not out.exists()


# --- generate ------------------------------------------------------------------------------------


def _generate(llama_dir: Path, *flags: str) -> subprocess.CompletedProcess:
    return peftkit_cli(
        "generate", "--model", llama_dir, "--raw", "--max-new-tokens", "3", *flags, "the movie"
    )


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (("--temperature", "-1"), "--temperature: must be 0 (greedy) or a positive number"),
        (("--temperature", "nan"), "--temperature: must be 0 (greedy) or a positive number"),
        (("--temperature", "0", "--strategy", "sample"), "0 means greedy decoding"),
        (("--temperature", "0.7", "--strategy", "greedy"), "--strategy greedy would ignore it"),
    ],
)
def test_temperature_is_never_silently_replaced(llama_dir, flags, needle):
    fails(_generate(llama_dir, *flags), "generate", needle)


def test_temperature_zero_is_greedy(llama_dir):
    assert ok(_generate(llama_dir, "--temperature", "0")).stdout == ok(_generate(llama_dir)).stdout


def test_an_encoder_is_refused_as_a_generator(bert_dir):
    fails(_generate(bert_dir), "generate", "no trained weights", "cls.predictions", "cannot generate text")


def test_generate_at_a_terminal_prints_a_hint_then_reads_the_prompt(llama_dir):
    import pty

    master, slave = pty.openpty()
    args = [sys.executable, "-m", "peftkit", "generate", "--model", str(llama_dir), "--raw"]
    proc = subprocess.Popen(
        [*args, "--max-new-tokens", "2"], stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV
    )
    os.close(slave)
    try:
        stderr, deadline = b"", time.monotonic() + 120
        while b"Ctrl-D" not in stderr and time.monotonic() < deadline and proc.poll() is None:
            if select.select([proc.stderr], [], [], 1)[0]:
                stderr += os.read(proc.stderr.fileno(), 4096)
        assert b"type the prompt, then press Ctrl-D" in stderr, stderr.decode()
        os.write(master, b"the movie\n\x04")  # a line, then end-of-file at the start of the next
        out, _ = proc.communicate(timeout=300)
    finally:
        proc.kill()
        os.close(master)
    assert proc.returncode == 0 and out.strip()


# --- adapter files -------------------------------------------------------------------------------


def test_an_adapter_for_other_weights_needs_the_override(llama_dir, adapter, root):
    other = root / "other-llama"
    save_llama(other)
    model = transformers.AutoModelForCausalLM.from_pretrained(other)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(-1.0)  # the same shapes, other weights
    model.save_pretrained(other)
    args = ("--adapter", adapter)
    fails(_generate(other, *args), "generate", "holds other weights", "--ignore-base-mismatch")
    ok(_generate(other, *args, "--ignore-base-mismatch"))
    ok(_generate(llama_dir, *args))


def test_an_adapter_config_holding_a_list_is_one_line(llama_dir, adapter, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text("[1, 2]")
    (broken / "adapter_model.safetensors").write_bytes((adapter / "adapter_model.safetensors").read_bytes())
    fails(_generate(llama_dir, "--adapter", broken), "generate", "must hold a JSON object")


# --- merge, export, compose: three labels, usual modes -------------------------------------------


def _modes(folder: Path) -> set[int]:
    return {p.stat().st_mode & 0o777 for p in [folder, *folder.rglob("*")]}


def _usual() -> set[int]:
    mask = os.umask(0)
    os.umask(mask)
    return {0o777 & ~mask, 0o666 & ~mask}


def test_merge_a_classifier_with_three_labels(bert_dir, root, tmp_path):
    names = ["neg", "neutral", "pos"]
    rows = [{"text": t, "label": names[i % 3]} for i, (t, _) in enumerate(SENTIMENT)]
    data = write_jsonl(tmp_path / "three.jsonl", rows)
    run = tmp_path / "run"
    ok(peftkit_cli(*classification(bert_dir, data, run)))
    out = tmp_path / "merged"
    ok(
        peftkit_cli(
            "merge", "--model", bert_dir, "--task", "seq-cls", "--adapter", run / "adapter", "--out", out
        )
    )
    assert _modes(out) <= _usual()
    merged = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert merged.config.num_labels == 3
    base = transformers.AutoModelForSequenceClassification.from_pretrained(bert_dir, num_labels=3)
    adapted = peftkit.PeftModel.from_pretrained(base, run / "adapter").eval()
    ids = torch.tensor([[4, 8, 11, 17, 29], [4, 19, 17, 30, 29]])
    with torch.no_grad():
        torch.testing.assert_close(
            merged(input_ids=ids).logits, adapted(input_ids=ids).logits, atol=1e-5, rtol=0
        )


def test_export_and_compose_write_usual_modes(llama_dir, adapter, tmp_path):
    ok(peftkit_cli("export", adapter, "--format", "peft", "--out", tmp_path / "peft"))
    assert _modes(tmp_path / "peft") <= _usual()
    args = ("compose", "--model", llama_dir, "--adapters", adapter, adapter, "--weights", "0.5", "0.5")
    ok(peftkit_cli(*args, "--out", tmp_path / "composed"))
    assert _modes(tmp_path / "composed") <= _usual()
