"""Bad input refused when it comes in, and the Python API never half-changes a model (issue 15).

Configs: NaN/infinity in any number, a value of the wrong type, an invalid regex. Data: labels that are
no class, a single class, errors naming the file's line. Adapter files: a non-object config, ranks
beyond the layer, a base of the same shapes but other weights. The API: a second wrapper, a failed
load, saving nothing, adding while merged. Folders written whole get the usual modes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import types
import typing
import warnings
from pathlib import Path

import pytest
import torch
import transformers
from conftest import build, logits, make_inputs
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tiny_tokenizer import tiny_tokenizer

from peftkit import LoraConfig, PeftModel, get_peft_model
from peftkit.composition import add_weighted_adapter
from peftkit.composition.lorahub import LoraHubConfig
from peftkit.data import DataError, TaskSpec, encode, read_records
from peftkit.decoding import DecodingConfig
from peftkit.errors import AdapterError, BaseModelMismatchError, CheckpointError, ConfigError
from peftkit.io import atomic_directory
from peftkit.layer import AdapterLayer, adapter_layers
from peftkit.registry import get_method, list_methods
from peftkit.run_config import DataSection, ModelSection, apply_overrides, build_run_config
from peftkit.training import TrainConfig

# --- every float field of every config refuses NaN and infinity ----------------------------------

# the fields a config cannot be built without
REQUIRED = {"adaptlora": {"tasks": ["a"]}, "fusion": {"adapter_names": ["a"]}}
OTHER_CONFIGS = {
    "train": (TrainConfig, {}),
    "decoding": (DecodingConfig, {}),
    "lorahub": (LoraHubConfig, {}),
    "task": (TaskSpec, {"type": "classification"}),
    "model": (ModelSection, {}),
    "data": (DataSection, {}),
}


def _takes_float(hint) -> bool:
    """A float field, or an optional one (``float | None``); containers of floats are tested apart."""
    return hint is float or (isinstance(hint, types.UnionType) and float in typing.get_args(hint))


def float_fields():
    classes = {m: (get_method(m).config_class, REQUIRED.get(m, {})) for m in list_methods()}
    for label, (cls, required) in {**classes, **OTHER_CONFIGS}.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if _takes_float(hints[f.name]):
                yield pytest.param(cls, required, f.name, id=f"{label}.{f.name}")


FLOAT_FIELDS = list(float_fields())


def test_the_table_covers_the_named_fields():
    ids = {p.id for p in FLOAT_FIELDS}
    assert {"train.lr", "train.max_grad_norm", "lora.lora_alpha", "decoding.length_penalty"} <= ids
    assert len({i.split(".")[0] for i in ids}) >= 10  # most methods have a float field


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize(("cls", "required", "name"), FLOAT_FIELDS)
def test_non_finite_floats_are_refused_when_built(cls, required, name, value):
    with pytest.raises(ConfigError, match="must be a finite number") as err:
        cls(**required, **{name: value})
    assert err.value.field == name


def test_non_finite_inside_a_mapping_is_named():
    with pytest.raises(ConfigError) as err:
        LoraConfig(target_modules=["q_proj"], alpha_pattern={"q_proj": math.nan})
    assert err.value.field == "alpha_pattern['q_proj']"


def test_compose_weights_must_be_finite():
    model = get_peft_model(build("llama"), LoraConfig(r=2, target_modules=["q_proj"]), "a")
    model.add_adapter("b", LoraConfig(r=2, target_modules=["q_proj"]))
    with pytest.raises(ConfigError, match="weights\\[0\\]: must be a finite number"):
        add_weighted_adapter(model, ["a", "b"], [math.nan, 1.0], "m")
    assert list(model.peft_config) == ["a", "b"]  # nothing added


# --- types and regexes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: TrainConfig(epochs="1"), "epochs"),
        (lambda: TrainConfig(lr="1e-3"), "lr"),
        (lambda: TrainConfig(batch_size=True), "batch_size"),
        (lambda: TrainConfig(metric_for_best=3), "metric_for_best"),
        (lambda: LoraConfig(r="8"), "r"),
        (lambda: LoraConfig(lora_alpha=None), "lora_alpha"),
        (lambda: LoraConfig(layers_to_transform=["1"]), "layers_to_transform"),
        (lambda: DecodingConfig(top_k=2.5), "top_k"),
        (lambda: DecodingConfig(stop_strings=[1]), "stop_strings"),
        (lambda: TaskSpec(type="sft", max_length="8"), "max_length"),
    ],
)
def test_a_wrong_type_is_named_not_a_type_error(make, field):
    with pytest.raises(ConfigError, match="expected") as err:
        make()
    assert err.value.field == field


def test_forms_the_configs_accept_still_pass():
    assert LoraConfig(target_modules=("q_proj", "v_proj")).target_modules == ["q_proj", "v_proj"]
    assert LoraConfig(target_modules={"v_proj", "q_proj"}).target_modules == ["q_proj", "v_proj"]
    assert LoraConfig(init_lora_weights=True).init_lora_weights == "kaiming"  # peft's spelling
    assert DecodingConfig(stop_strings="END").stop_strings == ["END"]
    assert TrainConfig(epochs=2, lr=1).epochs == 2  # an int is a float


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"target_modules": "q_proj(("}, "target_modules"),
        ({"target_modules": ["q_proj"], "exclude_modules": "[a-"}, "exclude_modules"),
        ({"target_modules": ["q_proj"], "rank_pattern": {"q(": 4}}, "rank_pattern['q(']"),
        ({"target_modules": ["q_proj"], "alpha_pattern": {"*v": 4}}, "alpha_pattern['*v']"),
    ],
)
def test_invalid_regex_is_refused_when_built(kwargs, field):
    with pytest.raises(ConfigError, match="not a valid regular expression") as err:
        LoraConfig(**kwargs)
    assert err.value.field == field


def test_flag_value_yaml_cannot_parse_names_the_flag():
    with pytest.raises(ConfigError, match="is not a YAML value") as err:
        apply_overrides({}, {"train.lr": "[1,"})
    assert err.value.field == "--train.lr"
    assert apply_overrides({}, {"train.lr": "'[1,'"})["train"]["lr"] == "[1,"  # quoted: a string


# --- metric_for_best is checked before anything loads ---------------------------------------------


def _run(task: dict, metric: str):
    return build_run_config(
        {"task": task, "data": {"train": "x.jsonl"}, "train": {"metric_for_best": metric}}
    )


@pytest.mark.parametrize(
    ("task", "metric"),
    [
        ({"type": "classification"}, "eval_bleu"),
        ({"type": "classification"}, "eval_perplexity"),
        ({"type": "sft"}, "eval_accuracy"),
        ({"type": "seq2seq"}, "eval_exact_match"),
        ({"type": "classification"}, "eval_accuracy_sst2"),  # no task_column: no per-task accuracy
    ],
)
def test_metric_for_best_the_task_does_not_report_fails_at_once(task, metric, tmp_path, monkeypatch):
    from peftkit import pipeline

    def no_loading(*args, **kwargs):
        raise AssertionError("prepare() ran: the metric was not checked first")

    monkeypatch.setattr(pipeline, "prepare", no_loading)
    run = dataclasses.replace(_run(task, metric), output_dir=str(tmp_path / "run"))
    with pytest.raises(ConfigError, match=f"'{metric}' is not reported") as err:
        pipeline.train_run(run)
    assert err.value.field == "train.metric_for_best"
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("task", "metric"),
    [
        ({"type": "classification"}, "eval_macro_f1"),
        ({"type": "classification", "task_column": "t"}, "eval_accuracy_sst2"),
        ({"type": "sft"}, "eval_perplexity"),
    ],
)
def test_metrics_the_task_reports_pass(task, metric):
    from peftkit.pipeline import check_metric_for_best

    check_metric_for_best(_run(task, metric))


def test_the_metric_table_matches_what_evaluation_reports(tmp_path):
    """EVAL_METRICS must list exactly what each task's eval_fn returns (else the check lies)."""
    from peftkit.pipeline import EVAL_METRICS, TASKS

    tok = tiny_tokenizer()
    model = transformers.BertForSequenceClassification(
        transformers.BertConfig(
            vocab_size=len(tok),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_labels=2,
        )
    ).eval()
    spec = TaskSpec(type="classification", labels=[0, 1])
    examples = encode([{"text": "good film", "label": 1}, {"text": "bad", "label": 0}], tok, spec).examples
    from peftkit.data import Collator

    _, eval_fn = TASKS["classification"](model, tok, spec, examples, Collator(tok.pad_token_id))
    assert set(eval_fn(model)) == set(EVAL_METRICS["classification"])


# --- labels ----------------------------------------------------------------------------------------


def _jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


GOOD = ['{"text": "great film", "label": 1}', '{"text": "awful film", "label": 0}']


@pytest.mark.parametrize("bad", ["NaN", "Infinity", '{"a": 1}', "[1, 2]"])
def test_a_label_that_is_no_class_names_the_file_line(bad, tmp_path):
    data = _jsonl(tmp_path / "d.jsonl", [*GOOD, *GOOD, f'{{"text": "odd film", "label": {bad}}}', *GOOD])
    records = read_records(data).records
    spec = TaskSpec(type="classification")
    with pytest.raises(DataError, match="d.jsonl line 5: label .* is not a class label"):
        spec.with_labels(records)
    with pytest.raises(DataError, match="d.jsonl line 5"):  # with labels given: the eval path
        encode(records, tiny_tokenizer(), TaskSpec(type="classification", labels=[0, 1]))


def test_one_class_is_refused_not_a_regression_head(tmp_path):
    data = _jsonl(tmp_path / "one.jsonl", [GOOD[0]] * 4)
    with pytest.raises(DataError, match="single class \\[1\\].*at least two.*task.labels"):
        TaskSpec(type="classification").with_labels(read_records(data).records)
    with pytest.raises(ConfigError, match="at least two labels"):
        TaskSpec(type="classification", labels=["pos"])
    # the opt-in: every class listed, though the data holds one
    spec = TaskSpec(type="classification", labels=[0, 1]).with_labels(read_records(data).records)
    assert encode(read_records(data), tiny_tokenizer(), spec).labels == [0, 1]


def test_bad_label_row_is_the_file_line_after_the_split(tmp_path):
    """The split shuffles: the error must still name the line in the file, not the position."""
    from peftkit.pipeline import read_split

    lines = [f'{{"text": "film {i}", "label": {i % 2}}}' for i in range(20)]
    lines[13] = '{"text": "film 13", "label": 7}'  # line 14
    data = _jsonl(tmp_path / "d.jsonl", lines)
    run = build_run_config(
        {"task": {"type": "classification"}, "data": {"train": str(data), "eval_fraction": 0.5, "seed": 3}}
    )
    train, held = read_split(run)
    rows = train if any(r["label"] == 7 for r in train) else held
    assert [r["label"] for r in rows].index(7) != 13  # shuffled: the index is not the line
    spec = TaskSpec(type="classification", labels=[0, 1])
    with pytest.raises(DataError, match="d.jsonl line 14: label 7 is not one of \\[0, 1\\]"):
        encode(rows, tiny_tokenizer(), spec)


def test_csv_rows_name_their_line_too(tmp_path):
    data = tmp_path / "d.csv"
    data.write_text("text,label\ngreat,1\nawful,0\n,1\nodd,\n")  # lines 4 and 5 are skipped
    records = read_records(data, required=["text", "label"]).records
    assert [r.where for r in records] == ["d.csv line 2", "d.csv line 3"]
    assert records[0] == {"text": "great", "label": "1"}  # still a plain dict to everything else


# --- untrusted or wrong adapter files ----------------------------------------------------------------


def _trained(kind: str = "llama", seed: int = 0, **lora) -> PeftModel:
    targets = ["query", "value"] if kind == "bert" else ["q_proj", "v_proj"]
    config = LoraConfig(**{"r": 2, "target_modules": targets, **lora})
    model = get_peft_model(build(kind, seed=seed), config)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for _, layer in model.layers():
            for p in layer.adapter_parameters("default"):
                p.add_(torch.randn(p.shape, generator=g))
    return model


@pytest.fixture
def saved(tmp_path) -> Path:
    _trained().save_pretrained(tmp_path / "a")
    return tmp_path / "a"


@pytest.mark.parametrize("text", ["[1, 2]", '"lora"', "3", "null"])
def test_adapter_config_that_is_no_object_is_a_checkpoint_error(saved, text):
    (saved / "adapter_config.json").write_text(text)
    with pytest.raises(CheckpointError, match="must hold a JSON object"):
        PeftModel.from_pretrained(build("llama"), saved)


def _edit_config(folder: Path, **changes) -> None:
    data = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**data, **changes}))


@pytest.mark.parametrize("r", [65, 10**15])  # 10**15: more than any address space, if allocated
def test_rank_beyond_the_layer_is_refused_before_allocating(saved, r):
    _edit_config(saved, r=r)
    base = build("llama")
    with pytest.raises(ConfigError, match=f"r: {r} is too large for model.layers.0.self_attn.q_proj"):
        PeftModel.from_pretrained(base, saved)
    assert not list(adapter_layers(base))


def test_rank_bounds_hold_for_every_low_rank_method():
    from peftkit import AdaLoraConfig, AdaPtLoraConfig

    for config in (
        LoraConfig(r=49, target_modules=["v_proj"]),  # v_proj: 32 -> 16, so at most 32 + 16
        AdaLoraConfig(init_r=49, target_r=1, target_modules=["v_proj"]),
        AdaPtLoraConfig(tasks=["a"], r=49, target_modules=["v_proj"]),
    ):
        with pytest.raises(ConfigError, match="is too large for model.layers.0.self_attn.v_proj"):
            get_peft_model(build("llama"), config)
    get_peft_model(build("llama"), LoraConfig(r=48, target_modules=["v_proj"]))  # d_in + d_out: accepted


def test_virtual_token_sizes_are_bounded_by_the_model():
    from peftkit import BottleneckConfig, PromptTuningConfig

    with pytest.raises(ConfigError, match="num_virtual_tokens: 65 is too large.*max_position_embeddings"):
        get_peft_model(build("llama"), PromptTuningConfig(num_virtual_tokens=65))
    with pytest.raises(ConfigError, match="token_dim: 4096 is too large"):
        get_peft_model(build("llama"), PromptTuningConfig(num_virtual_tokens=4, token_dim=4096))
    with pytest.raises(ConfigError, match="bottleneck_size: 33 is too large"):
        get_peft_model(build("bert"), BottleneckConfig(bottleneck_size=33))
    with pytest.raises(ConfigError, match="reduction_factor: must be >= 1"):
        BottleneckConfig(reduction_factor=0.001)


def test_same_shapes_other_weights_is_refused_with_the_override_named(saved):
    other = build("llama", seed=5)
    with pytest.raises(BaseModelMismatchError, match="holds other weights.*ignore_mismatch=True"):
        PeftModel.from_pretrained(other, saved)
    assert not list(adapter_layers(other))
    loaded = PeftModel.from_pretrained(other, saved, ignore_mismatch=True)
    assert "default" in loaded.peft_config
    PeftModel.from_pretrained(build("llama"), saved)  # the base it was trained on


def test_the_digest_ignores_dtype_and_is_taken_before_merges(tmp_path):
    model = _trained()
    model.merge_adapter()  # the base weights now hold the deltas
    model.save_pretrained(tmp_path / "merged")
    PeftModel.from_pretrained(build("llama"), tmp_path / "merged")
    PeftModel.from_pretrained(build("llama").to(torch.bfloat16), tmp_path / "merged")
    pissa = _trained(init_lora_weights="pissa")  # PiSSA rewrites the base: saved for the original
    pissa.save_pretrained(tmp_path / "pissa")
    PeftModel.from_pretrained(build("llama"), tmp_path / "pissa")


def test_an_old_checkpoint_without_digests_loads_with_a_note(saved):
    path = saved / "adapter_model.safetensors"
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
    fp = json.loads(meta["peftkit_fingerprint"])
    assert fp["digests"]
    del fp["digests"]
    save_file(load_file(path), path, metadata={**meta, "peftkit_fingerprint": json.dumps(fp)})
    with pytest.warns(UserWarning, match="without weight digests"):
        PeftModel.from_pretrained(build("llama", seed=5), saved)  # only shapes are checked


def test_prompt_methods_digest_the_input_embeddings(tmp_path):
    from peftkit import PromptTuningConfig

    get_peft_model(build("llama"), PromptTuningConfig(num_virtual_tokens=3)).save_pretrained(tmp_path)
    with pytest.raises(BaseModelMismatchError, match="model.embed_tokens holds other weights"):
        PeftModel.from_pretrained(build("llama", seed=5), tmp_path)


# --- the Python API never leaves a model half-changed ----------------------------------------------


def test_get_peft_model_twice_on_one_base_is_refused_and_the_first_kept():
    first = _trained()
    x = make_inputs("llama")
    before = logits(first, x)
    for again in (
        lambda: get_peft_model(first.get_base_model(), LoraConfig(r=2, target_modules=["q_proj"])),
        lambda: get_peft_model(first, LoraConfig(r=2, target_modules=["q_proj"])),
    ):
        with pytest.raises(AdapterError, match="already wrapped by a PeftModel.*add_adapter"):
            again()
    torch.testing.assert_close(logits(first, x), before, atol=0, rtol=0)
    base = first.unload()  # the bare base may be wrapped anew
    get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj"]))


def test_prompt_only_wrapper_also_marks_its_base():
    from peftkit import PromptTuningConfig

    base = build("llama")
    get_peft_model(base, PromptTuningConfig(num_virtual_tokens=2))
    with pytest.raises(AdapterError, match="already wrapped"):
        get_peft_model(base, PromptTuningConfig(num_virtual_tokens=2))


def _state(model: torch.nn.Module) -> dict:
    return {
        "params": {n: (p.detach().clone(), p.requires_grad) for n, p in model.named_parameters()},
        "types": {n: type(m) for n, m in model.named_modules()},
    }


def _assert_unchanged(model: torch.nn.Module, before: dict) -> None:
    after = _state(model)
    assert after["types"] == before["types"] and not any(isinstance(m, AdapterLayer) for m in model.modules())
    assert after["params"].keys() == before["params"].keys()
    for name, (value, grad) in before["params"].items():
        assert torch.equal(after["params"][name][0], value) and after["params"][name][1] == grad, name


@pytest.mark.parametrize("broken", ["missing tensor", "wrong shape", "bad bias"])
def test_failed_from_pretrained_leaves_the_base_unwrapped_and_unchanged(tmp_path, broken):
    """BERT with trained biases and head: layers, wrapped head and base tensors all come back."""
    model = _trained("bert", bias="all", modules_to_save=["classifier"])
    model.save_pretrained(tmp_path)
    path = tmp_path / "adapter_model.safetensors"
    tensors = load_file(path)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    key = sorted(k for k in tensors if "lora_B" in k)[-1]
    bias = next(k for k in tensors if k.endswith("attention.output.dense.bias"))
    if broken == "missing tensor":
        del tensors[key]
    elif broken == "wrong shape":
        tensors[key] = torch.zeros(3, 3)
    else:
        tensors[bias] = torch.zeros(999)  # the last thing loaded: checked before any tensor is written
    save_file(tensors, path, metadata=meta)
    base = build("bert")
    for p in base.classifier.parameters():
        p.requires_grad_(False)  # the caller's own flags come back too
    x = make_inputs("bert")
    expected, before = logits(base, x), _state(base)
    with pytest.raises((AdapterError, CheckpointError)):
        PeftModel.from_pretrained(base, tmp_path)
    _assert_unchanged(base, before)
    torch.testing.assert_close(logits(base, x), expected, atol=0, rtol=0)
    get_peft_model(base, LoraConfig(r=2, target_modules=["query"]))  # not marked as wrapped


def test_failed_get_peft_model_leaves_the_base_unchanged():
    base = build("llama")
    before = _state(base)
    # q_proj is wrapped first, then modules_to_save matches nothing: all of it is taken back
    with pytest.raises(Exception, match="matched no module"):
        get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj"], modules_to_save=["nope"]))
    _assert_unchanged(base, before)


def test_failed_add_adapter_leaves_the_model_as_it_was():
    model = _trained()
    x = make_inputs("llama")
    expected = logits(model, x)
    types = {n: type(m) for n, m in model.named_modules()}
    with pytest.raises(Exception, match="matched no module"):
        model.add_adapter("b", LoraConfig(r=2, target_modules=["q_proj", "k_proj"], modules_to_save=["x"]))
    assert list(model.peft_config) == ["default"] and model.active_adapters == ["default"]
    assert {n: type(m) for n, m in model.named_modules()} == types
    assert all(layer.adapter_names() == ["default"] for _, layer in model.layers())
    torch.testing.assert_close(logits(model, x), expected, atol=0, rtol=0)


@pytest.mark.parametrize("how", ["delete", "unload", "merge_and_unload"])
def test_saving_with_no_adapter_left_raises(tmp_path, how):
    model = _trained()
    {"delete": lambda: model.delete_adapter("default"), "unload": model.unload}.get(
        how, model.merge_and_unload
    )()
    with pytest.raises(AdapterError, match="nothing to save"):
        model.save_pretrained(tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_add_adapter_while_merged_fails_before_changing_anything():
    model = _trained()
    model.merge_adapter()
    x = make_inputs("llama")
    expected = logits(model, x)
    with pytest.raises(AdapterError, match="merged.*unmerge_adapter\\(\\) before adding adapter 'b'"):
        model.add_adapter("b", LoraConfig(r=2, target_modules=["q_proj", "k_proj"]))
    assert list(model.peft_config) == ["default"]
    assert all(layer.adapter_names() == ["default"] for _, layer in model.layers())
    torch.testing.assert_close(logits(model, x), expected, atol=0, rtol=0)
    model.unmerge_adapter()
    model.add_adapter("b", LoraConfig(r=2, target_modules=["q_proj", "k_proj"]))  # unmerged: it works


# --- generators, temperatures, modes ----------------------------------------------------------------


def test_an_encoder_checkpoint_is_no_generator(tmp_path):
    from peftkit.models import load_model

    tok = tiny_tokenizer()
    config = transformers.BertConfig(
        vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
    )
    transformers.BertModel(config).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="no trained weights for .* causal-lm.*cls.predictions"):
        load_model(str(tmp_path), task="causal-lm")
    load_model(str(tmp_path), task="seq-cls")  # a new classification head is expected


@pytest.mark.parametrize("value", [0.0, -1.0, math.nan])
def test_decoding_temperature_must_be_positive(value):
    with pytest.raises(ConfigError) as err:
        DecodingConfig(strategy="sample", temperature=value)
    assert err.value.field == "temperature"


def test_atomic_directory_gives_the_usual_modes(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_directory(tmp_path / "out") as tmp:
            (tmp / "sub").mkdir(mode=0o700)
            for name in ("a.json", "sub/b.bin"):
                (tmp / name).write_text("x")
                os.chmod(tmp / name, 0o600)  # as a library writing through a temporary file does
    finally:
        os.umask(old)
    modes = {p.relative_to(tmp_path).as_posix(): p.stat().st_mode & 0o777 for p in tmp_path.rglob("*")}
    assert modes == {"out": 0o755, "out/sub": 0o755, "out/a.json": 0o644, "out/sub/b.bin": 0o644}


def test_no_warning_for_a_checkpoint_with_digests(saved):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        PeftModel.from_pretrained(build("llama"), saved)


@pytest.mark.parametrize("group", [None, "g"])
def test_validation_holdout_never_reads_the_test_rows(tmp_path, group):
    """``data.holdout: validation`` (choosing settings): the test rows stay out of both training and
    validation, the validation rows are out of training, sizes follow eval_fraction, groups stay whole."""
    from peftkit.pipeline import read_split

    lines = [f'{{"text": "film {i}", "label": {i % 2}, "g": {i // 4}}}' for i in range(200)]
    data = _jsonl(tmp_path / "d.jsonl", lines)
    section = {"train": str(data), "eval_fraction": 0.2, "seed": 3, "group_column": group}
    runs = {
        h: build_run_config({"task": {"type": "classification"}, "data": {**section, "holdout": h}})
        for h in ("test", "validation")
    }
    train, test = read_split(runs["test"])
    vtrain, validation = read_split(runs["validation"])
    text = lambda rows: {r["text"] for r in rows}  # noqa: E731
    assert not text(test) & (text(vtrain) | text(validation))
    assert not text(validation) & text(vtrain) and text(vtrain) | text(validation) == text(train)
    assert len(validation) == pytest.approx(0.2 * len(train), abs=4)
    if group:
        assert not {r["g"] for r in validation} & {r["g"] for r in vtrain}
    with pytest.raises(ConfigError, match="data.holdout"):
        build_run_config({"task": {"type": "classification"}, "data": {**section, "holdout": "dev"}})
