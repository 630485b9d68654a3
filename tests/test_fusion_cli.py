"""AdapterFusion's two stages through the command line on a tiny BERT: two adapters trained on
different tasks, a fusion trained over them (``model.adapters``), evaluated, and its attention
drawn by ``peftkit inspect-fusion``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_cli_e2e import SENTIMENT, fails, json_out, ok, peftkit_cli, save_bert, train, write_jsonl

TOPIC = [  # a second task on the same texts: does it talk about the plot/story or the acting/film?
    (text, "story" if ("plot" in text or "story" in text) else "other") for text, _ in SENTIMENT
]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fusion")


@pytest.fixture(scope="module")
def stage_one(root) -> tuple[Path, Path, Path, Path]:
    bert = save_bert(root / "bert")
    sentiment = write_jsonl(root / "sentiment.jsonl", [{"text": t, "label": y} for t, y in SENTIMENT])
    topic = write_jsonl(root / "topic.jsonl", [{"text": t, "label": y} for t, y in TOPIC])
    runs = []
    for name, data in (("sentiment", sentiment), ("topic", topic)):
        config = {
            "model": {"name": str(bert)},
            "task": {"type": "classification", "max_length": 32},
            "data": {"train": str(data), "eval_fraction": 0.25},
            "adapter": {"method": "bottleneck", "placement": "pfeiffer", "bottleneck_size": 4},
            "train": {"lr": 5e-3},
        }
        runs.append(train(root, name, config))
    return bert, sentiment, runs[0], runs[1]


@pytest.fixture(scope="module")
def fusion_run(root, stage_one) -> Path:
    bert, sentiment, sentiment_run, topic_run = stage_one
    config = {
        "model": {
            "name": str(bert),
            "adapters": {"sentiment": str(sentiment_run / "adapter"), "topic": str(topic_run / "adapter")},
        },
        "task": {"type": "classification", "max_length": 32},
        "data": {"train": str(sentiment), "eval_fraction": 0.25},
        "adapter": {"method": "fusion", "adapter_names": ["sentiment", "topic"]},
        "train": {"lr": 5e-3},
    }
    return train(root, "fusion", config)


def test_fusion_saves_only_its_own_tensors(fusion_run):
    saved = json.loads((fusion_run / "adapter" / "adapter_config.json").read_text())
    assert saved["peftkit_method"] == "fusion" and saved["adapter_names"] == ["sentiment", "topic"]
    assert saved["modules_to_save"] == ["classifier"]
    assert sorted(p.name for p in (fusion_run / "adapter").iterdir()) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
    ]


def test_fusion_run_evaluates(fusion_run):
    metrics = json_out(ok(peftkit_cli("eval", "--run", fusion_run)))
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0


def test_inspect_fusion_draws_the_heat_map(fusion_run, tmp_path):
    out = ok(peftkit_cli("inspect-fusion", "--run", fusion_run, "--out", tmp_path / "f.png"))
    assert "sentiment" in out.stdout and "topic" in out.stdout and "1.output.dense" in out.stdout
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"


def test_inspect_fusion_refuses_a_run_that_is_not_a_fusion(stage_one):
    fails(peftkit_cli("inspect-fusion", "--run", stage_one[2]), "inspect-fusion", "not a fusion")
