"""Every task type end to end through the command line, as a user runs it: tiny random models saved
with the tiny tokenizer into one folder, `peftkit train/eval/generate/merge/export` as subprocesses,
exit codes and messages checked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
import yaml
from tiny_tokenizer import tiny_tokenizer

import peftkit

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
RUN_FILES = ("adapter/adapter_config.json", "metrics.jsonl", "training.png", "run.yaml")
STEPS = ["--train.max_steps", "3", "--train.batch_size", "4", "--quiet"]

SENTIMENT = [
    ("the movie was great", 1),
    ("a wonderful film", 1),
    ("i loved the acting", 1),
    ("the story was fun and funny", 1),
    ("very good plot", 1),
    ("quite fine film", 1),
    ("the movie was terrible", 0),
    ("an awful film", 0),
    ("i hated the acting", 0),
    ("the story was boring and dull", 0),
    ("very bad plot", 0),
    ("not good", 0),
]
QA = [
    ("what is the capital of france ?", "paris"),
    ("what is the capital of germany ?", "berlin"),
    ("say hello", "hello world"),
    ("who are you ?", "a helpful assistant"),
    ("is the cat red ?", "no , the cat is blue"),
    ("where is the dog ?", "the dog sat on the mat"),
    ("is the food good ?", "yes , very good"),
    ("name a city", "paris"),
]
TRANSLATION = [
    ("translate to german : the cat", "the cat"),
    ("translate to german : the dog", "the dog"),
    ("translate to english : a red house", "a red house"),
    ("translate to english : a blue house", "a blue house"),
    ("translate to german : the mat", "the mat"),
    ("translate to english : the cat sat", "the cat sat"),
    ("translate to german : hello world", "hello world"),
    ("translate to english : the pub", "the pub"),
]


def peftkit_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "peftkit", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        input=stdin,
        env=ENV,
    )


def ok(out: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert out.returncode == 0, f"exit {out.returncode}\nstdout:\n{out.stdout}\nstderr:\n{out.stderr}"
    return out


def fails(out: subprocess.CompletedProcess, command: str, *needles: str) -> str:
    """A clean failure: exit 2, a ``peftkit <command>: error:`` line naming the problem, no traceback."""
    assert out.returncode == 2, f"exit {out.returncode}\nstdout:\n{out.stdout}\nstderr:\n{out.stderr}"
    assert f"peftkit {command}: error:" in out.stderr and "Traceback" not in out.stderr, out.stderr
    for needle in needles:
        assert needle in out.stderr, f"{needle!r} not in:\n{out.stderr}"
    return out.stderr


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def json_out(out: subprocess.CompletedProcess) -> dict:
    """The JSON object a command prints last (after the data and encoding summary lines)."""
    lines = out.stdout.splitlines()
    return json.loads("\n".join(lines[lines.index("{") :]))


# --- tiny models saved with the tiny tokenizer --------------------------------------------------


def _save(model: torch.nn.Module, tok, path: Path) -> Path:
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _ids(tok) -> dict[str, int]:
    return {"vocab_size": len(tok), "pad_token_id": tok.pad_token_id, "eos_token_id": tok.eos_token_id}


def save_llama(path: Path) -> Path:
    tok = tiny_tokenizer(chat_template=True, bos=True)
    cfg = transformers.LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=tok.bos_token_id,
        **_ids(tok),
    )
    torch.manual_seed(0)
    return _save(transformers.LlamaForCausalLM(cfg), tok, path)


def save_bert(path: Path) -> Path:
    tok = tiny_tokenizer()
    cfg = transformers.BertConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=128,
        **_ids(tok),
    )
    torch.manual_seed(0)
    return _save(transformers.BertModel(cfg), tok, path)


def save_t5(path: Path) -> Path:
    tok = tiny_tokenizer()
    cfg = transformers.T5Config(
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        decoder_start_token_id=tok.pad_token_id,
        **_ids(tok),
    )
    torch.manual_seed(0)
    return _save(transformers.T5ForConditionalGeneration(cfg), tok, path)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="module")
def llama_dir(root) -> Path:
    return save_llama(root / "llama")


@pytest.fixture(scope="module")
def bert_dir(root) -> Path:
    return save_bert(root / "bert")


@pytest.fixture(scope="module")
def t5_dir(root) -> Path:
    return save_t5(root / "t5")


@pytest.fixture(scope="module")
def sentiment(root) -> Path:
    return write_jsonl(root / "sentiment.jsonl", [{"text": t, "label": y} for t, y in SENTIMENT])


@pytest.fixture(scope="module")
def qa(root) -> Path:
    return write_jsonl(root / "qa.jsonl", [{"prompt": p, "response": r} for p, r in QA])


# --- trained runs, one per task type (shared by the eval/generate/merge/export tests) -----------


def train(root: Path, name: str, config: dict | str, *flags: str) -> Path:
    out = root / "runs" / name
    cfg = root / f"{name}.yaml"
    if isinstance(config, str):
        cfg.write_text(config)
    else:
        write_yaml(cfg, config)
    ok(peftkit_cli("train", "--config", cfg, "--output-dir", out, *STEPS, *flags))
    return out


@pytest.fixture(scope="module")
def cls_run(root, bert_dir, sentiment) -> Path:
    config = {
        "model": {"name": str(bert_dir)},
        "task": {"type": "classification", "max_length": 32},
        "data": {"train": str(sentiment), "eval_fraction": 0.25},
        "adapter": {"method": "lora", "r": 2, "target_modules": ["query", "value"]},
        "train": {"lr": 1e-3},
    }
    return train(root, "cls", config, "--adapter.r", "4", "--train.lr", "5e-3")


@pytest.fixture(scope="module")
def cloze_run(root, llama_dir, sentiment) -> Path:
    config = {
        "model": {"name": str(llama_dir)},
        "task": {
            "type": "cloze",
            "template": "{text} It was {mask}.",
            "verbalizer": {0: "terrible", 1: "great"},
            "max_length": 32,
        },
        "data": {"train": str(sentiment), "eval_fraction": 0.25},
        "adapter": {"method": "lora", "r": 2, "target_modules": ["q_proj", "v_proj"]},
    }
    return train(root, "cloze", config, "--adapter.lora_alpha", "4")


@pytest.fixture(scope="module")
def sft_run(root, llama_dir, qa) -> Path:
    config = {
        "model": {"name": str(llama_dir)},
        "task": {"type": "sft", "max_length": 48},
        "data": {"train": str(qa), "eval_fraction": 0.25},
        "adapter": {"method": "lora", "r": 4, "target_modules": "all-linear"},
    }
    return train(root, "sft", config, "--train.lr", "1e-2")


@pytest.fixture(scope="module")
def seq2seq_run(root, t5_dir) -> Path:
    data = write_jsonl(root / "translation.jsonl", [{"source": s, "target": t} for s, t in TRANSLATION])
    config = f"""# written by hand: `lr: 1e-3` (no dot) must read as a float, as YAML 1.2 has it
model: {{name: {t5_dir}}}
task: {{type: seq2seq, max_length: 32}}
data: {{train: {data}, eval_fraction: 0.25}}
adapter: {{method: lora, r: 2, target_modules: all-linear}}
train: {{lr: 1e-3}}
"""
    return train(root, "seq2seq", config)


@pytest.fixture(scope="module")
def full_run(root, llama_dir, qa) -> Path:
    config = {
        "model": {"name": str(llama_dir)},
        "task": {"type": "sft", "max_length": 48},
        "data": {"train": str(qa), "eval_fraction": 0.0},  # nothing held out: trains without evaluating
        "adapter": {"method": "full"},
    }
    return train(root, "full", config, "--adapter.target_modules", "[q_proj]")


# --- 1. train ------------------------------------------------------------------------------------


def _has_run_files(run: Path) -> dict:
    for name in RUN_FILES:
        assert (run / name).is_file(), f"{name} missing in {sorted(p.name for p in run.iterdir())}"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows and rows[-1]["step"] == 3
    return yaml.safe_load((run / "run.yaml").read_text())


def test_train_classification_with_automatic_head(cls_run):
    saved = _has_run_files(cls_run)
    assert saved["adapter"]["r"] == 4 and saved["train"]["lr"] == 5e-3  # flags override the YAML
    assert saved["task"]["labels"] == [0, 1]
    assert (
        "classifier" in json.loads((cls_run / "adapter/adapter_config.json").read_text())["modules_to_save"]
    )


def test_new_head_and_adapter_follow_the_seed_not_the_process_rng(bert_dir, sentiment, tmp_path):
    from peftkit.pipeline import prepare
    from peftkit.run_config import build_run_config

    def trainable(seed: int) -> dict[str, torch.Tensor]:
        torch.rand(11)  # whatever the process drew before must not matter
        run = build_run_config(
            {
                "model": {"name": str(bert_dir)},
                "task": {"type": "classification", "max_length": 32},
                "data": {"train": str(sentiment), "eval_fraction": 0.25},
                "adapter": {"method": "lora", "r": 2, "target_modules": ["query", "value"]},
                "train": {"seed": seed},
                "output_dir": str(tmp_path),
            }
        )
        model = prepare(run).model
        return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    first, again, other = trainable(0), trainable(0), trainable(1)
    assert any("classifier" in n for n in first) and first.keys() == again.keys() == other.keys()
    assert all(torch.equal(first[n], again[n]) for n in first)
    head = next(n for n in first if "classifier" in n and n.endswith("weight"))
    assert not torch.equal(first[head], other[head])  # another seed, another draw


def test_train_cloze_on_causal_lm(cloze_run):
    saved = _has_run_files(cloze_run)
    assert saved["adapter"]["lora_alpha"] == 4 and saved["task"]["type"] == "cloze"


def test_train_sft_with_chat_template(sft_run):
    assert _has_run_files(sft_run)["train"]["lr"] == 1e-2


def test_train_seq2seq(seq2seq_run):
    saved = _has_run_files(seq2seq_run)
    assert saved["task"]["type"] == "seq2seq" and saved["train"]["lr"] == 1e-3
    final = json.loads((seq2seq_run / "metrics.jsonl").read_text().splitlines()[-1])
    assert 0 < final["eval_loss"] < 10  # the vocabulary has 100 tokens: ln(100) = 4.6 at random


def test_train_full_method_without_held_out_data(full_run):
    saved = _has_run_files(full_run)
    assert saved["adapter"]["method"] == "full" and saved["adapter"]["target_modules"] == ["q_proj"]
    assert not any("eval_loss" in line for line in (full_run / "metrics.jsonl").read_text().splitlines())
    fails(peftkit_cli("eval", "--run", full_run), "eval", "no held-out data")


# --- 2. eval -------------------------------------------------------------------------------------


def test_eval_classification_prints_accuracy(cls_run):
    metrics = json_out(ok(peftkit_cli("eval", "--run", cls_run)))
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0 and "eval_macro_f1" in metrics
    assert metrics["adapter"] == str(cls_run / "adapter")


def test_eval_cloze_zero_shot_base(cloze_run, tmp_path):
    out = ok(peftkit_cli("eval", "--run", cloze_run, "--base", "--out", tmp_path / "m.json"))
    metrics = json_out(out)
    assert metrics["adapter"] == "(base model)" and 0.0 <= metrics["eval_accuracy"] <= 1.0
    assert json.loads((tmp_path / "m.json").read_text()) == metrics


def test_eval_sft_loss(sft_run):
    metrics = json_out(ok(peftkit_cli("eval", "--run", sft_run)))
    assert metrics["eval_loss"] > 0 and metrics["eval_perplexity"] > 1


def test_eval_sft_generate_scores_bleu_and_exact_match(sft_run):
    metrics = json_out(ok(peftkit_cli("eval", "--run", sft_run, "--generate", "--max-new-tokens", "4")))
    assert 0.0 <= metrics["eval_exact_match"] <= 1.0 and metrics["eval_bleu"] >= 0.0
    assert metrics["eval_inputs"] == 2


def test_eval_seq2seq_generate(seq2seq_run):
    metrics = json_out(ok(peftkit_cli("eval", "--run", seq2seq_run, "--generate", "--max-new-tokens", "4")))
    assert metrics["eval_loss"] > 0 and metrics["eval_bleu"] >= 0.0 and metrics["eval_inputs"] == 2


def test_eval_needs_a_run_folder(tmp_path):
    fails(peftkit_cli("eval"), "eval", "--run")
    fails(peftkit_cli("eval", "--run", tmp_path), "eval", "has no run.yaml")


# --- 3. generate ---------------------------------------------------------------------------------


def test_generate_from_argument_and_stdin(llama_dir, sft_run):
    args = ("generate", "--model", llama_dir, "--adapter", sft_run / "adapter", "--max-new-tokens", "5")
    from_arg = ok(peftkit_cli(*args, "what is the capital of france ?"))
    from_stdin = ok(peftkit_cli(*args, stdin="what is the capital of france ?\n"))  # as `echo ... |`
    assert from_arg.stdout.strip() and from_stdin.stdout == from_arg.stdout  # greedy: the same text
    assert ok(peftkit_cli(*args, "--raw", "the movie was")).stdout.strip()


def test_generate_strategies(llama_dir):
    base = ("generate", "--model", llama_dir, "--raw", "--max-new-tokens", "4", "the movie was")
    beam = ok(
        peftkit_cli(*base, "--num-beams", "3", "--length-penalty", "0.5")
    )  # not streamed: printed at the end
    contrastive = ok(peftkit_cli(*base, "--penalty-alpha", "0.6", "--top-k", "3"))
    sampled = [
        ok(peftkit_cli(*base, "--temperature", "0.8", "--top-p", "0.9", "--seed", "3")) for _ in range(2)
    ]
    assert beam.stdout.strip() and contrastive.stdout.strip()
    assert sampled[0].stdout == sampled[1].stdout  # same seed, same text
    fails(peftkit_cli(*base, "--top-p", "2"), "generate", "top_p")


def test_generate_empty_stdin_is_an_error(llama_dir):
    fails(peftkit_cli("generate", "--model", llama_dir, stdin="  \n"), "generate", "empty prompt")


def test_model_dir_without_weights_is_a_clear_error(llama_dir, tmp_path):
    (tmp_path / "config.json").write_text((llama_dir / "config.json").read_text())
    fails(peftkit_cli("generate", "--model", tmp_path, "hello"), "generate", "model.safetensors")


# --- 4. merge ------------------------------------------------------------------------------------


def _llama_inputs() -> dict[str, torch.Tensor]:
    ids = torch.tensor([[4, 8, 11, 17, 29, 89], [4, 19, 17, 30, 89, 1]])
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def test_merge_gives_a_plain_transformers_model(llama_dir, sft_run, root):
    out = root / "merged"
    ok(peftkit_cli("merge", "--model", llama_dir, "--adapter", sft_run / "adapter", "--out", out))
    merged = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert transformers.AutoTokenizer.from_pretrained(out).chat_template
    base = transformers.AutoModelForCausalLM.from_pretrained(llama_dir)
    adapted = peftkit.PeftModel.from_pretrained(base, sft_run / "adapter").eval()
    with torch.no_grad():
        expected, got = adapted(**_llama_inputs()).logits, merged(**_llama_inputs()).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_merge_into_existing_dir_is_refused(llama_dir, sft_run, tmp_path):
    out = tmp_path / "exists"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    args = ("merge", "--model", llama_dir, "--adapter", sft_run / "adapter", "--out", out)
    fails(peftkit_cli(*args), "merge", "exists")
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".exists")]


def test_merge_needs_adapter(llama_dir, tmp_path):
    fails(peftkit_cli("merge", "--model", llama_dir, "--out", tmp_path / "m"), "merge", "--adapter")


# --- 5. export -----------------------------------------------------------------------------------


def test_export_peft_loads_in_peft_with_identical_logits(llama_dir, sft_run, tmp_path):
    peft = pytest.importorskip("peft")
    out = tmp_path / "peft"
    ok(peftkit_cli("export", sft_run / "adapter", "--format", "peft", "--out", out))
    ours = peftkit.PeftModel.from_pretrained(
        transformers.AutoModelForCausalLM.from_pretrained(llama_dir), sft_run / "adapter"
    ).eval()
    theirs = peft.PeftModel.from_pretrained(
        transformers.AutoModelForCausalLM.from_pretrained(llama_dir), out
    ).eval()
    with torch.no_grad():
        torch.testing.assert_close(
            theirs(**_llama_inputs()).logits, ours(**_llama_inputs()).logits, atol=0, rtol=0
        )


def test_export_full_adapter_has_no_peft_equivalent(full_run, tmp_path):
    out = tmp_path / "peft"
    fails(
        peftkit_cli("export", full_run / "adapter", "--format", "peft", "--out", out),
        "export",
        "no equivalent in peft",
    )
    assert not out.exists()


def test_export_missing_adapter_is_a_clear_error(tmp_path):
    out = peftkit_cli("export", tmp_path / "nope", "--format", "peft", "--out", tmp_path / "o")
    fails(out, "export", "nope")


# --- 6. errors -----------------------------------------------------------------------------------


def _config(llama_dir: Path, data: Path, **sections) -> dict:
    base = {
        "model": {"name": str(llama_dir)},
        "task": {"type": "sft", "max_length": 48},
        "data": {"train": str(data)},
        "adapter": {"method": "lora", "r": 2, "target_modules": ["q_proj"]},
    }
    return {**base, **sections}


def test_unknown_section_and_field_are_named_with_allowed_values(llama_dir, qa, tmp_path):
    cfg = write_yaml(tmp_path / "a.yaml", {**_config(llama_dir, qa), "optimiser": {"lr": 1}})
    fails(peftkit_cli("train", "--config", cfg), "train", "optimiser", "unknown section", "'train'")
    cfg = write_yaml(tmp_path / "b.yaml", _config(llama_dir, qa, train={"learning_rate": 1e-3}))
    fails(peftkit_cli("train", "--config", cfg), "train", "train.learning_rate", "unknown field", "'lr'")
    # no flag abbreviations: --adapter.rank is not taken for --adapter.rank_pattern
    out = peftkit_cli(
        "train", "--config", write_yaml(tmp_path / "c.yaml", _config(llama_dir, qa)), "--adapter.rank", "4"
    )
    assert out.returncode == 2 and "unrecognized arguments: --adapter.rank" in out.stderr


def test_unknown_adapter_field_is_named(llama_dir, qa, tmp_path):
    cfg = write_yaml(tmp_path / "c.yaml", _config(llama_dir, qa, adapter={"method": "lora", "rank": 4}))
    fails(peftkit_cli("train", "--config", cfg), "train", "adapter.rank", "'r'")


def test_bad_value_names_allowed_values(llama_dir, qa, tmp_path):
    cfg = write_yaml(tmp_path / "c.yaml", _config(llama_dir, qa))
    err = fails(peftkit_cli("train", "--config", cfg, "--train.schedule", "exp"), "train", "train.schedule")
    assert "'exp'" in err and "'cosine'" in err and "'linear'" in err
    fails(peftkit_cli("train", "--config", cfg, "--task.type", "ner"), "train", "task.type", "'sft'")


def test_bad_types_are_named(llama_dir, qa, tmp_path):
    cloze = {"type": "cloze", "template": 5, "verbalizer": {0: "bad", 1: "good"}}
    cfg = write_yaml(tmp_path / "c.yaml", _config(llama_dir, qa, task=cloze))
    fails(peftkit_cli("train", "--config", cfg), "train", "task.template: expected str")
    fails(peftkit_cli("train", "--config", cfg, "--task.template", "'{text} was'"), "train", "{mask}")
    flags = ("--task.template", "'{text} was {mask}'", "--task.verbalizer", "[bad, good]")
    fails(peftkit_cli("train", "--config", cfg, *flags), "train", "task.verbalizer")
    cfg = write_yaml(tmp_path / "d.yaml", _config(llama_dir, qa))
    fails(peftkit_cli("train", "--config", cfg, "--data.columns", "text"), "train", "data.columns")
    fails(peftkit_cli("train", "--config", cfg, "--model.name", "5"), "train", "model.name: expected str")
    fails(
        peftkit_cli("train", "--config", cfg, "--adapter.lora_dropout", "x"),
        "train",
        "adapter.lora_dropout: expected float",
    )


def test_missing_task_type(llama_dir, qa, tmp_path):
    cfg = write_yaml(tmp_path / "c.yaml", _config(llama_dir, qa, task={"max_length": 8}))
    fails(peftkit_cli("train", "--config", cfg), "train", "task.type", "missing", "'classification'")


def test_missing_config_and_data_files(llama_dir, tmp_path):
    fails(peftkit_cli("train", "--config", tmp_path / "none.yaml"), "train", "none.yaml")
    cfg = write_yaml(tmp_path / "c.yaml", _config(llama_dir, tmp_path / "absent.jsonl"))
    fails(peftkit_cli("train", "--config", cfg), "train", "absent.jsonl", "no such file")


def test_malformed_rows_are_skipped_and_reported_by_line(llama_dir, tmp_path):
    rows = [json.dumps({"prompt": p, "response": r}) for p, r in QA]
    train_file, eval_file = tmp_path / "messy.jsonl", tmp_path / "messy_eval.jsonl"
    train_file.write_text("\n".join([*rows[:2], '{"prompt": "broken', "", *rows[2:6]]) + "\n")  # lines 3, 4
    eval_file.write_text("\n".join([rows[6], '{"prompt": "no response"}', rows[7]]) + "\n")  # line 2
    cfg = write_yaml(tmp_path / "c.yaml", _config(llama_dir, train_file))
    args = ("--data.eval", eval_file, "--output-dir", tmp_path / "run", *STEPS)
    out = ok(peftkit_cli("train", "--config", cfg, *args))
    assert "messy.jsonl: 6 records; skipped 2 bad rows (lines 3, 4; first: invalid JSON" in out.stdout
    assert "messy_eval.jsonl: 2 records; skipped 1 bad rows (lines 2; first: missing field" in out.stdout
    assert (tmp_path / "run/adapter/adapter_config.json").is_file()


def test_all_rows_bad_is_an_error(llama_dir, tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"prompt": "x"\n\n[1, 2]\n')
    cfg = write_yaml(tmp_path / "c.yaml", _config(llama_dir, data))
    out = peftkit_cli("train", "--config", cfg, "--output-dir", tmp_path / "run")
    err = fails(out, "train", "every row is bad", "line 1: invalid JSON", "line 2: empty row")
    assert "line 3: expected a JSON object" in err
    assert not (tmp_path / "run").exists()


def test_resume_without_checkpoint(llama_dir, qa, tmp_path):
    cfg = write_yaml(tmp_path / "c.yaml", _config(llama_dir, qa))
    args = ("train", "--config", cfg, "--output-dir", tmp_path / "run", "--resume", *STEPS)
    fails(peftkit_cli(*args), "train", "--resume", "no complete checkpoint")


# --- 7. help -------------------------------------------------------------------------------------


def test_train_help_lists_every_option():
    out = ok(peftkit_cli("train", "--help")).stdout
    for flag in ("--config", "--resume", "--output-dir", "--train.lr", "--adapter.method", "--data.train"):
        assert flag in out
    assert "--adapter.r " in ok(peftkit_cli("train", "--adapter.method", "lora", "--help")).stdout
    for flag in ("--task.template", "--task.verbalizer", "--adapter.method", "--model.name"):
        assert flag in out
