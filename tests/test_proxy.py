"""Proxy-tuning: s_M + alpha (s_M+ - s_M-) at every step, in every decoding strategy, one or two
proxies in memory, and a clear error when vocabularies differ."""

from __future__ import annotations

import pytest
import torch
from conftest import build, tiny_llama

from peftkit import ConfigError, LoraConfig, generate, get_peft_model
from peftkit.composition import proxy_tuning_hook
from peftkit.composition.proxy import proxy_combine

STRATEGIES = {
    "greedy": {"strategy": "greedy"},
    "sample": {"strategy": "sample", "temperature": 0.9, "top_k": 20, "seed": 3},
    "beam": {"strategy": "beam", "num_beams": 3},
    "contrastive": {"strategy": "contrastive", "top_k": 3, "penalty_alpha": 0.6},
}


def prompts():
    ids = torch.randint(3, 96, (2, 5), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0  # left padding
    return ids, mask


def tuned_small():
    """A different small model with a LoRA adapter of non-trivial weights (the expert)."""
    model = get_peft_model(build("llama", seed=7), LoraConfig(r=4, target_modules="all-linear"), "task")
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _, layer in model.layers():
            for p in layer.adapter_parameters("task"):
                p.add_(torch.randn(p.shape, generator=g))
    return model.eval()


def run(model, hook=None, **options):
    ids, mask = prompts()
    out = generate(model, ids, mask, max_new_tokens=6, logits_hook=hook, eos_token_id=None, **options)
    return out.sequences


def test_greedy_equals_a_brute_force_recomputation():
    big, small = build("llama"), tuned_small()
    alpha = 1.5
    ids, mask = prompts()
    out = run(big, proxy_tuning_hook(big, small, alpha=alpha, adapter_name="task"), strategy="greedy")
    seq, m = ids, mask
    for _ in range(6):  # the whole sequence again at each step, no cache, row by row
        step = []
        for i in range(seq.shape[0]):
            keep = m[i].bool()
            row = seq[i][keep][None]
            own = big(row).logits[0, -1]
            with torch.no_grad():
                plus = small(row, adapter_names=["task"]).logits[0, -1]
                minus = small(row, adapter_names=["__base__"]).logits[0, -1]
            step.append(int((own + alpha * (plus - minus)).argmax()))
        seq = torch.cat([seq, torch.tensor(step)[:, None]], 1)
        m = torch.cat([m, torch.ones(2, 1, dtype=m.dtype)], 1)
    assert torch.equal(out, seq)


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_one_model_in_memory_equals_two_models(name):
    big, expert = build("llama"), tuned_small()
    plus = tuned_small().merge_and_unload()  # the expert as a plain model
    minus = build("llama", seed=7)  # the same small model untuned
    one = run(big, proxy_tuning_hook(big, expert, alpha=0.8), **STRATEGIES[name])
    two = run(big, proxy_tuning_hook(big, plus, minus, alpha=0.8), **STRATEGIES[name])
    assert torch.equal(one, two)
    plain = run(big, **STRATEGIES[name])
    assert not torch.equal(one, plain), "the proxies changed nothing"


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_an_untuned_expert_changes_nothing(name):
    big, small = build("llama"), build("llama", seed=7)
    hook = proxy_tuning_hook(big, small, build("llama", seed=7), alpha=3.0)
    assert torch.equal(run(big, hook, **STRATEGIES[name]), run(big, **STRATEGIES[name]))


def test_vocabulary_mismatch_names_both_sizes():
    big, other = build("llama"), tiny_llama(vocab_size=100).eval()
    with pytest.raises(ConfigError, match="model 96.*expert 100"):
        proxy_tuning_hook(big, other, build("llama"))
    with pytest.raises(ConfigError, match="antiexpert"):
        proxy_tuning_hook(big, build("llama"))


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_the_decoded_model_as_its_own_proxies_changes_nothing(name):
    """M+ = M- = M, alpha 1: three steppers over one model object, each with its own cache."""
    big = build("llama")
    hook = proxy_tuning_hook(big, big, big, alpha=1.0)
    assert torch.equal(run(big, hook, **STRATEGIES[name]), run(big, **STRATEGIES[name]))


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_a_freshly_initialised_adapter_changes_nothing(name):
    """One model in memory: a new LoRA (B = 0) makes the adapter-on and adapter-off rows equal."""
    big = build("llama")
    expert = get_peft_model(build("llama", seed=7), LoraConfig(r=4, target_modules="all-linear")).eval()
    hook = proxy_tuning_hook(big, expert, alpha=2.0)
    assert torch.equal(run(big, hook, **STRATEGIES[name]), run(big, **STRATEGIES[name]))


def test_logits_and_log_probabilities_give_the_same_distribution():
    """The paper adds logit scores; log-softmax moves each model's row by a constant, so
    ``softmax`` of the combination is the same either way (greedy and sampling agree)."""
    g = torch.Generator().manual_seed(0)
    own, plus, minus = (torch.randn(3, 96, generator=g) * 4 for _ in range(3))
    combine = proxy_combine(0.7)
    raw = combine(own, [plus, minus])
    logp = combine(torch.log_softmax(own, -1), [torch.log_softmax(x, -1) for x in (plus, minus)])
    torch.testing.assert_close(torch.softmax(raw, -1), torch.softmax(logp, -1))
