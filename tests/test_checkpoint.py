"""Checkpoint safety: atomic writes, fingerprints, pickle opt-in, clear errors on bad files."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from conftest import build, logits, make_inputs
from test_contract import perturb

import peftkit
from peftkit import BaseModelMismatchError, CheckpointError, LoraConfig, PeftModel, get_peft_model
from peftkit import io as pio


def saved(tmp_path, kind="llama", **kw):
    model = get_peft_model(build(kind), LoraConfig(r=2, target_modules=["q_proj", "v_proj"], **kw))
    perturb(model)
    model.save_pretrained(tmp_path)
    return model


def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    saved(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def broken(tensors, path, metadata=None):
        with open(path, "wb") as f:
            f.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(pio, "save_file", broken)
    model = get_peft_model(build("llama"), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    with pytest.raises(OSError, match="disk full"):
        model.save_pretrained(tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no temp files left either


def test_fingerprint_rejects_a_base_with_other_shapes(tmp_path):
    saved(tmp_path)
    cfg = build("llama").config
    cfg.hidden_size, cfg.intermediate_size = 48, 96
    torch.manual_seed(0)
    other = transformers.LlamaForCausalLM(cfg)
    with pytest.raises(BaseModelMismatchError, match=r"q_proj has shape \[32, 48\] here but \[32, 32\]"):
        PeftModel.from_pretrained(other, tmp_path)


def test_fingerprint_rejects_another_architecture(tmp_path):
    model = get_peft_model(build("bert"), LoraConfig(r=2, target_modules=["query"]))
    model.save_pretrained(tmp_path)
    with pytest.raises(BaseModelMismatchError, match="model type 'bert'"):
        PeftModel.from_pretrained(build("llama"), tmp_path)


def test_metadata_records_method_and_fingerprint(tmp_path):
    from safetensors import safe_open

    saved(tmp_path)
    with safe_open(str(tmp_path / "adapter_model.safetensors"), "pt") as f:
        meta = f.metadata()
    assert meta["peftkit_method"] == "lora"
    assert json.loads(meta["peftkit_fingerprint"])["modules"]["model.layers.0.self_attn.q_proj"] == [32, 32]


def test_pickled_weights_load_through_the_weights_only_unpickler(tmp_path):
    """peft's ``adapter_model.bin`` loads as peft loads it (torch's weights-only unpickler, which runs no
    code from the file); a pickle holding more than tensors needs ``allow_pickle=True``; ``False``
    refuses pickles altogether."""
    model = saved(tmp_path)
    state = model.adapter_state_dict("default")
    (tmp_path / "adapter_model.safetensors").unlink()
    torch.save(state, tmp_path / "adapter_model.bin")
    inputs = make_inputs("llama")
    for allow in (None, True):
        loaded = PeftModel.from_pretrained(build("llama"), tmp_path, allow_pickle=allow)
        torch.testing.assert_close(logits(loaded, inputs), logits(model, inputs))
    with pytest.raises(CheckpointError, match="allow_pickle=False refuses pickles"):
        PeftModel.from_pretrained(build("llama"), tmp_path, allow_pickle=False)
    torch.save({**state, "note": _NotATensor()}, tmp_path / "adapter_model.bin")
    with pytest.raises(CheckpointError, match="weights-only unpickler refuses"):
        PeftModel.from_pretrained(build("llama"), tmp_path)


class _NotATensor:
    """An object torch's weights-only unpickler refuses to rebuild."""


def test_truncated_files_give_clear_errors(tmp_path):
    saved(tmp_path)
    (tmp_path / "adapter_config.json").write_text('{"r": 2,')
    with pytest.raises(CheckpointError, match="not valid JSON"):
        PeftModel.from_pretrained(build("llama"), tmp_path)
    saved(tmp_path)
    data = (tmp_path / "adapter_model.safetensors").read_bytes()
    (tmp_path / "adapter_model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cannot be read"):
        PeftModel.from_pretrained(build("llama"), tmp_path)
    with pytest.raises(CheckpointError, match="no adapter_config.json"):
        PeftModel.from_pretrained(build("llama"), tmp_path / "missing")


def test_missing_and_unexpected_tensors_are_errors(tmp_path):
    from safetensors.torch import load_file, save_file

    saved(tmp_path)
    path = tmp_path / "adapter_model.safetensors"
    state = load_file(path)
    first = sorted(state)[0]
    save_file({k: v for k, v in state.items() if k != first}, path)
    with pytest.raises(peftkit.AdapterError, match="lacks"):
        PeftModel.from_pretrained(build("llama"), tmp_path)
    save_file({**state, "base_model.model.model.nonexistent.weight": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="match nothing"):
        PeftModel.from_pretrained(build("llama"), tmp_path)


def test_several_adapters_save_in_subfolders_and_load(tmp_path):
    model = saved(tmp_path / "x")
    model.add_adapter("second", LoraConfig(r=3, target_modules=["k_proj"]))
    perturb(model, "second")
    model.save_pretrained(tmp_path / "all")
    assert (tmp_path / "all" / "adapter_config.json").is_file()
    assert (tmp_path / "all" / "second" / "adapter_config.json").is_file()
    loaded = PeftModel.from_pretrained(build("llama"), tmp_path / "all")
    loaded.load_adapter(tmp_path / "all" / "second", "second")
    inputs = make_inputs("llama")
    for name in ("default", "second"):
        model.set_adapter(name)
        loaded.set_adapter(name)
        torch.testing.assert_close(logits(loaded, inputs), logits(model, inputs))


def test_is_trainable_loads_trainable_adapters(tmp_path):
    saved(tmp_path)
    loaded = PeftModel.from_pretrained(build("llama"), tmp_path, is_trainable=True)
    # per layer: q_proj A (2x32) + B (32x2), v_proj A (2x32) + B (16x2); two layers
    assert loaded.parameter_report().trainable == 2 * (64 + 64 + 64 + 32)
    names = {n for n, p in loaded.named_parameters() if p.requires_grad}
    assert names and all("lora_" in n for n in names)


def test_saved_files_get_the_usual_permissions(tmp_path):
    import os
    import stat

    saved(tmp_path)
    mask = os.umask(0)
    os.umask(mask)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~mask
