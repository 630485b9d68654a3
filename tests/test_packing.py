"""Padding-free batches: packed rows give each example the logits, loss and gradients it gets in a
padded batch, under either way of confining attention; models that cannot be packed are refused."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import build

import peftkit
from peftkit.data import Collator
from peftkit.data.errors import DataError
from peftkit.data.packing import PackedBatch, PackingCollator, batch_tokens, first_fit, packed_attention
from peftkit.errors import ConfigError
from peftkit.training.chunked_loss import chunked_lm_loss


def sft_examples(lengths=(5, 9, 3, 7, 4), prompt=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in lengths:
        ids = torch.randint(3, 96, (n,), generator=g).tolist()
        out.append({"input_ids": ids, "attention_mask": [1] * n, "labels": [-100] * prompt + ids[prompt:]})
    return out


def per_example_nll(logits: torch.Tensor, labels: torch.Tensor, owner: torch.Tensor, n: int) -> torch.Tensor:
    """Summed next-token NLL of each example: owner[r, t] says which example position t belongs to."""
    nll = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), reduction="none")
    owners = owner[:, 1:].flatten()
    keep = labels[:, 1:].flatten() != -100
    return torch.zeros(n).index_add_(0, owners[keep], nll[keep])


def padded_owner(examples) -> torch.Tensor:
    width = max(len(e["input_ids"]) for e in examples)
    return torch.arange(len(examples))[:, None].expand(-1, width)


def packed_owner(examples, max_tokens) -> torch.Tensor:
    rows = first_fit([len(e["input_ids"]) for e in examples], max_tokens)
    width = max(sum(len(examples[i]["input_ids"]) for i in row) for row in rows)
    owner = torch.zeros(len(rows), width, dtype=torch.long)
    for r, row in enumerate(rows):
        start = 0
        for i in row:
            owner[r, start : start + len(examples[i]["input_ids"])] = i
            start += len(examples[i]["input_ids"])
    return owner


def test_first_fit_fills_earlier_rows_and_gives_long_examples_their_own():
    assert first_fit([5, 9, 3, 7, 4], 12) == [[0, 2, 4], [1], [3]]
    assert first_fit([20, 2], 8) == [[0], [1]]


def test_layout_positions_restart_and_first_labels_are_ignored():
    ex = sft_examples((3, 2), prompt=0)
    batch = PackingCollator(0, max_tokens=8)(ex)
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    assert batch["labels"][0, 0] == -100 and batch["labels"][0, 3] == -100
    assert batch["labels"][0, 4] == ex[1]["labels"][1] and batch["use_cache"] is False
    assert batch_tokens(batch, 2) == 5 and "attention_mask" not in batch
    masked = PackingCollator(0, max_tokens=8, attention="mask")(ex)
    assert masked["attention_mask"].shape == (1, 1, 5, 5)
    assert (masked["attention_mask"][0, 0, 3, :3] < -1e30).all()  # the second example never sees the first
    assert (masked["attention_mask"][0, 0, 4, 3:5] == 0).all()


@pytest.mark.parametrize("attention", ["position_ids", "mask"])
def test_packed_loss_equals_the_padded_loss_per_example_and_in_total(attention):
    model = build("llama")
    examples = sft_examples()
    padded = Collator(0)(examples)
    packed = PackingCollator(0, max_tokens=12, attention=attention)(examples)
    assert packed["input_ids"].shape[0] == 3 and isinstance(packed, PackedBatch)
    with torch.no_grad():
        out_pad, out_pack = model(**padded), model(**packed)
    want = per_example_nll(out_pad.logits, padded["labels"], padded_owner(examples), len(examples))
    got = per_example_nll(out_pack.logits, packed["labels"], packed_owner(examples, 12), len(examples))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out_pack.loss, out_pad.loss, rtol=1e-6, atol=1e-6)
    assert batch_tokens(packed, 5) == batch_tokens(padded, 5) == 28


def test_packed_lora_gradients_equal_the_padded_ones_through_the_chunked_loss():
    model = peftkit.get_peft_model(build("llama"), peftkit.LoraConfig(r=4, target_modules="all-linear"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    params = [p for p in model.parameters() if p.requires_grad]
    examples = sft_examples(seed=1)
    padded = model(**Collator(0)(examples)).loss
    want = torch.autograd.grad(padded, params)
    packed = chunked_lm_loss(model, PackingCollator(0, max_tokens=12)(examples))
    got = torch.autograd.grad(packed, params)
    torch.testing.assert_close(packed, padded, rtol=1e-6, atol=1e-6)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_packed_attention_finds_the_mode_and_refuses_bidirectional_models():
    assert packed_attention(build("llama")) == "position_ids"
    assert packed_attention(build("gpt2")) == "position_ids"
    with pytest.raises(ConfigError, match="train.packing: BertForSequenceClassification does not keep"):
        packed_attention(build("bert"))


def test_examples_packing_cannot_carry_are_refused():
    collate = PackingCollator(0)
    with pytest.raises(DataError, match="example 0: packing cannot carry the fields \\['label'\\]"):
        collate([{"input_ids": [1, 2], "labels": [1, 2], "label": 1}])
    with pytest.raises(DataError, match="example 0: packing needs input_ids and labels"):
        collate([{"input_ids": [1, 2]}])
    with pytest.raises(DataError, match="attention_mask has zeros"):
        collate([{"input_ids": [1, 2], "labels": [1, 2], "attention_mask": [1, 0]}])
    with pytest.raises(ConfigError, match="attention: got 'varlen'"):
        PackingCollator(0, attention="varlen")
