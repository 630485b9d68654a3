"""Checkpoints cross between the libraries: an adapter saved by the library under test loads in ``peft``
with the same outputs, and one saved by ``peft`` loads in the library under test (issue 16's
"cross-library round trips for every method both libraries have"; LoRA options: ``test_peft_interop.py``).

Against ``peft`` both checks are peft's own round trip, the reference."""

from __future__ import annotations

import peft
import pytest
import torch

from .support import cases, output, perturb


def real_token_outputs(case, out: torch.Tensor) -> torch.Tensor:
    """The outputs for the real tokens: peft also returns a causal LM's virtual-token logits, peftkit does not
    (a documented difference), so only the trailing positions are compared."""
    if case.kind in ("llama", "gpt2"):
        return out[:, -case.inputs()["input_ids"].shape[1] :]
    return out


def assert_same_outputs(case, a, b) -> None:
    x = case.inputs()
    with torch.no_grad():
        torch.testing.assert_close(
            real_token_outputs(case, output(a.eval(), x)),
            real_token_outputs(case, output(b.eval(), x)),
            atol=1e-5,
            rtol=1e-4,
        )


@pytest.mark.parametrize("case", cases())
def test_checkpoint_loads_in_peft(lib, case, tmp_path):
    model = case.peft_model(lib)
    perturb(model)
    model.save_pretrained(tmp_path)
    assert_same_outputs(case, peft.PeftModel.from_pretrained(case.base(), tmp_path), model)


@pytest.mark.parametrize("case", cases())
def test_peft_checkpoint_loads(lib, case, tmp_path):
    reference = case.peft_model(peft)
    perturb(reference)
    reference.save_pretrained(tmp_path)
    assert_same_outputs(case, lib.PeftModel.from_pretrained(case.base(), tmp_path), reference)
