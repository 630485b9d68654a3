"""peft's decoder-only checks (its ``tests/test_decoder_models.py``) on a tiny Llama and GPT-2: default target
modules, prompt-tuning inits, prefix tuning with grouped-query attention, Trainer with gradient checkpointing,
saving targeted embeddings, and ``generate`` as transformers defines it."""

from __future__ import annotations

import pytest
import torch
import transformers
from conftest import tiny_llama
from safetensors.torch import load_file
from tiny_tokenizer import tiny_tokenizer

from .support import (
    BY_ID,
    adapted_paths,
    base_model,
    inputs_for,
    lm_rows,
    matches_suffixes,
    output,
    perturb,
    require,
    trainer_args,
)

# (model kind, config, task) -> module suffixes peft adapts when target_modules is not given
DEFAULT_TARGETS = [
    pytest.param("llama", "LoraConfig", {"q_proj", "v_proj"}, id="llama-lora"),
    pytest.param("llama", "AdaLoraConfig", {"q_proj", "v_proj"}, id="llama-adalora"),
    pytest.param("llama", "IA3Config", {"k_proj", "v_proj", "down_proj"}, id="llama-ia3"),
    pytest.param("gpt2", "LoraConfig", {"c_attn"}, id="gpt2-lora"),
    pytest.param("gpt2", "IA3Config", {"c_attn", "mlp.c_proj"}, id="gpt2-ia3"),
]


def default_config(lib, config_name: str, task: str):
    extra = {"total_step": 1} if config_name == "AdaLoraConfig" else {}
    return getattr(lib, config_name)(task_type=task, **extra)


@pytest.mark.parametrize(("kind", "config_name", "expected"), DEFAULT_TARGETS)
def test_default_target_modules(lib, kind, config_name, expected):
    model = lib.get_peft_model(base_model(kind), default_config(lib, config_name, "CAUSAL_LM"))
    assert matches_suffixes(adapted_paths(model), expected), sorted(adapted_paths(model))


# ---- prompt tuning inits -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tokenizer")
    tiny_tokenizer().save_pretrained(folder)
    return folder


def vocab_llama():
    torch.manual_seed(0)
    return tiny_llama(vocab_size=len(tiny_tokenizer())).eval()


def check_prepare_for_training(lib, model_fn, config) -> None:
    """peft's ``_test_prepare_for_training``: frozen embeddings, trainable inputs after kbit preparation."""
    ids = torch.tensor([[1, 1, 1], [1, 2, 1]])
    model = lib.get_peft_model(model_fn(), config)
    assert not model.get_input_embeddings()(ids).requires_grad
    base = lib.prepare_model_for_kbit_training(model_fn())
    assert not any(p.requires_grad for p in base.parameters())
    model = lib.get_peft_model(base, config)
    model.enable_input_require_grads()
    assert model.get_input_embeddings()(ids).requires_grad


def prompt_rows(model) -> torch.Tensor:
    (rows,) = [p for n, p in model.named_parameters() if p.requires_grad]
    return rows.detach()  # (num_virtual_tokens, hidden)


def test_prompt_tuning_text_init(lib, tokenizer_dir):
    text = "this is a test prompt ."
    config = lib.PromptTuningConfig(
        task_type="CAUSAL_LM",
        num_virtual_tokens=10,
        prompt_tuning_init=lib.PromptTuningInit.TEXT,
        prompt_tuning_init_text=text,
        tokenizer_name_or_path=str(tokenizer_dir),
    )
    check_prepare_for_training(lib, vocab_llama, config)
    base = vocab_llama()
    words = base.get_input_embeddings().weight.detach()
    ids = tiny_tokenizer()(text)["input_ids"]
    model = lib.get_peft_model(base, config)
    expected = words[(ids * 10)[:10]]  # the text's tokens, repeated to fill the virtual tokens
    torch.testing.assert_close(prompt_rows(model), expected)


def test_prompt_tuning_sample_vocab_init(lib, tokenizer_dir):
    config = lib.PromptTuningConfig(
        task_type="CAUSAL_LM",
        num_virtual_tokens=10,
        prompt_tuning_init=lib.PromptTuningInit.SAMPLE_VOCAB,
        tokenizer_name_or_path=str(tokenizer_dir),
    )
    check_prepare_for_training(lib, vocab_llama, config)
    base = vocab_llama()
    words = base.get_input_embeddings().weight.detach()
    rows = prompt_rows(lib.get_peft_model(base, config))
    assert all(any(torch.equal(row, w) for w in words) for row in rows)  # each row is a vocabulary embedding


def test_prompt_tuning_config_invalid_args(lib):
    with pytest.raises(ValueError, match="tokenizer_kwargs only valid when using prompt_tuning_init='TEXT'."):
        lib.PromptTuningConfig(
            tokenizer_name_or_path="unused",
            num_virtual_tokens=10,
            task_type="CAUSAL_LM",
            prompt_tuning_init_text="This is a test prompt.",
            prompt_tuning_init=lib.PromptTuningInit.RANDOM,
            tokenizer_kwargs={"trust_remote_code": True, "foo": "bar"},
        )


def test_prefix_tuning_with_grouped_query_attention(lib):
    base = base_model("llama")  # 4 query heads, 2 key/value heads
    x = torch.tensor([[1, 2, 3]])
    expected = base(x).logits
    model = lib.get_peft_model(base, lib.PrefixTuningConfig(num_virtual_tokens=10, task_type="CAUSAL_LM"))
    require(lib, not torch.allclose(model(x).logits, expected), "the prefix does not change the output")


# ---- Trainer with gradient checkpointing (peft's test_prompt_learning_with_gradient_checkpointing) ---------
@pytest.mark.parametrize("case_id", ["llama-prompt", "llama-prefix", "llama-ptuning"])
def test_prompt_learning_with_gradient_checkpointing(lib, case_id, tmp_path):
    case = BY_ID[case_id]
    base = case.base()
    base.gradient_checkpointing_enable()
    try:
        model = lib.get_peft_model(base, case.config(lib))
    except ValueError as exc:  # peft refuses prefix tuning here, with this message
        assert case_id == "llama-prefix"
        assert "does not work with gradient checkpointing" in str(exc)
        return
    args = trainer_args(tmp_path, max_steps=3, per_device_train_batch_size=4)
    transformers.Trainer(model=model, args=args, train_dataset=lm_rows()).train()


# ---- saving an adapter that targets the embedding ----------------------------------------------------------
EMBED_KEY = "base_model.model.model.embed_tokens.base_layer.weight"


@pytest.mark.parametrize("save_embedding_layers", ["auto", True, False])
def test_save_pretrained_targeting_lora_to_embedding_layer(lib, save_embedding_layers, tmp_path):
    model = lib.get_peft_model(base_model("llama"), lib.LoraConfig(target_modules=["embed_tokens"]))
    if save_embedding_layers == "auto":
        with pytest.warns(UserWarning, match="Setting `save_embedding_layers` to `True`"):
            model.save_pretrained(tmp_path, save_embedding_layers="auto")
    else:
        model.save_pretrained(tmp_path, save_embedding_layers=save_embedding_layers)
    state = load_file(tmp_path / "adapter_model.safetensors")
    if save_embedding_layers in ("auto", True):
        torch.testing.assert_close(state[EMBED_KEY], base_model("llama").model.embed_tokens.weight.detach())
    else:
        assert EMBED_KEY not in state


def test_generate_adalora_no_dropout(lib):
    config = lib.AdaLoraConfig(
        target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM", lora_dropout=0.0, total_step=1
    )
    lib.get_peft_model(base_model("llama"), config).generate(**inputs_for("llama"))


def test_lora_layer_replication(lib):
    config = lib.LoraConfig(
        target_modules=["down_proj", "up_proj"],
        task_type="CAUSAL_LM",
        layer_replication=[[0, 1], [0, 2], [1, 2]],
    )
    base = base_model("llama")
    assert len(base.model.layers) == 2
    model = lib.get_peft_model(base, config)
    layers = model.base_model.model.model.layers
    assert len(layers) == 4

    def ptr(i: int) -> int:
        return layers[i].mlp.up_proj.base_layer.weight.data_ptr()

    assert ptr(0) == ptr(1) and ptr(2) == ptr(3) and ptr(0) != ptr(2)  # replicas share base weights
    assert len([n for n, _ in model.named_parameters() if ".lora_A." in n]) == 8
    model.generate(**inputs_for("llama"))


# ---- generate: transformers' keyword arguments -------------------------------------------------------------
def fresh_lora(lib):
    """A fresh LoRA (an identity at init): its generations must be the base model's exactly."""
    return lib.get_peft_model(
        base_model("llama"), lib.LoraConfig(target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    )


def test_generate_input_ids_keyword_and_max_length(lib):
    x = inputs_for("llama")
    expected = base_model("llama").generate(input_ids=x["input_ids"], max_length=10)
    out = fresh_lora(lib).generate(input_ids=x["input_ids"], max_length=10)
    assert torch.equal(out, expected)


def test_generate_follows_generation_config(lib):
    x = inputs_for("llama")
    expected = base_model("llama").generate(**x)  # no length given: generation_config's max_length (20)
    assert torch.equal(fresh_lora(lib).generate(**x), expected)


def test_generate_return_dict_and_scores(lib):
    x = inputs_for("llama")
    expected = base_model("llama").generate(
        **x, max_new_tokens=5, return_dict_in_generate=True, output_scores=True
    )
    out = fresh_lora(lib).generate(**x, max_new_tokens=5, return_dict_in_generate=True, output_scores=True)
    assert torch.equal(out.sequences, expected.sequences)
    assert len(out.scores) == len(expected.scores) == 5
    for got, ref in zip(out.scores, expected.scores):
        torch.testing.assert_close(got, ref)


def test_generate_with_adapter_uses_it(lib):
    x = inputs_for("llama")
    model = fresh_lora(lib)
    perturb(model, scale=1.0)
    scores = model.generate(**x, max_new_tokens=2, return_dict_in_generate=True, output_scores=True).scores[0]
    torch.testing.assert_close(
        scores, output(model.eval(), x)[:, -1]
    )  # first step: the last position's logits
    with model.disable_adapter():
        base_scores = model.generate(
            **x, max_new_tokens=2, return_dict_in_generate=True, output_scores=True
        ).scores[0]
    assert not torch.allclose(scores, base_scores)


def test_generate_sampling_is_seeded(lib):
    x = inputs_for("llama")
    model = fresh_lora(lib)
    torch.manual_seed(3)
    first = model.generate(**x, do_sample=True, max_new_tokens=6, top_k=10)
    torch.manual_seed(3)
    assert torch.equal(model.generate(**x, do_sample=True, max_new_tokens=6, top_k=10), first)
