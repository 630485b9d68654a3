"""Metrics checked against hand-computed values and their references; plots written to disk."""

from __future__ import annotations

import json
import math

import pytest
import sacrebleu
import torch
from conftest import build

from peftkit.evaluation import (
    accuracy,
    bleu,
    exact_match,
    group_references,
    macro_f1,
    perplexity,
)
from peftkit.plotting import metrics_figure, plot_heatmap, plot_metrics, read_metrics

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ---- classification ----------------------------------------------------------------------------
def test_accuracy():
    assert accuracy([1, 2, 3, 1], [1, 2, 1, 1]) == 0.75


def test_lengths_must_pair_up():
    with pytest.raises(ValueError, match="preds has 3 items but labels has 2"):
        accuracy([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="hyps has 1 items but refs has 2"):
        bleu(["a"], [["a"], ["b"]])
    with pytest.raises(ValueError, match="empty"):
        macro_f1([], [])


LABELS = ["a", "a", "b", "b", "c", "c"]
PREDS = ["a", "b", "b", "b", "c", "a"]


def test_macro_f1_by_hand():
    # a: tp 1, fp 1, fn 1 -> 2/4;  b: tp 2, fp 1, fn 0 -> 4/5;  c: tp 1, fp 0, fn 1 -> 2/3
    assert macro_f1(PREDS, LABELS) == pytest.approx((1 / 2 + 4 / 5 + 2 / 3) / 3)


def test_macro_f1_skips_absent_classes_and_scores_unearned_ones_zero():
    assert macro_f1(PREDS, LABELS, labels_set=["a", "b", "c", "d"]) == pytest.approx(59 / 90)
    preds = ["a", "b", "b", "b", "c", "d"]  # 'd' predicted once, never true: F1 0, counted
    # a: tp 1, fp 0, fn 1 -> 2/3;  b: 4/5;  c: 2/3;  d: 0
    assert macro_f1(preds, LABELS, labels_set=["d"]) == pytest.approx((2 / 3 + 4 / 5 + 2 / 3 + 0) / 4)
    assert macro_f1(preds, LABELS) == pytest.approx((2 / 3 + 4 / 5 + 2 / 3) / 3)


# ---- generation ----------------------------------------------------------------------------------
def test_exact_match_normalises_and_accepts_several_references():
    assert exact_match([" Paris ", "rome"], ["Paris", "Rome"]) == 0.5
    assert exact_match([" Paris ", "rome"], ["Paris", "Rome"], normalize=lambda s: s.strip().lower()) == 1.0
    assert exact_match(["Rome", "Oslo"], [["Paris", "Rome"], ["Bergen"]]) == 0.5


def test_group_references_keeps_first_seen_order():
    inputs = ["m1", "m2", "m1", "m3", "m2"]
    refs = ["r1", "r2", "r3", "r4", "r5"]
    assert group_references(inputs, refs) == (["m1", "m2", "m3"], [["r1", "r3"], ["r2", "r5"], ["r4"]])


HYPS = ["the cat sat on the mat", "there is a small house near the river"]
REFS = [
    ["the cat is sitting on the mat", "a cat sat on the mat"],
    ["a small house stands by the river", "there is a little house near the river"],
]


def test_bleu_transposes_references_into_streams():
    streams = [[REFS[0][0], REFS[1][0]], [REFS[0][1], REFS[1][1]]]
    expected = sacrebleu.corpus_bleu(HYPS, streams).score
    assert bleu(HYPS, REFS) == pytest.approx(expected)
    assert 0 < expected < 100
    assert bleu(HYPS, REFS) > bleu(HYPS, [r[:1] for r in REFS])  # the second references help


def test_bleu_with_ragged_references():
    ragged = [REFS[0], REFS[1][1:]]
    # repeating a reference changes neither clipped counts nor the closest length
    padded_streams = [[REFS[0][0], REFS[1][1]], [REFS[0][1], REFS[1][1]]]
    assert bleu(HYPS, ragged) == pytest.approx(sacrebleu.corpus_bleu(HYPS, padded_streams).score)
    assert bleu(["a b c d e"], [["x y", "a b c d e"]]) == pytest.approx(100.0)
    with pytest.raises(ValueError, match=r"refs\[1\]"):
        bleu(HYPS, [REFS[0], []])


# ---- perplexity ----------------------------------------------------------------------------------
def test_perplexity_matches_the_models_own_loss():
    model = build("llama")
    ids = torch.randint(3, 96, (1, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss
    assert perplexity(model, [{"input_ids": ids}]) == pytest.approx(math.exp(loss.item()), rel=1e-5)


def test_perplexity_weights_batches_by_tokens_and_ignores_padding():
    model = build("llama").train()
    g = torch.Generator().manual_seed(1)
    short, long = torch.randint(3, 96, (1, 5), generator=g), torch.randint(3, 96, (2, 9), generator=g)
    with torch.no_grad():
        model.eval()
        nll = 4 * model(input_ids=short, labels=short).loss + 16 * model(input_ids=long, labels=long).loss
        model.train()
    expected = math.exp(nll.item() / 20)  # 4 + 2 * 8 predicted tokens
    padded = torch.cat([short, torch.zeros(1, 4, dtype=torch.long)], dim=1)  # right-padded to 9
    mask = torch.cat([torch.ones(1, 5), torch.zeros(1, 4)], dim=1).long()
    batches = [{"input_ids": padded, "attention_mask": mask}, {"input_ids": long, "labels": long}]
    assert perplexity(model, batches) == pytest.approx(expected, rel=1e-5)
    assert model.training, "the model's mode must be restored"
    with pytest.raises(ValueError, match="no label token"):
        perplexity(model, [{"input_ids": short, "labels": torch.full_like(short, -100)}])


# ---- plotting ------------------------------------------------------------------------------------
def write_metrics(path, records):
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    return path


RECORDS = [
    {"step": 10, "train_loss": 2.0, "lr": 1e-3},
    {"step": 20, "train_loss": 1.5, "lr": 1e-3},
    {"step": 20, "eval_loss": 1.7, "eval_accuracy": 0.5, "eval_exact_match": 0.25},
    {"step": 30, "train_loss": 1.2, "lr": 5e-4},
    {"step": 40, "eval_loss": 1.4, "eval_accuracy": 0.7, "eval_exact_match": 0.4},
]


def test_plot_metrics_writes_a_png(tmp_path):
    path = write_metrics(tmp_path / "metrics.jsonl", RECORDS)
    out = plot_metrics(path, tmp_path / "plots" / "curves.png")
    assert out == tmp_path / "plots" / "curves.png"
    data = out.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 1000
    assert [p.name for p in out.parent.iterdir()] == ["curves.png"], "no temporary file left behind"


def test_metrics_figure_draws_losses_and_eval_metrics():
    fig = metrics_figure(RECORDS)
    loss_ax, metric_ax = fig.axes[:2]
    lines = {line.get_label(): line for line in loss_ax.get_lines()}
    assert set(lines) == {"train_loss", "eval_loss"}
    assert list(lines["eval_loss"].get_xdata()) == [20, 40]
    assert list(lines["train_loss"].get_ydata()) == [2.0, 1.5, 1.2]
    assert [line.get_label() for line in metric_ax.get_lines()] == ["eval_accuracy", "eval_exact_match"]
    only_train = metrics_figure([r for r in RECORDS if "train_loss" in r])
    assert len(only_train.axes) == 1


def test_read_metrics_names_the_bad_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "train_loss": 1.0}\n{"step": 2, "train_loss": \n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"metrics.jsonl:2"):
        read_metrics(path)
    with pytest.raises(ValueError, match="nothing to plot"):
        metrics_figure([{"step": 1, "lr": 0.1}])


def test_plot_heatmap(tmp_path):
    matrix = torch.tensor([[4.0, 8.0, 2.0], [1.0, 0.5, 6.0]])
    out = plot_heatmap(matrix, ["layer 0", "layer 1"], ["q", "k", "v"], "ranks", tmp_path / "ranks.png")
    assert out.read_bytes().startswith(PNG_MAGIC)
    with pytest.raises(ValueError, match="2 row labels and 2 column labels"):
        plot_heatmap(matrix, ["a", "b"], ["q", "k"], "bad", tmp_path / "bad.png")
