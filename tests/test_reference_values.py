"""Pinned numbers: every contract case, trained three seeded steps, gives the logits it gave when the
values were recorded. A refactor that changes any method's numbers fails here.

    python tests/test_reference_values.py --add-new  # pin new contract cases, keep the others
    python tests/test_reference_values.py --write    # re-record all (only for a deliberate change)

The pins hold a few statistics of the logits of a tiny seeded model (sum, sum of magnitudes and the
first values of the last row's last position) of a tiny model whose weights the test draws itself,
recorded on CPU; tolerances allow float re-ordering across
thread counts and the transformers releases CI tests (5.0 and the newest), nothing more.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cases import CASES  # noqa: E402
from conftest import build, logits, make_inputs  # noqa: E402
from test_contract import train_steps  # noqa: E402

PINS = Path(__file__).with_name("reference_values.json")


def seeded_base(kind: str) -> torch.nn.Module:
    """The tiny model with every weight drawn by us (transformers' own init changes between releases):
    vectors named ``weight`` (norms) near 1, everything else near 0."""
    model, g = build(kind), torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            centre = 1.0 if p.dim() == 1 and name.endswith("weight") else 0.0
            p.copy_(centre + 0.1 * torch.randn(p.shape, generator=g))
    return model


def statistics(case) -> list[float]:
    base = seeded_base(case.kind)
    torch.manual_seed(0)
    model = case.wrap(base)
    train_steps(model, make_inputs(case.kind))
    with torch.no_grad():
        out = logits(model, make_inputs(case.kind, seed=5)).double()
    last = out.reshape(-1, out.shape[-1])[-1]  # the last position of the last row (or its class scores)
    return [out.sum().item(), out.abs().sum().item(), *last[:3].tolist()]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_logits_match_the_recorded_values(case):
    pins = json.loads(PINS.read_text())
    assert case.id in pins, f"no pinned values for {case.id}: run python {__file__} --write"
    got, want = statistics(case), pins[case.id]
    scale = max(abs(v) for v in want[2:]) + 1.0
    torch.testing.assert_close(got[:2], want[:2], rtol=1e-3, atol=1e-3 * want[1])
    torch.testing.assert_close(got[2:], want[2:], rtol=1e-3, atol=1e-3 * scale)


if __name__ == "__main__" and ("--write" in sys.argv or "--add-new" in sys.argv):
    # --add-new pins only cases that have no values yet (a new row of the contract table)
    values = json.loads(PINS.read_text()) if "--add-new" in sys.argv else {}
    values |= {case.id: statistics(case) for case in CASES if case.id not in values}
    PINS.write_text(json.dumps(values, indent=1) + "\n")
    print(f"{len(values)} cases pinned in {PINS}")
