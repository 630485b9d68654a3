"""peft's encoder-decoder checks (its ``tests/test_encoder_decoder_models.py``) on a tiny T5 (and a tiny BERT
for token classification)."""

from __future__ import annotations

import pytest
import torch

from .support import adapted_paths, base_model, inputs_for, matches_suffixes, tiny_bert_for

DEFAULT_TARGETS = [
    pytest.param("LoraConfig", {"q", "v"}, id="lora"),
    pytest.param("AdaLoraConfig", {"q", "k", "v", "o", "wi", "wo"}, id="adalora"),
    pytest.param("IA3Config", {"k", "v", "wo"}, id="ia3"),
]


@pytest.mark.parametrize(("config_name", "expected"), DEFAULT_TARGETS)
def test_default_target_modules(lib, config_name, expected):
    extra = {"total_step": 1} if config_name == "AdaLoraConfig" else {}
    model = lib.get_peft_model(base_model("t5"), getattr(lib, config_name)(task_type="SEQ_2_SEQ_LM", **extra))
    assert matches_suffixes(adapted_paths(model), expected), sorted(adapted_paths(model))


def test_active_adapters_prompt_learning(lib):
    config = lib.PromptEncoderConfig(task_type=lib.TaskType.SEQ_2_SEQ_LM, num_virtual_tokens=10)
    assert lib.get_peft_model(base_model("t5"), config).active_adapters == ["default"]


def test_save_shared_tensors(lib, tmp_path):
    config = lib.LoraConfig(
        task_type=lib.TaskType.TOKEN_CLS,
        inference_mode=False,
        r=16,
        lora_alpha=16,
        lora_dropout=0.1,
        bias="all",
        target_modules=["query", "value"],
    )
    model = lib.get_peft_model(tiny_bert_for("TokenClassification"), config)
    model.save_pretrained(tmp_path, safe_serialization=True)
    assert (tmp_path / "adapter_model.safetensors").exists()


PROMPT_CONFIGS = [
    pytest.param("PrefixTuningConfig", {}, id="prefix"),
    pytest.param("PromptEncoderConfig", {"encoder_hidden_size": 32}, id="ptuning"),
    pytest.param("PromptTuningConfig", {}, id="prompt"),
]


@pytest.mark.parametrize(("config_name", "extra"), PROMPT_CONFIGS)
def test_prompt_learning_forward_with_inputs_embeds(lib, config_name, extra):
    config = getattr(lib, config_name)(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=4, **extra)
    model = lib.get_peft_model(base_model("t5"), config).eval()
    ids = torch.tensor([[1, 1, 1], [1, 2, 1]])
    mask = torch.ones_like(ids)
    dec = torch.tensor([[0, 1, 1], [0, 2, 1]])
    with torch.no_grad():
        from_ids = model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
        embeds = model.get_input_embeddings()(ids)
        from_embeds = model(inputs_embeds=embeds, attention_mask=mask, decoder_input_ids=dec).logits
    torch.testing.assert_close(from_embeds, from_ids, atol=1e-5, rtol=1e-5)


def test_generate_input_ids_keyword_and_max_length(lib):
    x = inputs_for("t5")
    model = lib.get_peft_model(
        base_model("t5"), lib.LoraConfig(target_modules=["q", "v"], task_type="SEQ_2_SEQ_LM")
    )
    expected = base_model("t5").generate(
        input_ids=x["input_ids"], attention_mask=x["attention_mask"], max_length=7
    )
    out = model.generate(input_ids=x["input_ids"], attention_mask=x["attention_mask"], max_length=7)
    assert torch.equal(out, expected)
