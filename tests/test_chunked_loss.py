"""The chunked linear + cross-entropy: the plain loss and its gradients to fp32 tolerance, without ever
holding the (tokens, vocabulary) logits; the causal-LM wrapper on tiny models, and its refusals."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import transformers
from conftest import build
from torch.utils._python_dispatch import TorchDispatchMode

import peftkit
from peftkit.errors import ConfigError
from peftkit.training.chunked_loss import (
    CausalLMLoss,
    Unsupported,
    causal_lm_cross_entropy,
    chunked_lm_loss,
    linear_cross_entropy,
    lm_parts,
)


def plain_head_loss(h, weight, targets, bias=None):
    logits = F.linear(h, weight, bias).float()
    return F.cross_entropy(logits.reshape(-1, weight.shape[0]), targets.reshape(-1), ignore_index=-100)


def leaves(seed: int, dtype=torch.float32, bias: bool = True):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(3, 7, 16, generator=g).to(dtype).requires_grad_()
    w = (torch.randn(50, 16, generator=g) * 0.5).to(dtype).requires_grad_()
    b = torch.randn(50, generator=g).to(dtype).requires_grad_() if bias else None
    t = torch.randint(0, 50, (3, 7), generator=g)
    t[0, :4] = -100  # a prompt
    t[2, 5:] = -100  # padding
    return h, w, b, t


@pytest.mark.parametrize("chunk", [1, 4, 1000])
def test_loss_and_gradients_equal_the_plain_loss_in_fp32(chunk):
    h, w, b, t = leaves(0)
    ref = plain_head_loss(h, w, t, b)
    ref_grads = torch.autograd.grad(ref, (h, w, b))
    ours = linear_cross_entropy(h, w, t, b, chunk=chunk)
    grads = torch.autograd.grad(ours, (h, w, b))
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


def test_frozen_head_gets_no_gradient_and_upstream_scale_applies():
    h, w, _, t = leaves(1, bias=False)
    w.requires_grad_(False)
    h2 = h.detach().clone().requires_grad_()
    (3.0 * linear_cross_entropy(h, w, t, chunk=5)).backward()
    (3.0 * plain_head_loss(h2, w, t)).backward()
    assert w.grad is None
    torch.testing.assert_close(h.grad, h2.grad, rtol=1e-5, atol=1e-7)


def test_bf16_hidden_states_match_the_plain_bf16_loss():
    h, w, _, t = leaves(2, torch.bfloat16, bias=False)
    ref = plain_head_loss(h, w, t)
    ref_h, ref_w = torch.autograd.grad(ref, (h, w))
    ours = linear_cross_entropy(h, w, t, chunk=3)
    got_h, got_w = torch.autograd.grad(ours, (h, w))
    assert ours.dtype == torch.float32 and got_h.dtype == torch.bfloat16 and got_w.dtype == torch.bfloat16
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)  # float32 after the same bf16 logits
    torch.testing.assert_close(got_h, ref_h, rtol=2e-2, atol=1e-3)
    torch.testing.assert_close(got_w, ref_w, rtol=2e-2, atol=1e-3)


def test_no_gradient_mode_and_no_target_and_bad_ids():
    h, w, b, t = leaves(3)
    with torch.no_grad():
        torch.testing.assert_close(linear_cross_entropy(h, w, t, b, chunk=2), plain_head_loss(h, w, t, b))
    assert torch.isnan(linear_cross_entropy(h, w, torch.full_like(t, -100)))
    with pytest.raises(ValueError, match=r"labels: token ids must lie in \[0, 50\)"):
        linear_cross_entropy(h, w, torch.full_like(t, 50))


class LargestTensor(TorchDispatchMode):
    """Records the largest tensor any op produces."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_never_holds_all_the_logits():
    g = torch.Generator().manual_seed(4)
    h = torch.randn(64, 8, generator=g, requires_grad=True)
    w = torch.randn(300, 8, generator=g, requires_grad=True)
    t = torch.randint(0, 300, (64,), generator=g)
    with LargestTensor() as seen:
        linear_cross_entropy(h, w, t, chunk=8).backward()
    assert seen.largest == 8 * 300  # one chunk's logits (the head's gradient is 300 x 8 as well)
    with LargestTensor() as plain:
        plain_head_loss(h, w, t).backward()
    assert plain.largest == 64 * 300


def lm_batch(seed: int = 0, vocab: int = 96):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (3, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0  # a right-padded row
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :3] = -100  # prompts
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def grads_both_ways(model, batch, params):
    plain = model(**batch).loss
    plain_grads = torch.autograd.grad(plain, params)
    ours = chunked_lm_loss(model, batch, chunk=4)
    return plain, ours, plain_grads, torch.autograd.grad(ours, params)


def assert_same(plain, ours, plain_grads, our_grads):
    torch.testing.assert_close(ours, plain, rtol=1e-5, atol=1e-6)
    for want, got in zip(plain_grads, our_grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_lora_model_loss_and_adapter_gradients_equal_the_plain_path():
    model = peftkit.get_peft_model(build("llama"), peftkit.LoraConfig(r=4, target_modules="all-linear"))
    model.train()
    with torch.no_grad():  # B != 0 so that every adapter tensor gets a gradient
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    params = [p for p in model.parameters() if p.requires_grad]
    assert_same(*grads_both_ways(model, lm_batch(), params))


@pytest.mark.parametrize(
    "config",
    [
        peftkit.PrefixTuningConfig(num_virtual_tokens=3, prefix_projection=True, encoder_hidden_size=16),
        peftkit.PTuningV2Config(num_virtual_tokens=3),
    ],
    ids=["prefix-mlp", "ptuning-v2"],
)
def test_prefix_model_loss_and_gradients_equal_the_plain_path(config):
    """A prefix lives in the cache, not in the sequence: the chunked loss applies and agrees."""
    torch.manual_seed(0)
    model = peftkit.get_peft_model(build("llama"), config).train()
    batch = lm_batch()
    params = [p for p in model.parameters() if p.requires_grad]
    assert_same(*grads_both_ways(model, batch, params))
    loss = CausalLMLoss("chunked")
    torch.testing.assert_close(loss(model, batch), model(**batch).loss, rtol=1e-5, atol=1e-6)
    assert loss.decided[model] is True


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_trainable_head_gets_the_plain_gradient(kind):
    model = build(kind).train()
    head = model.get_output_embeddings()
    model.requires_grad_(False)
    head.weight.requires_grad_(True)  # GPT-2: tied to the token embedding, so both uses add up
    ids = lm_batch(1)
    assert_same(*grads_both_ways(model, ids, [head.weight]))


def test_the_trainer_loss_checks_then_chunks_and_refuses_what_it_cannot_do():
    model = peftkit.get_peft_model(build("llama"), peftkit.LoraConfig(r=4, target_modules=["q_proj"]))
    loss = CausalLMLoss("chunked")
    value = loss(model, lm_batch())
    assert loss.decided[model] is True
    torch.testing.assert_close(value, model(**lm_batch()).loss, rtol=1e-5, atol=1e-6)

    head_lora = peftkit.get_peft_model(build("llama"), peftkit.LoraConfig(r=4, target_modules=["lm_head"]))
    with pytest.raises(Unsupported, match="output head of type LoraLinear"):
        lm_parts(head_lora)
    with pytest.raises(ConfigError, match="train.lm_loss: the chunked loss cannot apply"):
        CausalLMLoss("chunked")(head_lora, lm_batch())
    auto = CausalLMLoss("auto")
    torch.testing.assert_close(auto(head_lora, lm_batch()), head_lora(**lm_batch()).loss)
    assert auto.decided[head_lora] is False

    prompt = peftkit.get_peft_model(build("llama"), peftkit.PromptTuningConfig(num_virtual_tokens=2))
    with pytest.raises(Unsupported, match="put virtual tokens into the sequence"):
        lm_parts(prompt)
    with pytest.raises(peftkit.AdapterError, match="logits_to_keep as a tensor"):
        prompt(**lm_batch(), logits_to_keep=torch.arange(2))


class ScaledLlama(transformers.LlamaForCausalLM):
    """A model that changes logits after its head (as soft-capping or logit scaling would)."""

    def forward(self, input_ids=None, attention_mask=None, labels=None, logits_to_keep=0, **kwargs):
        out = super().forward(input_ids, attention_mask, logits_to_keep=logits_to_keep, **kwargs)
        out.logits = out.logits * 2.0
        if labels is not None:
            out.loss = self.loss_function(out.logits, labels, self.config.vocab_size)
        return out


def test_a_model_transforming_its_logits_is_caught_by_the_first_call_check():
    torch.manual_seed(0)
    model = ScaledLlama(build("llama").config)
    with pytest.raises(ConfigError, match="transform logits after its head"):
        CausalLMLoss("chunked")(model, lm_batch())
    auto = CausalLMLoss("auto")
    torch.testing.assert_close(auto(model, lm_batch()), model(**lm_batch()).loss)
    assert auto.decided[model] is False


def test_causal_shift_matches_transformers_loss_function():
    g = torch.Generator().manual_seed(5)
    hidden = torch.randn(2, 6, 8, generator=g)
    w = torch.randn(20, 8, generator=g)
    labels = torch.randint(0, 20, (2, 6), generator=g)
    labels[1, :2] = -100
    from transformers.loss.loss_utils import ForCausalLMLoss

    want = ForCausalLMLoss(F.linear(hidden, w), labels, vocab_size=20)
    torch.testing.assert_close(causal_lm_cross_entropy(hidden, labels, w, chunk=3), want)


def test_a_peft_model_takes_the_chunked_loss_as_peftkit_s_does():
    # peftkit's trainer gives a peft model the same loss as peftkit's: the two then train alike
    peft = pytest.importorskip("peft")
    lora = peft.get_peft_model(
        build("llama"), peft.LoraConfig(task_type="CAUSAL_LM", r=4, target_modules=["q_proj"])
    )
    loss = CausalLMLoss("chunked")
    torch.testing.assert_close(loss(lora, lm_batch()), lora(**lm_batch()).loss, rtol=1e-5, atol=1e-6)
    assert loss.decided[lora] is True
    ours = peftkit.get_peft_model(build("llama"), peftkit.LoraConfig(r=4, target_modules=["q_proj"]))
    assert torch.equal(loss(ours, lm_batch()), loss(lora, lm_batch()))  # same weights, same sums

    prompt = peft.get_peft_model(
        build("llama"), peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=2)
    )
    with pytest.raises(Unsupported, match="PROMPT_TUNING puts virtual tokens into the sequence"):
        lm_parts(prompt)
    auto = CausalLMLoss("auto")
    torch.testing.assert_close(auto(prompt, lm_batch()), prompt(**lm_batch()).loss)
    assert auto.decided[prompt] is False
    adalora = peft.get_peft_model(
        build("llama"), peft.AdaLoraConfig(task_type="CAUSAL_LM", target_modules=["q_proj"], total_step=4)
    )
    with pytest.raises(Unsupported, match="peft's ADALORA may change the model's loss"):
        lm_parts(adalora)  # its loss keeps peft's regulariser: the model's own loss
