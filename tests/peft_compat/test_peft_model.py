"""The ``PeftModel`` API a peft user's code relies on: task classes, ``AutoPeftModel*``, configs from disk,
``TaskType`` / ``PeftType``, parameter counts, layer and model status, state-dict helpers, parameter names,
kbit preparation and saving a new classification head (peft's ``test_other.py`` / ``test_auto.py`` /
``test_config.py`` / ``test_tuners_utils.py`` cover these; ported here on tiny models)."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
import torch
import transformers
from conftest import tiny_llama
from safetensors.torch import load_file

from .support import adapted_paths, base_model, inputs_for, output, perturb, save_base, tiny_bert_for

BERT_QV = ["query", "value"]
TASKS = [
    pytest.param(
        "CAUSAL_LM", lambda: base_model("llama"), ["q_proj", "v_proj"], "PeftModelForCausalLM", id="causal_lm"
    ),
    pytest.param(
        "SEQ_CLS", lambda: base_model("bert_cls"), BERT_QV, "PeftModelForSequenceClassification", id="seq_cls"
    ),
    pytest.param(
        "SEQ_2_SEQ_LM", lambda: base_model("t5"), ["q", "v"], "PeftModelForSeq2SeqLM", id="seq2seq_lm"
    ),
    pytest.param(
        "TOKEN_CLS",
        lambda: tiny_bert_for("TokenClassification"),
        BERT_QV,
        "PeftModelForTokenClassification",
        id="token_cls",
    ),
    pytest.param(
        "QUESTION_ANS",
        lambda: tiny_bert_for("QuestionAnswering"),
        BERT_QV,
        "PeftModelForQuestionAnswering",
        id="question_ans",
    ),
    pytest.param(
        "FEATURE_EXTRACTION",
        lambda: tiny_bert_for(""),
        BERT_QV,
        "PeftModelForFeatureExtraction",
        id="feature_extraction",
    ),
]


@pytest.mark.parametrize(("task", "build", "targets", "class_name"), TASKS)
def test_task_type_picks_task_class(lib, task, build, targets, class_name):
    model = lib.get_peft_model(build(), lib.LoraConfig(task_type=task, target_modules=targets))
    assert isinstance(model, getattr(lib, class_name))
    assert isinstance(model, lib.PeftModel)


AUTO = [
    pytest.param(
        "AutoPeftModelForCausalLM",
        "CAUSAL_LM",
        lambda: base_model("llama"),
        ["q_proj", "v_proj"],
        "llama",
        id="causal_lm",
    ),
    pytest.param(
        "AutoPeftModelForSequenceClassification",
        "SEQ_CLS",
        lambda: base_model("bert_cls"),
        BERT_QV,
        "bert_cls",
        id="seq_cls",
    ),
    pytest.param(
        "AutoPeftModelForSeq2SeqLM",
        "SEQ_2_SEQ_LM",
        lambda: base_model("t5"),
        ["q", "v"],
        "t5",
        id="seq2seq_lm",
    ),
    pytest.param(
        "AutoPeftModelForTokenClassification",
        "TOKEN_CLS",
        lambda: tiny_bert_for("TokenClassification"),
        BERT_QV,
        "bert_cls",
        id="token_cls",
    ),
    # the plain AutoPeftModel is for adapters without a task type (peft refuses one that has it)
    pytest.param("AutoPeftModel", None, lambda: tiny_bert_for(""), BERT_QV, "bert_cls", id="auto"),
]


@pytest.mark.parametrize(("auto_name", "task", "build", "targets", "kind"), AUTO)
def test_auto_peft_model_from_pretrained(lib, auto_name, task, build, targets, kind, tmp_path):
    base = save_base(build(), tmp_path / "base")
    model = lib.get_peft_model(base, lib.LoraConfig(task_type=task, target_modules=targets))
    perturb(model)
    x = {k: v for k, v in inputs_for(kind).items()}
    expected = output(model.eval(), x)
    model.save_pretrained(tmp_path / "adapter")
    loaded = getattr(lib, auto_name).from_pretrained(tmp_path / "adapter")
    assert isinstance(loaded, lib.PeftModel)
    torch.testing.assert_close(output(loaded.eval(), x), expected)


# ---- configs -----------------------------------------------------------------------------------------------
TASK_TYPES = ["SEQ_CLS", "SEQ_2_SEQ_LM", "CAUSAL_LM", "TOKEN_CLS", "QUESTION_ANS", "FEATURE_EXTRACTION"]


def test_task_type_enum(lib):
    for name in TASK_TYPES:
        member = getattr(lib.TaskType, name)
        assert member == name and member.value == name
    config = lib.LoraConfig(task_type=lib.TaskType.CAUSAL_LM, target_modules=["q_proj"])
    assert config.task_type == "CAUSAL_LM"


PEFT_TYPES = [
    pytest.param("LoraConfig", {"target_modules": ["q_proj"]}, "LORA", id="lora"),
    pytest.param("AdaLoraConfig", {"target_modules": ["q_proj"], "total_step": 1}, "ADALORA", id="adalora"),
    pytest.param("IA3Config", {"target_modules": ["k_proj"], "feedforward_modules": []}, "IA3", id="ia3"),
    pytest.param(
        "PromptTuningConfig",
        {"num_virtual_tokens": 4, "task_type": "CAUSAL_LM"},
        "PROMPT_TUNING",
        id="prompt",
    ),
    pytest.param(
        "PrefixTuningConfig",
        {"num_virtual_tokens": 4, "task_type": "CAUSAL_LM"},
        "PREFIX_TUNING",
        id="prefix",
    ),
    pytest.param(
        "PromptEncoderConfig", {"num_virtual_tokens": 4, "task_type": "CAUSAL_LM"}, "P_TUNING", id="ptuning"
    ),
]


@pytest.mark.parametrize(("config_name", "kwargs", "peft_type"), PEFT_TYPES)
def test_config_peft_type(lib, config_name, kwargs, peft_type):
    config = getattr(lib, config_name)(**kwargs)
    assert config.peft_type == getattr(lib.PeftType, peft_type) == peft_type
    model = lib.get_peft_model(base_model("llama"), config)
    assert model.active_peft_config is config
    assert model.peft_type == peft_type


def test_peft_config_from_pretrained(lib, tmp_path):
    config = lib.LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    lib.get_peft_model(base_model("llama"), config).save_pretrained(tmp_path)
    for loader in (lib.PeftConfig, lib.LoraConfig):
        loaded = loader.from_pretrained(tmp_path)
        assert isinstance(loaded, lib.LoraConfig)
        assert (loaded.r, loaded.lora_alpha, loaded.task_type) == (4, 16, "CAUSAL_LM")
        assert set(loaded.target_modules) == {"q_proj", "v_proj"}
        assert loaded.peft_type == "LORA"


def test_config_save_pretrained(lib, tmp_path):
    lib.LoraConfig(r=4, target_modules=["q_proj"]).save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["peft_type"] == "LORA" and saved["r"] == 4 and saved["target_modules"] == ["q_proj"]


def test_get_peft_config(lib):
    config = lib.get_peft_config(
        {"peft_type": "LORA", "r": 4, "target_modules": ["q_proj"], "task_type": "CAUSAL_LM"}
    )
    assert isinstance(config, lib.LoraConfig) and config.r == 4


def test_inference_mode_config_trains_nothing(lib):
    config = lib.LoraConfig(target_modules=["q_proj"], inference_mode=True)
    model = lib.get_peft_model(base_model("llama"), config)
    assert not any(p.requires_grad for p in model.parameters())


# ---- counting parameters -----------------------------------------------------------------------------------
def counts(model) -> tuple[int, int]:
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def test_get_nb_trainable_parameters(lib):
    model = lib.get_peft_model(base_model("llama"), lib.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    assert model.get_nb_trainable_parameters() == counts(model)


def test_print_trainable_parameters(lib):
    model = lib.get_peft_model(base_model("llama"), lib.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        model.print_trainable_parameters()
    trainable, total = counts(model)
    percent = 100 * trainable / total
    line = f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {percent:.4f}"
    assert buffer.getvalue().strip() == line


# ---- layer and model status --------------------------------------------------------------------------------
def status_model(lib):
    return lib.get_peft_model(base_model("llama"), lib.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))


@pytest.mark.parametrize("form", ["function", "method"])
def test_get_layer_status(lib, form):
    model = status_model(lib)
    model.merge_adapter()
    status = lib.get_layer_status(model) if form == "function" else model.get_layer_status()
    assert {s.name for s in status} == {p.removeprefix("base_model.") for p in adapted_paths(model)}
    for s in status:
        assert s.module_type == "lora.Linear"
        assert s.enabled is True
        assert s.active_adapters == ["default"] and s.merged_adapters == ["default"]
        assert s.requires_grad == {"default": True}
        assert s.available_adapters == ["default"]


@pytest.mark.parametrize("form", ["function", "method"])
def test_get_model_status(lib, form):
    model = status_model(lib)
    status = lib.get_model_status(model) if form == "function" else model.get_model_status()
    trainable, total = counts(model)
    assert status.base_model_type == "LlamaForCausalLM"
    assert status.adapter_model_type == "LoraModel"
    assert status.peft_types == {"default": "LORA"}
    assert (status.trainable_params, status.total_params) == (trainable, total)
    assert status.num_adapter_layers == 4
    assert status.enabled is True
    assert status.active_adapters == ["default"] and status.merged_adapters == []
    assert status.requires_grad == {"default": True}
    assert status.available_adapters == ["default"]


# ---- state dicts -------------------------------------------------------------------------------------------
def trained_lora(lib):
    model = lib.get_peft_model(base_model("llama"), lib.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    perturb(model)
    return model.eval()


def test_get_peft_model_state_dict_keys(lib):
    state = lib.get_peft_model_state_dict(trained_lora(lib))
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in state
    assert len(state) == 8 and not any(".default." in k for k in state)


def test_set_peft_model_state_dict(lib):
    trained = trained_lora(lib)
    x = inputs_for("llama")
    fresh = lib.get_peft_model(
        base_model("llama"), lib.LoraConfig(r=4, target_modules=["q_proj", "v_proj"])
    ).eval()
    result = lib.set_peft_model_state_dict(fresh, lib.get_peft_model_state_dict(trained))
    assert not result.unexpected_keys
    torch.testing.assert_close(output(fresh, x), output(trained, x))


def test_load_peft_weights(lib, tmp_path):
    trained = trained_lora(lib)
    trained.save_pretrained(tmp_path)
    loaded = lib.load_peft_weights(tmp_path)
    expected = lib.get_peft_model_state_dict(trained)
    assert loaded.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(loaded[key], value)


def test_saved_keys_are_peft_keys(lib, tmp_path):
    trained_lora(lib).save_pretrained(tmp_path)
    keys = set(load_file(tmp_path / "adapter_model.safetensors"))
    assert keys == {
        f"base_model.model.model.layers.{i}.self_attn.{m}.lora_{ab}.weight"
        for i in range(2)
        for m in ("q_proj", "v_proj")
        for ab in "AB"
    }


# ---- structure and names -----------------------------------------------------------------------------------
def test_parameter_names(lib):
    model = lib.get_peft_model(base_model("llama"), lib.LoraConfig(r=4, target_modules=["q_proj"]))
    names = {n for n, _ in model.named_parameters()}
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight" in names
    assert "base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight" in names
    assert "base_model.model.model.embed_tokens.weight" in names


def test_base_model_holds_the_transformers_model(lib):
    base = base_model("llama")
    model = lib.get_peft_model(base, lib.LoraConfig(r=4, target_modules=["q_proj"]))
    assert model.base_model.model is base
    assert model.get_base_model() is base
    assert model.base_model is not base and model.base_model.peft_config is model.peft_config


def test_prepare_model_for_kbit_training(lib):
    """On a model that is not quantized: everything frozen, half-precision weights upcast to fp32."""
    base = base_model("llama", dtype=torch.bfloat16)
    model = lib.prepare_model_for_kbit_training(base)
    assert model is base
    assert not any(p.requires_grad for p in model.parameters())
    assert {p.dtype for p in model.parameters()} == {torch.float32}


# ---- a new classification head is trained and saved (modules_to_save for SEQ_CLS) --------------------------
def _llama_cls():
    torch.manual_seed(0)
    return tiny_llama(num_labels=3).eval()


SEQ_CLS = [
    pytest.param(lambda: base_model("bert_cls"), BERT_QV, "classifier", id="bert"),
    pytest.param(_llama_cls, ["q_proj", "v_proj"], "score", id="llama"),
]


def train_briefly(model, x: dict, steps: int = 3) -> None:
    model.train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    labels = torch.tensor([0, 1])
    for _ in range(steps):
        optimizer.zero_grad()
        model(**x, labels=labels).loss.backward()
        optimizer.step()
    model.eval()


@pytest.mark.parametrize(("build", "targets", "head"), SEQ_CLS)
def test_seq_cls_head_is_trained_and_saved(lib, build, targets, head, tmp_path):
    model = lib.get_peft_model(build(), lib.LoraConfig(task_type="SEQ_CLS", target_modules=targets))
    assert any(head in n for n, p in model.named_parameters() if p.requires_grad)
    x = inputs_for("llama")
    train_briefly(model, x)
    expected = output(model, x)
    model.save_pretrained(tmp_path)
    assert any(head in k for k in load_file(tmp_path / "adapter_model.safetensors"))
    loaded = lib.PeftModel.from_pretrained(build(), tmp_path)
    torch.testing.assert_close(output(loaded, x), expected)


def test_trainer_compatible_forward_signature(lib):
    import inspect

    model = lib.get_peft_model(
        base_model("llama"), lib.LoraConfig(target_modules=["q_proj"], task_type="CAUSAL_LM")
    )
    params = inspect.signature(model.forward).parameters
    assert {"input_ids", "attention_mask", "labels"} <= set(params)
    assert isinstance(model.config, transformers.PretrainedConfig)
