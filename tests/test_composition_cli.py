"""`peftkit generate --proxy-*` and `peftkit compose` as a user runs them (tiny saved models)."""

from __future__ import annotations

import torch
import transformers
from test_cli_e2e import fails, ok, peftkit_cli, save_llama
from tiny_tokenizer import tiny_tokenizer

from peftkit import LoraConfig, generate, get_peft_model
from peftkit.composition import proxy_tuning_hook


def save_adapter(model_dir, out, seed: int):
    base = transformers.AutoModelForCausalLM.from_pretrained(model_dir)
    model = get_peft_model(base, LoraConfig(r=4, target_modules="all-linear"))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in model.layers():
            for p in layer.adapter_parameters("default"):
                p.add_(torch.randn(p.shape, generator=g))
    model.save_pretrained(out)
    return out


def test_generate_with_proxy_adapter_equals_the_api(tmp_path):
    llama = save_llama(tmp_path / "llama")
    adapter = save_adapter(llama, tmp_path / "adapter", seed=0)
    args = ("generate", "--model", llama, "--raw", "--max-new-tokens", "6", "the movie was")
    proxied = ok(
        peftkit_cli(*args, "--proxy-expert", adapter, "--proxy-antiexpert", llama, "--proxy-alpha", "2")
    )
    plain = ok(peftkit_cli(*args))
    assert proxied.stdout != plain.stdout

    tok = tiny_tokenizer(chat_template=True, bos=True)
    big = transformers.AutoModelForCausalLM.from_pretrained(llama).eval()
    from peftkit import PeftModel

    small = PeftModel.from_pretrained(
        transformers.AutoModelForCausalLM.from_pretrained(llama), adapter
    ).eval()
    enc = tok("the movie was", return_tensors="pt")
    out = generate(
        big,
        enc["input_ids"],
        enc["attention_mask"],
        max_new_tokens=6,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        logits_hook=proxy_tuning_hook(big, small, alpha=2.0),
    )
    assert proxied.stdout.strip() == tok.decode(out.new_tokens[0], skip_special_tokens=True).strip()


def test_generate_proxy_errors(tmp_path):
    llama = save_llama(tmp_path / "llama")
    other = tmp_path / "other"
    config = transformers.LlamaConfig(
        vocab_size=200, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4
    )
    transformers.LlamaForCausalLM(config).save_pretrained(other)
    tiny_tokenizer().save_pretrained(other)
    args = ("generate", "--model", llama, "--raw", "--max-new-tokens", "2", "hi")
    fails(
        peftkit_cli(*args, "--proxy-expert", other, "--proxy-antiexpert", llama),
        "generate",
        "200",
        "vocabular",
    )
    fails(peftkit_cli(*args, "--proxy-antiexpert", llama), "generate", "--proxy-expert")


def test_compose_with_weights_and_with_lorahub(tmp_path):
    import json

    import pytest

    from peftkit import PeftModel
    from peftkit.composition import add_weighted_adapter

    pytest.importorskip("nevergrad")
    llama = save_llama(tmp_path / "llama")
    a, b = save_adapter(llama, tmp_path / "a", seed=1), save_adapter(llama, tmp_path / "b", seed=2)
    base = ("compose", "--model", llama, "--adapters", a, b)
    ok(peftkit_cli(*base, "--weights", "0.5", "-1", "--combination", "cat", "--out", tmp_path / "cat"))
    composed = PeftModel.from_pretrained(
        transformers.AutoModelForCausalLM.from_pretrained(llama), tmp_path / "cat"
    )
    ref = PeftModel.from_pretrained(
        transformers.AutoModelForCausalLM.from_pretrained(llama), a, adapter_name="a"
    )
    ref.load_adapter(b, adapter_name="b")
    add_weighted_adapter(ref, ["a", "b"], [0.5, -1.0], "m", combination="cat")
    ids = torch.randint(3, 40, (2, 6), generator=torch.Generator().manual_seed(0))
    ref.set_adapter("m")
    torch.testing.assert_close(composed(input_ids=ids).logits, ref(input_ids=ids).logits)

    few = tmp_path / "few.jsonl"
    rows = [{"input": "the cat", "output": "sat on the mat"}, {"input": "a dog", "output": "hello world"}]
    few.write_text("".join(json.dumps(r) + "\n" for r in rows))
    search = (*base, "--examples", few, "--budget", "6", "--seed", "3", "--quiet")
    ok(peftkit_cli(*search, "--out", tmp_path / "hub"))
    report = json.loads((tmp_path / "hub" / "compose_report.json").read_text())
    assert report["method"] == "lorahub" and len(report["weights"]) == 2 and len(report["history"]) == 6
    assert (tmp_path / "hub" / "adapter_model.safetensors").is_file()

    fails(peftkit_cli(*base, "--out", tmp_path / "x"), "compose", "--weights", "--examples")
    fails(peftkit_cli(*base, "--weights", "1", "--out", tmp_path / "y"), "compose", "weights")
    fails(peftkit_cli(*base, "--weights", "1", "1", "--out", tmp_path / "hub"), "compose", "exists")
