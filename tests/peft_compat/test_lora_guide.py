"""peft's LoRA developer guide (``docs/source/developer_guides/lora.md``), step by step on tiny models.

Left out: the sections on methods peftkit does not have (CorDA, EVA, LoftQ, LoRA-GA, KappaTune, MonteCLoRA,
VeLoRA, aLoRA, LoRA-FA, intruder reduction, tensor parallelism, MoE ``target_parameters``, weight tying).
"""

from __future__ import annotations

import importlib

import pytest
import torch
from tiny_tokenizer import tiny_tokenizer
from torch import nn

from .support import (
    adapted_paths,
    adapter_params,
    base_model,
    inputs_for,
    layer_deltas,
    matches_suffixes,
    output,
    perturb,
    probe_inputs,
    word_llama,
)

QV = ["q_proj", "v_proj"]
X = inputs_for("llama")


def lora(lib, **kw):
    torch.manual_seed(1)
    return lib.get_peft_model(base_model("llama"), lib.LoraConfig(target_modules=QV, **kw)).eval()


def base_logits() -> torch.Tensor:
    return output(base_model("llama"), X)


# ---- Initialization ----------------------------------------------------------------------------------------
def test_init_gaussian(lib):
    model = lora(lib, r=8, init_lora_weights="gaussian")
    torch.testing.assert_close(output(model, X), base_logits())  # B = 0: an identity at init
    a = torch.cat([p.detach().flatten() for n, p in adapter_params(model).items() if ".lora_A." in n])
    assert 0.8 / 8 < a.std().item() < 1.2 / 8  # A ~ N(0, 1/r)


def test_init_false_is_not_an_identity(lib):
    model = lora(lib, init_lora_weights=False)
    assert not torch.allclose(output(model, X), base_logits())


@pytest.mark.parametrize("init", ["pissa", "pissa_niter_4", "olora"])
def test_init_svd_and_qr_are_identities_at_init(lib, init):
    model = lora(lib, r=4, init_lora_weights=init)
    torch.testing.assert_close(output(model, X), base_logits(), atol=1e-5, rtol=1e-5)
    assert all(p.abs().sum() > 0 for n, p in adapter_params(model).items() if ".lora_B." in n)


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_init_svd_and_qr_adapters_reload_exactly(lib, init, tmp_path):
    model = lora(lib, r=4, init_lora_weights=init)
    perturb(model, scale=0.01)  # "trained"
    expected = output(model, X)
    model.save_pretrained(tmp_path)
    loaded = lib.PeftModel.from_pretrained(base_model("llama"), tmp_path)
    torch.testing.assert_close(output(loaded, X), expected, atol=1e-5, rtol=1e-5)


def test_rslora_scales_by_alpha_over_sqrt_r(lib):
    deltas = {}
    for rs in (False, True):
        model = lora(lib, r=4, lora_alpha=8, use_rslora=rs)
        perturb(model)
        deltas[rs] = layer_deltas(model, "default", probe_inputs(model, "default"))
    for path, delta in deltas[False].items():  # alpha / sqrt(r) = 4 against alpha / r = 2
        torch.testing.assert_close(deltas[True][path], 2 * delta, atol=1e-5, rtol=1e-4)


# ---- Training ----------------------------------------------------------------------------------------------
def test_all_linear_targets_every_linear_but_the_head(lib):
    model = lib.get_peft_model(
        base_model("llama"), lib.LoraConfig(target_modules="all-linear", task_type="CAUSAL_LM")
    )
    expected = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert matches_suffixes(adapted_paths(model), expected), sorted(adapted_paths(model))


class Inner(nn.Module):
    def __init__(self):
        super().__init__()
        self.foo, self.barfoo = nn.Linear(16, 16), nn.Linear(16, 16)


class Middle(nn.Module):
    def __init__(self):
        super().__init__()
        self.foo, self.foobar, self.module = nn.Linear(16, 16), nn.Linear(16, 16), Inner()


class Outer(nn.Module):
    """The guide's example: foo, module.foo, module.foobar, module.module.foo and module.module.barfoo."""

    def __init__(self):
        super().__init__()
        self.foo, self.module = nn.Linear(16, 16), Middle()

    def forward(self, x):
        return self.foo(x)


# pattern -> the layers that get rank 5 (all others: r=2)
RANK_PATTERNS = [
    pytest.param({"foo": 5}, {"foo", "module.foo", "module.module.foo"}, id="suffix"),
    pytest.param({"^foo": 5}, {"foo"}, id="anchored"),
    pytest.param({"^module.foo": 5}, {"module.foo"}, id="anchored_path"),
    pytest.param({"module.foo": 5}, {"module.foo", "module.module.foo"}, id="path_suffix"),
    pytest.param({"^foo": 5, "^module.module.foo": 5}, {"foo", "module.module.foo"}, id="two_keys"),
]


@pytest.mark.parametrize(("pattern", "ranked"), RANK_PATTERNS)
def test_rank_pattern_matching(lib, pattern, ranked):
    config = lib.LoraConfig(r=2, target_modules=["foo", "foobar", "barfoo"], rank_pattern=pattern)
    model = lib.get_peft_model(Outer(), config)
    ranks = {
        _local(n.split(".lora_A.")[0]): p.shape[0]
        for n, p in adapter_params(model).items()
        if ".lora_A." in n
    }
    layers = ("foo", "module.foo", "module.foobar", "module.module.foo", "module.module.barfoo")
    assert ranks == {k: (5 if k in ranked else 2) for k in layers}


def _local(path: str) -> str:
    """The layer's path inside ``Outer``: everything after either library's wrapper prefix."""
    for prefix in ("base_model.model.", "base_model."):
        if path.startswith(prefix):
            return path[len(prefix) :]
    return path


def test_trainable_token_indices(lib):
    config = lib.LoraConfig(target_modules=QV, trainable_token_indices=[3, 4])
    model = lib.get_peft_model(base_model("llama"), config)
    ids = torch.arange(96)[None]
    before = model.get_input_embeddings()(ids).detach()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    for _ in range(2):
        optimizer.zero_grad()
        output(model, {"input_ids": torch.tensor([[3, 4, 5, 3]])}).sum().backward()
        optimizer.step()
    changed = (model.get_input_embeddings()(ids).detach() != before).any(dim=-1)[0]
    assert changed.nonzero().flatten().tolist() == [3, 4]


def test_loraplus_optimizer(lib):
    optimizers = importlib.import_module(f"{lib.__name__}.optimizers")
    model = lora(lib)
    optimizer = optimizers.create_loraplus_optimizer(
        model=model, optimizer_cls=torch.optim.Adam, lr=5e-5, loraplus_lr_ratio=16
    )
    lr_of = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    for name, param in adapter_params(model).items():
        assert lr_of[id(param)] == pytest.approx(5e-5 * 16 if ".lora_B." in name else 5e-5), name


# ---- Post-training: merging --------------------------------------------------------------------------------
@pytest.fixture
def saved_adapter(lib, tmp_path):
    model = lora(lib)
    perturb(model)
    model.save_pretrained(tmp_path / "sft")
    return tmp_path / "sft", output(model, X)


def test_merge_and_unload_after_from_pretrained(lib, saved_adapter):
    path, expected = saved_adapter
    model = lib.PeftModel.from_pretrained(base_model("llama"), path)
    merged = model.merge_and_unload()
    assert type(merged) is type(base_model("llama"))
    torch.testing.assert_close(output(merged, X), expected, atol=1e-5, rtol=1e-5)


def test_merge_adapter_then_unmerge_adapter(lib, saved_adapter):
    path, expected = saved_adapter
    model = lib.PeftModel.from_pretrained(base_model("llama"), path)
    model.merge_adapter()
    torch.testing.assert_close(output(model, X), expected, atol=1e-5, rtol=1e-5)
    model.unmerge_adapter()
    with model.disable_adapter():
        torch.testing.assert_close(output(model, X), base_logits(), atol=1e-5, rtol=1e-5)


@pytest.fixture
def two_saved_adapters(lib, tmp_path):
    outputs = {}
    for seed, name in enumerate(("sft", "dpo")):
        model = lora(lib)
        perturb(model, seed=seed)
        model.save_pretrained(tmp_path / name)
        outputs[name] = output(model, X)
    return tmp_path, outputs


def test_add_weighted_adapter_end_to_end(lib, two_saved_adapters):
    path, _ = two_saved_adapters
    model = lib.PeftModel.from_pretrained(base_model("llama"), path / "sft", adapter_name="sft")
    model.load_adapter(path / "dpo", adapter_name="dpo")
    model.add_weighted_adapter(
        adapters=["sft", "dpo"], weights=[0.7, 0.3], adapter_name="sft-dpo", combination_type="linear"
    )
    model.set_adapter("sft-dpo")
    assert model.active_adapter == "sft-dpo"
    with torch.no_grad():
        generated = model.generate(**X, max_length=30)
    assert generated.shape[0] == 2 and generated.shape[1] <= 30


def test_load_adapter_and_set_adapter(lib, two_saved_adapters):
    path, outputs = two_saved_adapters
    model = lib.PeftModel.from_pretrained(base_model("llama"), path / "sft")
    model.load_adapter(path / "dpo", adapter_name="dpo")
    torch.testing.assert_close(output(model, X), outputs["sft"])
    model.set_adapter("dpo")
    torch.testing.assert_close(output(model, X), outputs["dpo"])


def test_unload_and_delete_adapter(lib, two_saved_adapters):
    path, _ = two_saved_adapters
    model = lib.PeftModel.from_pretrained(base_model("llama"), path / "sft")
    model.load_adapter(path / "dpo", adapter_name="dpo")
    model.delete_adapter("dpo")
    assert "dpo" not in model.peft_config
    unloaded = model.unload()
    torch.testing.assert_close(output(unloaded, X), base_logits())


def test_different_adapters_in_one_batch_generate(lib, tmp_path):
    tok = tiny_tokenizer()
    tok.padding_side = "left"
    for seed, name in enumerate(("fr", "de")):
        torch.manual_seed(seed)
        model = lib.get_peft_model(word_llama(), lib.LoraConfig(target_modules=QV))
        perturb(model, scale=1.0, seed=seed)
        model.save_pretrained(tmp_path / name)
    peft_model = lib.PeftModel.from_pretrained(word_llama(), tmp_path / "fr", adapter_name="adapter_fr")
    peft_model.load_adapter(tmp_path / "de", adapter_name="adapter_de")
    texts = [
        "hello my dog is fun",
        "the cat sat",
        "a movie",
        "the film was great",
        "say hello",
        "the dog",
        "what",
        "the red house",
        "you are helpful",
    ]
    inputs = tok(texts, return_tensors="pt", padding=True)
    adapter_names = ["__base__"] * 3 + ["adapter_fr"] * 3 + ["adapter_de"] * 3
    mixed = peft_model.generate(**inputs, adapter_names=adapter_names, max_new_tokens=20)
    for name, rows in (("adapter_fr", slice(3, 6)), ("adapter_de", slice(6, 9))):
        peft_model.set_adapter(name)
        alone = peft_model.generate(**{k: v[rows] for k, v in inputs.items()}, max_new_tokens=20)
        assert torch.equal(mixed[rows, : alone.shape[1]], alone)
    with peft_model.disable_adapter():
        alone = peft_model.generate(**{k: v[:3] for k, v in inputs.items()}, max_new_tokens=20)
    assert torch.equal(mixed[:3, : alone.shape[1]], alone)
