"""Prompt ensembles: members trained in the same batches, mean-probability and majority predictions."""

from __future__ import annotations

import pytest
import torch
from conftest import build, make_inputs

import peftkit
from peftkit import ConfigError, PromptTuningConfig
from peftkit.ensemble import PromptEnsemble, combine, ensemble_accuracy

NAMES = ["p0", "p1", "p2"]


def ensemble(vote: str = "mean") -> PromptEnsemble:
    config = PromptTuningConfig(num_virtual_tokens=2, modules_to_save=["classifier"])
    model = peftkit.get_peft_model(build("bert"), config, NAMES[0])
    for name in NAMES[1:]:
        model.add_adapter(name, config)
    return PromptEnsemble(model, NAMES, vote=vote)


def labelled(batch: int = 4) -> dict[str, torch.Tensor]:
    inputs = make_inputs("bert", batch=batch)
    inputs["labels"] = torch.tensor([0, 1, 2, 1][:batch])
    return inputs


def test_members_equal_single_runs_and_loss_is_their_mean():
    ens, inputs = ensemble(), labelled()
    members = ens.member_logits(**inputs)  # (K, B, C)
    losses = []
    for k, name in enumerate(NAMES):
        ens.model.set_adapter(name)
        single = ens.model(**inputs)
        torch.testing.assert_close(members[k], single.logits, atol=1e-5, rtol=1e-4)
        losses.append(single.loss)
    ens.model.set_adapter(NAMES)
    out = ens(**inputs)
    torch.testing.assert_close(out.loss, torch.stack(losses).mean(), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.logits.exp(), members.softmax(-1).mean(0), atol=1e-6, rtol=1e-5)


def test_one_backward_trains_every_member():
    ens, inputs = ensemble(), labelled()
    before = {n: ens.model.prompt_encoder[n].embedding.weight.detach().clone() for n in NAMES}
    opt = torch.optim.AdamW([p for p in ens.parameters() if p.requires_grad], lr=1e-2)
    ens.train()
    ens(**inputs).loss.backward()
    opt.step()
    for name in NAMES:
        assert not torch.equal(before[name], ens.model.prompt_encoder[name].embedding.weight), name


def test_majority_vote_and_mean_can_disagree():
    # member logits for 1 example, 3 classes: two members mildly prefer class 0, one strongly class 1
    members = torch.tensor([[[1.0, 0.8, 0.0]], [[1.0, 0.8, 0.0]], [[0.0, 9.0, 0.0]]])  # (K=3, B=1, C=3)
    assert combine(members, "majority").argmax(-1).item() == 0
    assert combine(members, "mean").argmax(-1).item() == 1
    tie = torch.tensor([[[2.0, 0.0]], [[0.0, 1.0]]])  # one vote each: the mean decides
    assert combine(tie, "majority").argmax(-1).item() == 0


def test_accuracy_report_names_every_member_and_both_votes():
    ens = ensemble()
    report = ensemble_accuracy(ens, [labelled(), labelled(2)])
    assert set(report) == {*NAMES, "ensemble_mean", "ensemble_majority"}
    assert all(0.0 <= v <= 1.0 for v in report.values())


def test_bad_ensembles_fail_clearly():
    model = ensemble().model
    with pytest.raises(ConfigError, match="two or more"):
        PromptEnsemble(model, ["p0"])
    with pytest.raises(ConfigError, match="vote"):
        PromptEnsemble(model, NAMES, vote="median")
