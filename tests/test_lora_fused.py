"""The fused LoRA training path: the unfused layer's loss and gradients (dropout on, same mask), less
saved for backward, and taken only where it applies."""

from __future__ import annotations

import pytest
import torch
from conftest import build
from torch import nn

import peftkit
from peftkit.methods.lora import fused
from peftkit.methods.lora.layer import LoraLinear


def lora_llama(dropout: float, dtype=torch.float32, targets="all-linear"):
    model = build("llama").to(dtype)
    model = peftkit.get_peft_model(
        model, peftkit.LoraConfig(r=4, lora_alpha=8, target_modules=targets, lora_dropout=dropout)
    )
    with torch.no_grad():  # B != 0 so that A gets a gradient too
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    return model.train()


def loss_and_grads(model, ids, flag: bool):
    params = [p for p in model.parameters() if p.requires_grad]
    with fused.fused(flag):
        torch.manual_seed(7)  # the same dropout masks both ways
        loss = model(input_ids=ids, labels=ids).loss
        return loss, torch.autograd.grad(loss, params)


def output_nodes(model, ids) -> set[str]:
    """Names of the autograd nodes that made each LoRA layer's output."""
    names: set[str] = set()
    hooks = [
        m.register_forward_hook(lambda _m, _i, out: names.add(type(out.grad_fn).__name__))
        for m in model.modules()
        if isinstance(m, LoraLinear)
    ]
    model(input_ids=ids)
    for h in hooks:
        h.remove()
    return names


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_fused_gradients_equal_the_unfused_layer(dropout):
    model = lora_llama(dropout)
    ids = torch.randint(3, 96, (3, 8), generator=torch.Generator().manual_seed(0))
    loss0, grads0 = loss_and_grads(model, ids, False)
    loss1, grads1 = loss_and_grads(model, ids, True)
    torch.testing.assert_close(loss1, loss0, rtol=1e-6, atol=1e-7)
    for a, b in zip(grads1, grads0):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    with fused.fused(True):
        assert output_nodes(model, ids) == {"FusedLoraLinearBackward"}
    with fused.fused(False):
        assert "FusedLoraLinearBackward" not in output_nodes(model, ids)


def test_bf16_base_gradients_as_close_to_fp32_as_the_unfused_layer():
    """With a bf16 base the fused path multiplies the adapter in bf16 (as autocast would; adapter
    weights, their gradients and the optimizer stay fp32): against the same weights in fp32, its
    loss and gradients are about as close as the unfused layer's (which adds the delta in fp32)."""
    model = lora_llama(0.1, torch.bfloat16)
    ref = lora_llama(0.1, torch.float32)
    ref.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
    ids = torch.randint(3, 96, (2, 8), generator=torch.Generator().manual_seed(1))
    loss_ref, grads_ref = loss_and_grads(ref, ids, False)
    errors = {}
    for flag in (False, True):
        loss, grads = loss_and_grads(model, ids, flag)
        torch.testing.assert_close(loss, loss_ref, rtol=2e-4, atol=0)
        assert all(g.dtype == torch.float32 for g in grads)
        errors[flag] = max(((a - b).norm() / b.norm()).item() for a, b in zip(grads, grads_ref))
    assert errors[True] <= 2 * errors[False] < 0.1, errors


def saved_bytes(layer: nn.Module, x: torch.Tensor) -> int:
    """Bytes autograd keeps for backward, not counting parameters and the input itself."""
    known = {p.untyped_storage().data_ptr() for p in layer.parameters()} | {x.untyped_storage().data_ptr()}
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        if t.untyped_storage().data_ptr() not in known:
            known.add(t.untyped_storage().data_ptr())
            total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(x)
    return total


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_saves_only_the_mask_and_the_rank_r_activation(dtype):
    torch.manual_seed(0)
    model = peftkit.get_peft_model(
        nn.Sequential(nn.Linear(64, 32).to(dtype)),
        peftkit.LoraConfig(r=4, target_modules=["0"], lora_dropout=0.1),
    ).train()
    layer = model.get_base_model()[0]
    x = torch.randn(8, 64, dtype=dtype, requires_grad=True)
    with fused.fused(True):
        fused_bytes = saved_bytes(layer, x)
    with fused.fused(False):
        unfused_bytes = saved_bytes(layer, x)
    size = dtype.itemsize
    # the boolean mask, u = dropout(x) A^T (N, r) and, for a bf16 base, A and B in bf16 (r x (64 + 32))
    assert fused_bytes == 8 * 64 * 1 + 8 * 4 * size + (0 if dtype == torch.float32 else 4 * 96 * size)
    assert unfused_bytes >= 8 * 64 * 1 + 8 * 64 * 4  # the mask and the dropped input in fp32


def test_fused_path_only_where_it_applies():
    model = lora_llama(0.0, targets=["q_proj"])
    ids = torch.randint(3, 96, (2, 5), generator=torch.Generator().manual_seed(2))
    with fused.fused(True):
        assert output_nodes(model, ids) == {"FusedLoraLinearBackward"}
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert "FusedLoraLinearBackward" not in output_nodes(model, ids)
        model.eval()
        assert "FusedLoraLinearBackward" not in output_nodes(model, ids)
        model.train()
        model.add_adapter("other", peftkit.LoraConfig(r=2, target_modules=["q_proj"]))
        model.set_adapter(["default", "other"])
        assert "FusedLoraLinearBackward" not in output_nodes(model, ids)
        model.set_adapter("default")
        nodes: set[str] = set()
        layer = next(m for m in model.modules() if isinstance(m, LoraLinear))
        hook = layer.register_forward_hook(lambda _m, _i, out: nodes.add(type(out.grad_fn).__name__))
        model(input_ids=ids, adapter_names=["default", "other"])
        hook.remove()
        assert "FusedLoraLinearBackward" not in nodes


def test_after_fused_training_merging_unmerging_and_saving_are_unchanged(tmp_path):
    model = lora_llama(0.1)
    ids = torch.randint(3, 96, (2, 8), generator=torch.Generator().manual_seed(3))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    with fused.fused(True):
        for _ in range(2):
            model(input_ids=ids, labels=ids).loss.backward()
            opt.step()
            opt.zero_grad()
    model.eval()
    with torch.no_grad():
        want = model(input_ids=ids).logits
        model.merge_adapter()
        torch.testing.assert_close(model(input_ids=ids).logits, want, rtol=1e-5, atol=1e-5)
        model.unmerge_adapter()
        torch.testing.assert_close(model(input_ids=ids).logits, want, rtol=1e-5, atol=1e-5)
        model.save_pretrained(tmp_path)
        torch.manual_seed(0)
        again = peftkit.PeftModel.from_pretrained(build("llama"), tmp_path).eval()
        torch.testing.assert_close(again(input_ids=ids).logits, want, rtol=1e-6, atol=1e-6)
