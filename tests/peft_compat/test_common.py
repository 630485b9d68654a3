"""peft's common model checks (its ``tests/testing_common.py``) over tiny decoder, encoder-decoder and custom
models, each run against ``peft`` and against ``peftkit`` (see ``conftest.py``)."""

from __future__ import annotations

import copy
import json
import pickle
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file

from .support import (
    BY_ID,
    DECODERS,
    GENERATORS,
    adapter_params,
    cases,
    layer_deltas,
    lora_rank,
    output,
    perturb,
    probe_inputs,
    read_model_card,
    replace,
    require,
)

SERIALIZATION = [pytest.param(True, id="safetensors"), pytest.param(False, id="pickle")]


def state_dicts_equal(a, b, keys=None) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    for key in keys if keys is not None else sa:
        torch.testing.assert_close(sa[key], sb[key])


def adapter_state(lib, model) -> dict:
    """peft compares P-tuning models by their adapter state dict only (the encoder is not saved)."""
    return lib.get_peft_model_state_dict(model)


def check_saved_files(folder, safe: bool) -> None:
    weights = "adapter_model.safetensors" if safe else "adapter_model.bin"
    assert (folder / weights).exists()
    assert (folder / "adapter_config.json").exists()
    assert not (folder / "model.safetensors").exists()
    assert not (folder / "config.json").exists()


def check_model_card(folder, model) -> None:
    card = read_model_card(folder)
    assert card["library_name"] == "peft"
    if hasattr(model, "config"):
        assert card["base_model"] == model.config.to_dict()["_name_or_path"]
    else:
        assert "base_model" not in card
    if model.active_peft_config.peft_type.value == "LORA":
        assert "lora" in card["tags"]


def check_config_json(folder, model) -> None:
    saved = json.loads((folder / "adapter_config.json").read_text())
    if hasattr(model, "config"):
        assert saved["base_model_name_or_path"] == model.config.to_dict()["_name_or_path"]


def save(model, folder, safe: bool, **kw) -> None:
    if safe:
        model.save_pretrained(folder, **kw)
    else:
        model.save_pretrained(folder, safe_serialization=False, **kw)


# ---- construction ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", cases())
def test_model_attr(lib, case):
    model = case.peft_model(lib)
    for name in ("save_pretrained", "from_pretrained", "push_to_hub"):
        assert hasattr(model, name)


@pytest.mark.parametrize("case", cases())
def test_adapter_name(lib, case):
    model = case.peft_model(lib, adapter_name="test-adapter")
    assert any("test-adapter" in n for n, _ in model.named_parameters())


def expected_shape(case) -> tuple[int, ...]:
    """peft's output shape: a causal LM with virtual tokens (prompt tuning, P-tuning) returns theirs too."""
    x = case.inputs()
    if case.kind == "mlp":
        return (9, 2)
    tokens = x["decoder_input_ids" if case.kind == "t5" else "input_ids"].shape[1]
    virtual = (
        case.kwargs.get("num_virtual_tokens", 0)
        if case.kind != "t5" and case.config_name != "PrefixTuningConfig"
        else 0
    )
    return (2, tokens + virtual, 96)


@pytest.mark.parametrize("case", cases())
def test_forward_shape(lib, case):
    assert tuple(output(case.peft_model(lib).eval(), case.inputs()).shape) == expected_shape(case)


@pytest.mark.parametrize("case", cases(where=lambda c: c.kind != "mlp"))
def test_prepare_for_training(lib, case):
    ids = case.inputs()["input_ids"]
    model = case.peft_model(lib)
    assert not model.get_input_embeddings()(ids).requires_grad

    base = lib.prepare_model_for_kbit_training(case.base())
    assert not any(p.requires_grad for p in base.parameters())
    model = lib.get_peft_model(base, case.config(lib))
    model.enable_input_require_grads()
    assert model.get_input_embeddings()(ids).requires_grad


# ---- saving and loading ------------------------------------------------------------------------------------
@pytest.mark.parametrize("safe", SERIALIZATION)
@pytest.mark.parametrize("case", cases())
def test_save_pretrained(lib, case, safe, tmp_path):
    model = case.peft_model(lib)
    perturb(model)
    save(model, tmp_path, safe)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = lib.PeftModel.from_pretrained(case.base(), tmp_path)
    assert not any("Found missing adapter keys" in str(w.message) for w in caught)
    if case.config_name == "PromptEncoderConfig":
        a, b = adapter_state(lib, model), adapter_state(lib, loaded)
        for key in a:
            torch.testing.assert_close(a[key], b[key])
    else:
        state_dicts_equal(model, loaded)
    check_saved_files(tmp_path, safe)
    check_model_card(tmp_path, model)
    check_config_json(tmp_path, model)


@pytest.mark.parametrize("safe", SERIALIZATION)
@pytest.mark.parametrize("case", cases(where=lambda c: c.multi))
def test_save_pretrained_selected_adapters(lib, case, safe, tmp_path):
    model = case.peft_model(lib)
    model.add_adapter("new_adapter", case.config(lib))
    perturb(model, "default")
    perturb(model, "new_adapter", seed=1)
    save(model, tmp_path / "all", safe)
    loaded = lib.PeftModel.from_pretrained(case.base(), tmp_path / "all")
    loaded.load_adapter(tmp_path / "all" / "new_adapter", "new_adapter")
    if case.config_name == "PromptEncoderConfig":
        a, b = adapter_state(lib, model), adapter_state(lib, loaded)
    else:
        a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key])
    check_saved_files(tmp_path / "all", safe)
    check_saved_files(tmp_path / "all" / "new_adapter", safe)
    check_model_card(tmp_path / "all", model)

    model.save_pretrained(tmp_path / "one", selected_adapters=["default"])
    assert not (tmp_path / "one" / "new_adapter").exists()
    loaded = lib.PeftModel.from_pretrained(case.base(), tmp_path / "one")
    assert "default" in loaded.peft_config and "new_adapter" not in loaded.peft_config


@pytest.mark.parametrize("case", cases("llama-lora", "mlp-lora", "mlp-ia3", "llama-prompt"))
def test_save_pretrained_adapter_name_substring(lib, case, tmp_path):
    model = case.peft_model(lib)
    expected = len(lib.get_peft_model_state_dict(model))
    for name in ("default2", "other_default", "foodefault_bar", "efaul"):
        model.add_adapter(name, case.config(lib))
    model.save_pretrained(tmp_path, selected_adapters=["default"])
    assert len(load_file(tmp_path / "adapter_model.safetensors")) == expected


@pytest.mark.parametrize("case", cases())
def test_from_pretrained_config_construction(lib, case, tmp_path):
    case.peft_model(lib).save_pretrained(tmp_path)
    config = case.config(lib)
    loaded = lib.PeftModel.from_pretrained(case.base(), tmp_path, is_trainable=False, config=config)
    assert loaded.peft_config["default"].inference_mode
    assert loaded.peft_config["default"] is config


@pytest.mark.parametrize("case", cases(where=lambda c: c.multi))
def test_load_multiple_adapters(lib, case, tmp_path):
    case.peft_model(lib).save_pretrained(tmp_path)
    model = lib.PeftModel.from_pretrained(case.base(), tmp_path)
    first = model.load_adapter(tmp_path, adapter_name="other")
    second = model.load_adapter(tmp_path, adapter_name="yet-another")
    assert first.missing_keys == [] and second.missing_keys == []


@pytest.mark.parametrize("case", cases("llama-lora", "llama-ia3", "llama-prompt", "t5-lora", "mlp-lora"))
def test_load_low_cpu_mem_usage(lib, case, tmp_path):
    model = case.peft_model(lib)
    perturb(model)
    expected = output(model.eval(), case.inputs())
    model.save_pretrained(tmp_path)
    loaded = lib.PeftModel.from_pretrained(case.base(), tmp_path, low_cpu_mem_usage=True)
    assert {p.device.type for p in loaded.parameters()} == {"cpu"}
    torch.testing.assert_close(output(loaded, case.inputs()), expected)
    loaded.load_adapter(tmp_path, adapter_name="other", low_cpu_mem_usage=True)
    assert {p.device.type for p in loaded.parameters()} == {"cpu"}


@pytest.mark.parametrize("case", cases("llama-lora", "llama-ia3", "t5-lora", "mlp-lora"))
def test_inject_adapter_in_model_low_cpu_mem_usage(lib, case):
    model = case.base()
    lib.inject_adapter_in_model(case.config(lib), model, low_cpu_mem_usage=True)
    assert "meta" in {p.device.type for p in model.parameters()}


@pytest.mark.parametrize("case", cases("llama-lora", "llama-prompt", "t5-lora", "mlp-lora"))
def test_peft_model_device_map(lib, case, tmp_path):
    case.peft_model(lib).save_pretrained(tmp_path)
    lib.PeftModel.from_pretrained(case.base(), tmp_path, device_map={"": "cpu"})


# ---- merging -----------------------------------------------------------------------------------------------
def merge_tolerance(case) -> float:
    return 1e-2 if case.config_name == "AdaLoraConfig" else 1e-4


def keys_of_fresh_base(case) -> set[str]:
    return set(case.base().state_dict())


@pytest.mark.parametrize("case", cases(where=lambda c: c.mergeable))
def test_merge_layers(lib, case, tmp_path):
    model = case.peft_model(lib)
    perturb(model)
    model.eval()
    x = case.inputs()
    logits = output(model, x)
    model.merge_adapter()
    logits_merged = output(model, x)
    model.unmerge_adapter()
    logits_unmerged = output(model, x)
    merged = model.merge_and_unload()
    assert set(merged.state_dict()) == keys_of_fresh_base(case)  # no adapter layer is left
    assert not hasattr(merged, "peft_config")
    logits_unloaded = output(merged, x)
    tol = merge_tolerance(case)
    for other in (logits_merged, logits_unmerged, logits_unloaded):
        torch.testing.assert_close(other, logits, atol=tol, rtol=tol)
    assert not torch.allclose(logits_merged, output(case.base(), x), atol=1e-10, rtol=1e-10)

    if hasattr(merged, "save_pretrained"):
        merged.save_pretrained(tmp_path)
        reloaded = type(merged).from_pretrained(tmp_path)
    else:
        reloaded = pickle.loads(pickle.dumps(merged))
    torch.testing.assert_close(output(reloaded, x), logits_merged, atol=tol, rtol=tol)


@pytest.mark.parametrize("case", cases(where=lambda c: c.mergeable and c.multi))
def test_merge_layers_multi(lib, case):
    x = case.inputs()
    model = case.peft_model(lib).eval()
    perturb(model, "default")
    with torch.inference_mode():
        logits_1 = output(model, x)
    model.add_adapter("adapter-2", case.config(lib))
    model.set_adapter("adapter-2")
    perturb(model, "adapter-2", seed=1)
    model.eval()
    with torch.inference_mode():
        logits_2 = output(model, x)
    tol = 1e-3
    assert not torch.allclose(logits_1, logits_2, atol=tol, rtol=tol)
    model.set_adapter("default")
    with torch.inference_mode():
        torch.testing.assert_close(output(model, x), logits_1, atol=tol, rtol=tol)

    copy_1, copy_2 = copy.deepcopy(model), copy.deepcopy(model)
    with torch.inference_mode():
        both = output(model.merge_and_unload(adapter_names=["adapter-2", "default"]), x)
        only_2 = output(copy_1.merge_and_unload(adapter_names=["adapter-2"]), x)
        only_1 = output(copy_2.merge_and_unload(adapter_names=["default"]), x)
    assert not torch.allclose(both, logits_1, atol=tol, rtol=tol)
    assert not torch.allclose(both, logits_2, atol=tol, rtol=tol)
    torch.testing.assert_close(only_2, logits_2, atol=tol, rtol=tol)
    torch.testing.assert_close(only_1, logits_1, atol=tol, rtol=tol)


@pytest.mark.parametrize("case", cases(where=lambda c: c.mergeable))
def test_merge_layers_nan(lib, case):
    model = case.peft_model(lib)
    perturb(model)
    model.eval()
    with torch.no_grad():
        for p in adapter_params(model).values():
            p.view(-1)[0] = torch.nan
    with pytest.raises(
        ValueError, match="NaNs detected in the merged weights. The adapter default seems to be broken"
    ):
        model.merge_and_unload(safe_merge=True)


@pytest.mark.parametrize("case", cases(where=lambda c: c.mergeable))
def test_merge_layers_is_idempotent(lib, case):
    model = case.peft_model(lib)
    perturb(model)
    model.eval()
    model.merge_adapter()
    logits_0 = output(model, case.inputs())
    with pytest.warns(UserWarning, match="All adapters are already merged, nothing to do"):
        model.merge_adapter()
    torch.testing.assert_close(output(model, case.inputs()), logits_0, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("case", cases(where=lambda c: c.mergeable))
def test_safe_merge(lib, case, tmp_path):
    x = case.inputs()
    logits_base = output(case.base(), x)
    model = case.peft_model(lib).eval()
    perturb(model)
    logits_peft = output(model, x)
    assert not torch.allclose(logits_base, logits_peft, atol=1e-6, rtol=1e-6)
    unloaded = model.merge_and_unload(safe_merge=True)
    torch.testing.assert_close(output(unloaded, x), logits_peft, atol=1e-5, rtol=1e-5)
    torch.save(unloaded.state_dict(), tmp_path / "model.bin")
    state = {k: v.clone() for k, v in unloaded.state_dict().items()}  # tied weights share storage
    save_file(state, tmp_path / "model.safetensors")


@pytest.mark.parametrize("case", cases(where=lambda c: c.mergeable))
def test_unload_adapter(lib, case):
    x = case.inputs()
    base = case.base()
    n_keys = len(base.state_dict())
    with torch.inference_mode():
        logits_base = output(base, x)
    model = lib.get_peft_model(base, case.config(lib))
    perturb(model)
    model.eval()
    with torch.inference_mode():
        logits_adapter = output(model, x)
    unloaded = model.unload()
    with torch.inference_mode():
        logits_unloaded = output(unloaded, x)
    assert set(unloaded.state_dict()) == keys_of_fresh_base(case)
    assert not hasattr(unloaded, "peft_config")
    assert not torch.allclose(logits_adapter, logits_unloaded, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(logits_unloaded, logits_base, atol=1e-4, rtol=1e-4)
    assert len(unloaded.state_dict()) == n_keys


# ---- mixed-adapter batches and generation ------------------------------------------------------------------
def tripled(inputs: dict) -> dict:
    return {k: torch.cat([v, v, v]) for k, v in inputs.items()}


def first_scores(model, x: dict) -> torch.Tensor:
    return model.generate(**x, return_dict_in_generate=True, output_scores=True).scores[0]


@pytest.mark.parametrize("case", cases("llama-lora", "gpt2-lora", "t5-lora"))
def test_mixed_adapter_batches(lib, case):
    model = case.peft_model(lib, adapter_name="adapter0").eval()
    model.add_adapter("adapter1", case.config(lib))
    perturb(model, "adapter0")
    perturb(model, "adapter1", seed=1)
    model.eval()
    x = tripled(case.inputs())
    results = {}
    with torch.inference_mode(), model.disable_adapter():
        results["__base__"] = (output(model, x), first_scores(model, x))
    for name in ("adapter0", "adapter1"):
        model.set_adapter(name)
        with torch.inference_mode():
            results[name] = (output(model, x), first_scores(model, x))
    tol = 1e-4
    names = list(results)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not torch.allclose(results[a][0], results[b][0], atol=tol, rtol=tol)
            assert not torch.allclose(results[a][1], results[b][1], atol=tol, rtol=tol)
    rows = [names[i % 3] for i in range(len(x["input_ids"]))]
    with torch.inference_mode():
        mixed = (
            output(model, {**x, "adapter_names": rows}),
            first_scores(model, {**x, "adapter_names": rows}),
        )
    for i, name in enumerate(names):
        torch.testing.assert_close(mixed[0][i::3], results[name][0][i::3], atol=tol, rtol=tol)
        torch.testing.assert_close(mixed[1][i::3], results[name][1][i::3], atol=tol, rtol=tol)


def strip_padding(seq: torch.Tensor, pad: int) -> list[int]:
    tokens = seq.tolist()
    while tokens and tokens[-1] == pad:
        tokens.pop()
    return tokens


def same_generations(a: torch.Tensor, b: torch.Tensor, pad: int) -> bool:
    return all(strip_padding(x, pad) == strip_padding(y, pad) for x, y in zip(a, b))


@pytest.mark.parametrize("case", cases("llama-lora"))
def test_generate_with_mixed_adapter_batches_and_beam_search(lib, case):
    model = case.peft_model(lib, adapter_name="adapter0").eval()
    model.add_adapter("adapter1", case.config(lib))
    perturb(model, "adapter0", scale=1.0)
    perturb(model, "adapter1", scale=1.0, seed=1)
    model.eval()
    x = tripled(case.inputs())
    kwargs = {**x, "max_length": 20, "num_beams": 10, "early_stopping": True}
    with torch.inference_mode(), model.disable_adapter():
        gens = {"__base__": model.generate(**kwargs)}
    for name in ("adapter0", "adapter1"):
        model.set_adapter(name)
        with torch.inference_mode():
            gens[name] = model.generate(**kwargs)
    pad = model.config.eos_token_id
    names = list(gens)
    assert not same_generations(gens["__base__"], gens["adapter0"], pad)
    assert not same_generations(gens["__base__"], gens["adapter1"], pad)
    assert not same_generations(gens["adapter0"], gens["adapter1"], pad)
    rows = [names[i % 3] for i in range(len(x["input_ids"]))]
    with torch.inference_mode():
        mixed = model.generate(**kwargs, adapter_names=rows)
    for i, name in enumerate(names):
        assert same_generations(gens[name][i::3], mixed[i::3], pad)


@pytest.mark.parametrize("case", cases(where=lambda c: c.kind in GENERATORS))
def test_generate(lib, case):
    case.peft_model(lib).generate(**case.inputs())


@pytest.mark.parametrize("case", cases(where=lambda c: c.kind in GENERATORS))
def test_generate_pos_args(lib, case):
    model, ids = case.peft_model(lib), case.inputs()["input_ids"]
    if case.kind == "t5":  # peft's encoder-decoder models take keyword arguments only
        with pytest.raises(TypeError):
            model.generate(ids)
    else:
        model.generate(ids)


@pytest.mark.parametrize("case", cases(where=lambda c: c.kind in GENERATORS))
def test_generate_half_prec(lib, case):
    model = lib.get_peft_model(case.base(dtype=torch.bfloat16), case.config(lib))
    ids = torch.LongTensor([[1, 1, 1], [2, 1, 2]])
    mask = torch.LongTensor([[1, 1, 1], [1, 0, 1]])
    model.generate(input_ids=ids, attention_mask=mask)


# ---- training ----------------------------------------------------------------------------------------------
def trainable_names(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("case", cases())
def test_training(lib, case):
    model = case.peft_model(lib)
    output(model, case.inputs()).sum().backward()
    if case.prompt:
        return  # peft cannot name the trainable part of a prompt method either; see the next check
    check_only_trainable_have_grads(model)


def check_only_trainable_have_grads(model) -> None:
    """Every trainable parameter got a gradient, no other did, and all trainable ones are the adapter's."""
    for name, param in model.named_parameters():
        assert (param.grad is not None) == param.requires_grad, name
    assert trainable_names(model) <= set(adapter_params(model, "default"))


@pytest.mark.parametrize("case", cases())
def test_training_changes_only_adapter_params(lib, case):
    model = case.peft_model(lib)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        optimizer.zero_grad()
        output(model, case.inputs()).float().pow(2).mean().backward()
        optimizer.step()
    adapter = adapter_params(model)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed and changed <= set(adapter)  # (a factor whose gradient is still zero may not move yet)


@pytest.mark.parametrize("case", cases(where=lambda c: c.prompt))
def test_training_prompt_learning_tasks(lib, case):
    model = case.peft_model(lib)
    output(model, case.inputs()).sum().backward()
    params = list(model.prompt_encoder.parameters())
    assert params and all(p.grad is not None for p in params)


@pytest.mark.parametrize("case", cases())
def test_inference_safetensors(lib, case, tmp_path):
    model = case.peft_model(lib)
    x = case.inputs()
    output(model, x).sum().backward()
    model.eval()
    logits = output(model, x)[0]
    model.save_pretrained(tmp_path, safe_serialization=True)
    assert "adapter_model.safetensors" in {p.name for p in tmp_path.iterdir()}
    assert "adapter_model.bin" not in {p.name for p in tmp_path.iterdir()}
    loaded = lib.PeftModel.from_pretrained(case.base(), tmp_path)
    torch.testing.assert_close(output(loaded, x)[0], logits, atol=1e-4, rtol=1e-4)


# peft's IA3Config has no layers_to_transform (its test skips IA3 on the TypeError)
@pytest.mark.parametrize(
    "case", cases(where=lambda c: c.mergeable and c.kind != "mlp" and c.config_name != "IA3Config")
)
def test_training_layer_indexing(lib, case, tmp_path):
    x = case.inputs()
    model = case.peft_model(lib, layers_to_transform=[0])
    output(model, x).sum().backward()
    check_only_trainable_have_grads(model)
    adapter = adapter_params(model, "default")
    model.eval()
    logits = output(model, x)[0]
    model.save_pretrained(tmp_path)
    loaded = lib.PeftModel.from_pretrained(case.base(), tmp_path)
    torch.testing.assert_close(output(loaded, x)[0], logits, atol=1e-4, rtol=1e-4)
    assert len(adapter) < len(adapter_params(case.peft_model(lib), "default"))


REENTRANT = [pytest.param(True, id="reentrant"), pytest.param(False, id="non_reentrant")]


@pytest.mark.parametrize("use_reentrant", REENTRANT)
@pytest.mark.parametrize("case", cases("llama-lora", "llama-ia3", "llama-prompt", "llama-ptuning", "t5-lora"))
def test_training_gradient_checkpointing(lib, case, use_reentrant):
    no_dropout = {k: v for k, v in case.kwargs.items() if not k.endswith("dropout")}
    model = lib.get_peft_model(case.base(), getattr(lib, case.config_name)(**no_dropout))
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    model.train(True)
    x = case.inputs()
    (output(model, x) ** 2).sum().backward()
    normal = {n for n, p in params if p.grad.abs().sum() > 0}
    for _, p in params:
        p.grad = None
    model.prepare_model_for_gradient_checkpointing(model)
    model.gradient_checkpointing_enable({"use_reentrant": use_reentrant})
    (output(model, x) ** 2).sum().backward()
    assert {n for n, p in params if p.grad.abs().sum() > 0} == normal


# ---- adapters: delete, disable, combine --------------------------------------------------------------------
def check_deleted(model, name: str) -> None:
    assert name not in model.peft_config
    assert not any(f".{name}." in n for n, _ in model.named_parameters())
    assert not any(f".{name}." in n for n, _ in model.named_buffers())


@pytest.mark.parametrize("active", [pytest.param(True, id="active"), pytest.param(False, id="inactive")])
@pytest.mark.parametrize("case", cases(where=lambda c: c.mergeable and c.multi))
def test_delete_adapter(lib, case, active):
    model = case.peft_model(lib)
    model.add_adapter("delete_me", case.config(lib))
    if active:
        model.set_adapter("delete_me")
    model.delete_adapter("delete_me")
    check_deleted(model, "delete_me")
    assert model.active_adapters == ["default"]
    model.delete_adapter("default")
    check_deleted(model, "default")
    assert model.active_adapters == []
    model.base_model(**case.inputs())


@pytest.mark.parametrize("case", cases())
def test_delete_unknown_adapter_raises(lib, case):
    model = case.peft_model(lib)
    with pytest.raises(ValueError, match="Adapter unknown-adapter does not exist"):
        model.delete_adapter("unknown-adapter")


# peft leaves out seq2seq with prompt tuning / prompt encoder ("does not work with disabling adapters")
@pytest.mark.parametrize("case", cases(where=lambda c: c.id not in ("t5-prompt", "t5-ptuning")))
def test_disable_adapter(lib, case):
    x = case.inputs()

    def get_output(model):
        torch.manual_seed(0)
        if case.kind in GENERATORS:
            return first_scores(model, x)
        return model(**x)

    base = case.base()
    before = get_output(base)
    model = lib.get_peft_model(base, case.config(lib))
    perturb(model)
    with_adapter = get_output(model)
    require(lib, not torch.allclose(before, with_adapter), "the adapter does not change the output")
    with model.disable_adapter():
        torch.testing.assert_close(get_output(model), before, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(get_output(model), with_adapter, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("case", cases("llama-lora", "llama-adalora", "t5-lora", "mlp-lora"))
def test_adding_multiple_adapters_with_bias_raises(lib, case):
    config = case.config(lib, bias="all")
    model = lib.get_peft_model(case.base(), config, "adapter0")
    with pytest.raises(ValueError):
        model.add_adapter("adapter1", replace(config, r=20))
    assert "adapter1" not in model.peft_config
    assert "adapter1" not in model.base_model.peft_config


@pytest.mark.parametrize("case", cases(where=lambda c: c.kind in DECODERS))
def test_passing_input_embeds_works(lib, case):
    model = case.peft_model(lib, adapter_name="test-adapter")
    embeds = model.get_input_embeddings()(case.inputs()["input_ids"])
    model.forward(inputs_embeds=embeds)


@pytest.mark.parametrize("case", cases())
def test_get_base_model_state_dict(lib, case):
    base = case.base()
    original = {k: v.clone() for k, v in base.state_dict().items()}
    model = lib.get_peft_model(base, case.config(lib))
    extracted = lib.get_base_model_state_dict(model)
    assert set(extracted) == set(original)
    for key, value in original.items():
        torch.testing.assert_close(extracted[key], value)
    with torch.no_grad():
        for p in model.get_base_model().parameters():
            if p.is_floating_point():
                p.add_(torch.randn_like(p) * 0.1)
    result = lib.set_base_model_state_dict(model, original, strict=False)
    assert not result.missing_keys and not result.unexpected_keys
    restored = lib.get_base_model_state_dict(model)
    for key, value in original.items():
        torch.testing.assert_close(restored[key], value)


# ---- add_weighted_adapter ----------------------------------------------------------------------------------
ADAPTERS = ["adapter1", "adapter_2", "adapter_3"]
WEIGHTS = {"positive": [0.5, 1.5, 1.5], "negative": [-0.5, -0.8, -1.2]}
LORA_WEIGHTED = cases("llama-lora", "gpt2-lora", "t5-lora", "mlp-lora")
THIRD_RANK = 12  # peft uses 20, which is wider than some layers of these tiny models (llama's v_proj: 16)
SIGNS = [pytest.param(k, id=k) for k in WEIGHTS]


def three_loras(lib, case):
    """peft's setup: adapter1 and adapter_2 at rank 8, adapter_3 at a higher rank, all non-trivial."""
    config = case.config(lib)
    model = lib.get_peft_model(case.base(), copy.deepcopy(config), ADAPTERS[0])
    model.add_adapter(ADAPTERS[1], config)
    model.add_adapter(ADAPTERS[2], replace(config, r=THIRD_RANK))
    for seed, name in enumerate(ADAPTERS):
        perturb(model, name, seed=seed)
    return model.eval()


@pytest.mark.parametrize("sign", SIGNS)
@pytest.mark.parametrize("case", LORA_WEIGHTED)
def test_weighted_adapter_single_reweighting(lib, case, sign):
    model = three_loras(lib, case)
    weight = WEIGHTS[sign][0]
    model.add_weighted_adapter([ADAPTERS[0]], [weight], "single_adapter_reweighting")
    probe = probe_inputs(model, ADAPTERS[0])
    original = layer_deltas(model, ADAPTERS[0], probe)
    new = layer_deltas(model, "single_adapter_reweighting", probe)
    assert new.keys() == original.keys() and new
    for path, delta in original.items():
        torch.testing.assert_close(new[path], weight * delta, atol=1e-4, rtol=1e-4)


# combination -> (adapters used, extra kwargs, expected rank of the new adapter); None: rank not checked
COMBINATIONS = {
    "svd": (slice(1, None), {}, THIRD_RANK),
    "ties_svd": (slice(1, None), {"density": 0.5}, THIRD_RANK),
    "dare_linear_svd": (slice(1, None), {"density": 0.5}, THIRD_RANK),
    "dare_ties_svd": (slice(1, None), {"density": 0.5}, THIRD_RANK),
    "magnitude_prune_svd": (slice(1, None), {"density": 0.5}, THIRD_RANK),
    "cat": (slice(1, None), {}, 8 + THIRD_RANK),
    "linear": (slice(0, 2), {}, 8),
    "ties": (slice(0, 2), {"density": 0.5}, None),
    "dare_linear": (slice(0, 2), {"density": 0.5}, None),
    "dare_ties": (slice(0, 2), {"density": 0.5}, None),
    "magnitude_prune": (slice(0, 2), {"density": 0.5}, None),
}


# every combination on Llama; GPT-2 (Conv1D, fan_in_fan_out) and T5 with the three basic ones
COMBINATION_CASES = [
    pytest.param(case, combination, id=f"{case}-{combination}")
    for case in ("llama-lora", "gpt2-lora", "t5-lora")
    for combination in COMBINATIONS
    if case == "llama-lora" or combination in ("svd", "cat", "linear")
]


@pytest.mark.parametrize(("case_id", "combination"), COMBINATION_CASES)
def test_weighted_adapter_combination(lib, case_id, combination):
    """Both peft's positive and its negative weights, as its test does."""
    case = BY_ID[case_id]
    chosen, extra, rank = COMBINATIONS[combination]
    for sign, weights in WEIGHTS.items():
        model = three_loras(lib, case)
        name = f"multi_adapter_{combination}_reweighting_{sign}"
        model.add_weighted_adapter(
            ADAPTERS[chosen], weights[chosen], name, combination_type=combination, **extra
        )
        assert name in model.peft_config
        if rank is not None:
            assert lora_rank(model, name) == {rank}
        model.set_adapter(name)
        assert model.active_adapter == name and model.active_adapters == [name]
        output(model, case.inputs())


UNEVEN = ["linear", "ties", "dare_linear", "dare_ties", "magnitude_prune"]


@pytest.mark.parametrize("combination", UNEVEN)
@pytest.mark.parametrize("case", cases("llama-lora"))
def test_weighted_adapter_uneven_rank_raises(lib, case, combination):
    model = three_loras(lib, case)
    extra = {} if combination == "linear" else {"density": 0.5}
    with pytest.raises(ValueError):
        model.add_weighted_adapter(
            ADAPTERS[1:], WEIGHTS["positive"][1:], "uneven", combination_type=combination, **extra
        )


@pytest.mark.parametrize("case", cases("llama-lora", "mlp-lora"))
def test_weighted_adapter_linear_single_enabled(lib, case):
    model = three_loras(lib, case)
    name = "multi_adapter_linear_reweighting_single_enabled"
    model.add_weighted_adapter(ADAPTERS[:2], [0.5, 0], name, combination_type="linear")
    probe = probe_inputs(model, ADAPTERS[0])
    original = layer_deltas(model, ADAPTERS[0], probe)
    for path, delta in layer_deltas(model, name, probe).items():
        torch.testing.assert_close(delta, 0.5 * original[path], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("sign", SIGNS)
@pytest.mark.parametrize("case", cases("llama-ia3", "mlp-ia3"))
def test_weighted_adapter_ia3(lib, case, sign):
    config = case.config(lib)
    model = lib.get_peft_model(case.base(), copy.deepcopy(config), ADAPTERS[0])
    model.add_adapter(ADAPTERS[1], config)
    model.add_adapter(ADAPTERS[2], config)
    weights = WEIGHTS[sign]
    model.add_weighted_adapter([ADAPTERS[0]], [weights[0]], "single_adapter_reweighting")
    model.add_weighted_adapter(ADAPTERS[1:], weights[1:], "multi_adapter_reweighting")
    for name in ("single_adapter_reweighting", "multi_adapter_reweighting"):
        assert name in model.peft_config
        model.set_adapter(name)
        assert model.active_adapter == name and model.active_adapters == [name]
        output(model.eval(), case.inputs())
