"""Virtual-token methods: padding sides, cached vs uncached decoding, mixed batches across methods,
peft checkpoints both ways, reparametrisation ejection, P-tuning templates, shared deep prompts."""

from __future__ import annotations

import functools

import pytest
import torch
import transformers
from conftest import build, logits, make_inputs
from test_contract import train_steps
from transformers import DynamicCache

import peftkit
from peftkit import (
    BASE_ROW,
    AdapterError,
    ConfigError,
    LoraConfig,
    PrefixTuningConfig,
    PromptTuningConfig,
    PTuningConfig,
    PTuningV2Config,
    TargetError,
)
from peftkit import checkpoint as ckpt
from peftkit.kv_cache import cache_argument, returned_cache
from peftkit.methods.p_tuning import render_template
from peftkit.methods.prefix_tuning import eject

ATOL = 1e-5
DECODER_CONFIGS = {
    "prompt": lambda: PromptTuningConfig(num_virtual_tokens=3),
    "prefix": lambda: PrefixTuningConfig(num_virtual_tokens=2),
    "prefix-mlp": lambda: PrefixTuningConfig(
        num_virtual_tokens=3, prefix_projection=True, encoder_hidden_size=8
    ),
    "p-tuning": lambda: PTuningConfig(num_virtual_tokens=2, encoder_hidden_size=8),
    "p-tuning-v2": lambda: PTuningV2Config(num_virtual_tokens=4),
}


def pad(ids: torch.Tensor, lengths: list[int], side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of ``ids`` cut to ``lengths`` and padded (id 0) on ``side``."""
    width = ids.shape[1]
    out, mask = torch.zeros_like(ids), torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        sl = slice(width - n, width) if side == "left" else slice(0, n)
        out[i, sl], mask[i, sl] = ids[i, :n], 1
    return out, mask


def real_logits(out: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
    return [out[i][mask[i].bool()] for i in range(out.shape[0])]


def mixed_model(kind: str = "llama"):
    """One base with a LoRA adapter, a prompt-tuning adapter and a prefix adapter (and base rows)."""
    model = peftkit.get_peft_model(build(kind), PromptTuningConfig(num_virtual_tokens=3), "prompt")
    model.add_adapter("prefix", PrefixTuningConfig(num_virtual_tokens=2))
    model.add_adapter("ptune", PTuningConfig(num_virtual_tokens=4, encoder_hidden_size=8))
    target = ["q_proj", "v_proj"] if kind == "llama" else ["c_attn"]
    model.add_adapter("lora", LoraConfig(r=2, target_modules=target))
    with torch.no_grad():
        for _, layer in model.layers():
            for p in layer.adapter_parameters("lora"):
                p.add_(torch.randn_like(p) * 0.3)
    return model


def single_run(model, name: str, **inputs) -> torch.Tensor:
    if name == BASE_ROW:
        with model.disable_adapter():
            return model(**inputs).logits
    model.set_adapter(name)
    return model(**inputs).logits


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
@pytest.mark.parametrize("method", sorted(DECODER_CONFIGS))
def test_left_and_right_padding_agree(kind, method):
    model = peftkit.get_peft_model(build(kind), DECODER_CONFIGS[method]())
    ids = make_inputs(kind, batch=3, seq=7)["input_ids"]
    lengths = [7, 4, 5]
    outs = {}
    for side in ("left", "right"):
        padded, mask = pad(ids, lengths, side)
        outs[side] = real_logits(logits(model, {"input_ids": padded, "attention_mask": mask}), mask)
    for left, right in zip(outs["left"], outs["right"], strict=True):
        torch.testing.assert_close(left, right, atol=ATOL, rtol=1e-4)


def greedy(model, ids, mask, steps, rows=None, cached=True) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The decoding contract by hand: prefill then one token per call (or full recomputation)."""
    kw = {} if rows is None else {"adapter_names": rows}
    seq, step_logits = ids, []
    if cached:
        out = model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
            use_cache=True,
            **{cache_argument(model): DynamicCache()},
            **kw,
        )
    for _ in range(steps):
        if not cached:
            out = model(
                input_ids=seq, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0), **kw
            )
        last = out.logits[:, -1]  # (B, V)
        step_logits.append(last)
        token = last.argmax(-1, keepdim=True)  # (B, 1)
        seq, mask = torch.cat([seq, token], 1), torch.cat([mask, torch.ones_like(token)], 1)
        if cached:
            out = model(
                input_ids=token,
                attention_mask=mask,
                position_ids=mask.sum(-1, keepdim=True) - 1,
                use_cache=True,
                **{cache_argument(model): returned_cache(out)},
                **kw,
            )
    return seq, step_logits


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("kind", ["llama", "gpt2"])
@pytest.mark.parametrize("method", sorted(DECODER_CONFIGS))
def test_cached_decoding_equals_recomputation(method, kind, side):
    model = peftkit.get_peft_model(build(kind), DECODER_CONFIGS[method]())
    ids, mask = pad(make_inputs(kind, batch=3, seq=6)["input_ids"], [6, 3, 4], side)
    with torch.no_grad():
        seq_c, logits_c = greedy(model, ids, mask, steps=4, cached=True)
        seq_u, logits_u = greedy(model, ids, mask, steps=4, cached=False)
    torch.testing.assert_close(torch.stack(logits_c), torch.stack(logits_u), atol=1e-4, rtol=1e-4)
    assert torch.equal(seq_c, seq_u)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_mixed_batch_across_methods_forward(kind):
    model = mixed_model(kind)
    rows = ["prompt", "lora", BASE_ROW, "prefix", "ptune"]
    ids, mask = pad(make_inputs(kind, batch=5, seq=6)["input_ids"], [6, 4, 6, 3, 5], "left")
    inputs = {"input_ids": ids, "attention_mask": mask}
    mixed = model(**inputs, adapter_names=rows).logits
    for i, name in enumerate(rows):
        single = single_run(model, name, **inputs)
        torch.testing.assert_close(mixed[i][mask[i].bool()], single[i][mask[i].bool()], atol=ATOL, rtol=1e-4)


@pytest.mark.parametrize("side", ["left", "right"])
def test_mixed_batch_across_methods_decoding(side):
    model = mixed_model("llama")
    rows = ["prefix", "prompt", BASE_ROW, "lora", "ptune"]
    ids, mask = pad(make_inputs("llama", batch=5, seq=6)["input_ids"], [6, 4, 6, 3, 5], side)
    with torch.no_grad():
        mixed_seq, mixed_logits = greedy(model, ids, mask, steps=3, rows=rows)
        for i, name in enumerate(rows):
            model.set_adapter("prompt")  # any; the row's adapter is given per row below
            seq, step_logits = greedy(model, ids[i : i + 1], mask[i : i + 1], steps=3, rows=[name])
            assert torch.equal(seq[0], mixed_seq[i])
            for a, b in zip(step_logits, mixed_logits, strict=True):
                torch.testing.assert_close(a[0], b[i], atol=1e-4, rtol=1e-4)


def test_mixed_batch_with_beam_style_repeats():
    """Rows repeated k times (beam search's repeat_interleave) keep their adapters."""
    model = mixed_model("llama")
    inputs = make_inputs("llama", batch=2, seq=5)
    rep = {k: v.repeat_interleave(2, 0) for k, v in inputs.items()}
    mixed = model(**rep, adapter_names=["prefix", "prompt"]).logits
    torch.testing.assert_close(mixed[2:], single_run(model, "prompt", **rep)[2:], atol=ATOL, rtol=1e-4)


def test_training_moves_only_virtual_tokens_and_labels_align():
    model = peftkit.get_peft_model(build("llama"), PromptTuningConfig(num_virtual_tokens=3))
    inputs = {"input_ids": make_inputs("llama")["input_ids"]}  # no attention mask: all real tokens
    out = model(**inputs, labels=inputs["input_ids"])
    assert out.logits.shape[:2] == inputs["input_ids"].shape  # virtual positions cut from the logits
    out.loss.backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None}
    assert grads == {"prompt_encoder.default.embedding.weight"}


# ---- peft checkpoints both ways ---------------------------------------------------------------------
peft = pytest.importorskip("peft")

INTEROP = [
    ("llama", "PromptTuningConfig", {"num_virtual_tokens": 3}, None),
    ("bert", "PromptTuningConfig", {"num_virtual_tokens": 2}, ["classifier"]),
    ("t5", "PromptTuningConfig", {"num_virtual_tokens": 3}, None),
    ("llama", "PrefixTuningConfig", {"num_virtual_tokens": 3}, None),
    (
        "gpt2",
        "PrefixTuningConfig",
        {"num_virtual_tokens": 2, "prefix_projection": True, "encoder_hidden_size": 8},
        None,
    ),
    ("bert", "PrefixTuningConfig", {"num_virtual_tokens": 2}, ["classifier"]),
    ("llama", "PTuningConfig", {"num_virtual_tokens": 3, "encoder_hidden_size": 8}, None),
    (
        "gpt2",
        "PTuningConfig",
        {"num_virtual_tokens": 2, "encoder_hidden_size": 8, "encoder_reparameterization_type": "LSTM"},
        None,
    ),
]
PEFT_NAMES = {"PTuningConfig": "PromptEncoderConfig"}
TASKS = {"llama": "CAUSAL_LM", "gpt2": "CAUSAL_LM", "bert": "SEQ_CLS", "t5": "SEQ_2_SEQ_LM"}


def unpadded(kind: str) -> dict[str, torch.Tensor]:
    """peft counts positions over padding; without padding both agree exactly."""
    inputs = make_inputs(kind, seed=7)
    inputs["attention_mask"] = torch.ones_like(inputs["attention_mask"])
    return inputs


def peft_logits(model, kind: str, inputs: dict) -> torch.Tensor:
    out = logits(model, inputs)
    if kind in ("llama", "gpt2"):
        return out[:, -inputs["input_ids"].shape[1] :]  # peft returns the virtual positions too
    return out


@functools.cache
def peft_cannot(kind: str, cls: str) -> str | None:
    """Why the installed peft cannot run ``cls`` on ``kind`` at all (None: it can), found by trying:
    peft 0.21 looks for a ``past_key_values`` argument to place a prefix, which BERT's forward in
    transformers >= 5.2x calls ``cache``, and refuses."""
    config = getattr(peft, PEFT_NAMES.get(cls, cls))(task_type=TASKS[kind], num_virtual_tokens=2)
    try:
        peft_logits(peft.get_peft_model(build(kind), config).eval(), kind, unpadded(kind))
    except ValueError as e:
        return f"peft {peft.__version__} with transformers {transformers.__version__}: {e}"
    return None


def skip_where_peft_cannot(kind: str, cls: str) -> None:
    reason = peft_cannot(kind, "PrefixTuningConfig" if cls == "PTuningV2Config" else cls)
    if reason:
        pytest.skip(reason)


@pytest.mark.parametrize(("kind", "cls", "kwargs", "save"), INTEROP)
def test_peftkit_checkpoint_loads_in_peft(kind, cls, kwargs, save, tmp_path):
    skip_where_peft_cannot(kind, cls)
    config = getattr(peftkit, cls)(task_type=TASKS[kind], modules_to_save=save, **kwargs)  # peft needs it
    ours = peftkit.get_peft_model(build(kind), config)
    train_steps(ours, make_inputs(kind))
    inputs = unpadded(kind)
    expected = logits(ours, inputs)
    ours.save_pretrained(tmp_path)
    theirs = peft.PeftModel.from_pretrained(build(kind), tmp_path).eval()
    torch.testing.assert_close(peft_logits(theirs, kind, inputs), expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(("kind", "cls", "kwargs", "save"), INTEROP)
def test_peft_checkpoint_loads_in_peftkit(kind, cls, kwargs, save, tmp_path):
    skip_where_peft_cannot(kind, cls)
    config = getattr(peft, PEFT_NAMES.get(cls, cls))(task_type=TASKS[kind], modules_to_save=save, **kwargs)
    theirs = peft.get_peft_model(build(kind), config)
    train_steps(theirs, make_inputs(kind))
    theirs.eval()
    inputs = unpadded(kind)
    expected = peft_logits(theirs, kind, inputs)
    theirs.save_pretrained(tmp_path)
    ours = peftkit.PeftModel.from_pretrained(build(kind), tmp_path)
    torch.testing.assert_close(logits(ours, inputs), expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(("kind", "cls", "kwargs", "save"), INTEROP)
def test_one_seed_gives_peft_and_peftkit_the_same_start(kind, cls, kwargs, save):
    """Random draws in peft's order (embedding, then encoder head): side-by-side runs start equal."""
    skip_where_peft_cannot(kind, cls)
    base_ours, base_theirs = build(kind), build(kind)
    torch.manual_seed(0)
    ours = peftkit.get_peft_model(
        base_ours, getattr(peftkit, cls)(task_type=TASKS[kind], modules_to_save=save, **kwargs)
    )
    torch.manual_seed(0)
    config = getattr(peft, PEFT_NAMES.get(cls, cls))(task_type=TASKS[kind], modules_to_save=save, **kwargs)
    theirs = peft.get_peft_model(base_theirs, config)
    inputs = unpadded(kind)
    torch.testing.assert_close(
        logits(ours, inputs), peft_logits(theirs.eval(), kind, inputs), atol=1e-5, rtol=1e-4
    )


@pytest.mark.parametrize("kind", ["llama", "bert"])
def test_saved_task_type_is_read_from_the_model(kind, tmp_path):
    """Without task_type peft would run the bare base; peftkit writes the model's task."""
    save = ["classifier"] if kind == "bert" else None
    ours = peftkit.get_peft_model(build(kind), PromptTuningConfig(num_virtual_tokens=2, modules_to_save=save))
    ours.save_pretrained(tmp_path)
    theirs = peft.PeftModel.from_pretrained(build(kind), tmp_path).eval()
    inputs = unpadded(kind)
    torch.testing.assert_close(peft_logits(theirs, kind, inputs), logits(ours, inputs), atol=1e-5, rtol=1e-4)


def test_p_tuning_v2_saves_as_peft_prefix_tuning(tmp_path):
    config = PTuningV2Config(num_virtual_tokens=3, modules_to_save=["classifier"], task_type="SEQ_CLS")
    ours = peftkit.get_peft_model(build("bert"), config)
    train_steps(ours, make_inputs("bert"))
    inputs = unpadded("bert")
    ours.save_pretrained(tmp_path)
    assert ckpt.read_config(tmp_path)["peft_type"] == "PREFIX_TUNING"
    again = peftkit.PeftModel.from_pretrained(build("bert"), tmp_path)
    assert isinstance(again.peft_config["default"], PTuningV2Config)
    torch.testing.assert_close(logits(again, inputs), logits(ours, inputs), atol=1e-6, rtol=1e-5)
    skip_where_peft_cannot("bert", "PTuningV2Config")
    theirs = peft.PeftModel.from_pretrained(build("bert"), tmp_path).eval()
    torch.testing.assert_close(logits(theirs, inputs), logits(ours, inputs), atol=1e-5, rtol=1e-4)


# ---- method details ---------------------------------------------------------------------------------
def test_eject_bakes_the_prefix_mlp_in():
    model = peftkit.get_peft_model(
        build("llama"),
        PrefixTuningConfig(num_virtual_tokens=3, prefix_projection=True, encoder_hidden_size=8),
    )
    inputs = make_inputs("llama")
    before = logits(model, inputs)
    n_before = model.parameter_report().trainable
    eject(model)
    torch.testing.assert_close(logits(model, inputs), before, atol=ATOL, rtol=1e-4)
    assert (
        model.parameter_report().trainable == 3 * 2 * 2 * 2 * 8 < n_before
    )  # V x layers x (k, v) x kv_heads x hd
    assert model.peft_config["default"].prefix_projection is False
    with pytest.raises(AdapterError, match="not a prefix"):
        eject(peftkit.get_peft_model(build("llama"), PromptTuningConfig(num_virtual_tokens=2)))


class WordTokenizer:
    """Whitespace tokenizer over a fixed vocabulary, enough for templates."""

    mask_token_id = 4

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
        return {"input_ids": [10 + (sum(map(ord, w)) % 80) for w in text.split()]}


def test_p_tuning_template_places_virtual_tokens():
    tok, placeholder = WordTokenizer(), 5
    ids = render_template(tok, "[P][P] {text} [P] It was {mask} .", placeholder, text="a fine film")
    assert ids.count(placeholder) == 3 and ids[:2] == [5, 5] and tok.mask_token_id in ids
    model = peftkit.get_peft_model(
        build("llama"),
        PTuningConfig(num_virtual_tokens=3, encoder_hidden_size=8, placeholder_token_id=placeholder),
    )
    batch = torch.tensor([ids])
    out = logits(model, {"input_ids": batch})
    assert out.shape[1] == len(ids)  # nothing prepended: the virtual tokens sit in the template
    virtual = model.prompt_encoder["default"].virtual_embeddings()  # (3, d)
    embeds = model.get_input_embeddings()(batch)
    embeds[0, batch[0] == placeholder] = virtual
    with model.disable_adapter():
        expected = logits(model, {"inputs_embeds": embeds})
    torch.testing.assert_close(out, expected, atol=ATOL, rtol=1e-4)
    with pytest.raises(AdapterError, match="placeholder"):
        logits(model, {"input_ids": batch[:, 2:]})
    with pytest.raises(ConfigError, match="unknown"):
        render_template(tok, "{unknown} [P]", placeholder, text="x")


def test_p_tuning_v2_shares_one_prompt_set_across_tasks():
    model = peftkit.get_peft_model(
        build("bert"), PTuningV2Config(num_virtual_tokens=3, modules_to_save=["classifier"]), "task_a"
    )
    model.add_adapter(
        "task_b",
        PTuningV2Config(num_virtual_tokens=3, modules_to_save=["classifier"], share_prompts_with="task_a"),
    )
    a, b = model.prompt_encoder["task_a"], model.prompt_encoder["task_b"]
    assert a.embedding.weight is b.embedding.weight
    model.set_adapter(["task_a", "task_b"])
    prompt_params = sum(p.numel() for p in a.parameters())
    heads = sum(p.numel() for n, p in model.named_parameters() if "classifier" in n and p.requires_grad)
    assert model.parameter_report().trainable == prompt_params + heads  # the prompt counted once
    inputs = make_inputs("bert", batch=4)
    train_steps_rows(model, inputs, ["task_a", "task_b", "task_a", "task_b"])
    with pytest.raises(AdapterError, match="share_prompts_with"):
        model.add_adapter("c", PTuningV2Config(num_virtual_tokens=2, share_prompts_with="task_a"))


def train_steps_rows(model, inputs, rows, steps=2):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    before = model.prompt_encoder["task_a"].embedding.weight.detach().clone()
    for _ in range(steps):
        opt.zero_grad()
        model(**inputs, adapter_names=rows).logits.pow(2).mean().backward()
        opt.step()
    assert not torch.equal(before, model.prompt_encoder["task_a"].embedding.weight)


def test_prompt_init_from_text_and_vocab(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(96)}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=raw).save_pretrained(tmp_path)
    base = build("llama")
    config = PromptTuningConfig(
        num_virtual_tokens=5,
        prompt_tuning_init="TEXT",
        prompt_tuning_init_text="w7 w8",
        tokenizer_name_or_path=str(tmp_path),
    )
    model = peftkit.get_peft_model(base, config)
    words = model.get_input_embeddings().weight
    expected = words[torch.tensor([7, 8, 7, 8, 7])]
    torch.testing.assert_close(model.prompt_encoder["default"].embedding.weight, expected)
    with pytest.raises(ConfigError, match="prompt_tuning_init_text"):
        PromptTuningConfig(prompt_tuning_init="TEXT")


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_prefix_init_from_real_activations_equals_prepending_those_tokens(kind):
    """``prefix_init="SAMPLE_VOCAB"``: the prefix is the frozen model's own keys/values of random
    tokens X, so the prefixed model on Y is exactly the base model on [X; Y] (causal, no padding)."""
    V = 4
    base = build(kind)
    vocab = base.get_input_embeddings().weight.shape[0]
    X = torch.randint(0, vocab, (1, V), generator=torch.Generator().manual_seed(0))  # the init's seed
    Y = torch.randint(3, vocab, (2, 5), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = logits(base, {"input_ids": torch.cat([X.expand(2, V), Y], dim=1)})[:, V:]
    config = PrefixTuningConfig(num_virtual_tokens=V, prefix_init="SAMPLE_VOCAB")
    model = peftkit.get_peft_model(build(kind), config)
    with torch.no_grad():
        got = logits(model, {"input_ids": Y, "attention_mask": torch.ones_like(Y)})
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
    with pytest.raises(ConfigError, match="prefix_init"):
        PrefixTuningConfig(prefix_init="SAMPLE_VOCAB", prefix_projection=True)
    with pytest.raises(ConfigError, match="prefix_init"):
        PTuningV2Config(prefix_init="TEXT")


def test_bad_configs_fail_clearly():
    with pytest.raises(ConfigError, match="num_virtual_tokens"):
        PromptTuningConfig(num_virtual_tokens=0)
    with pytest.raises(ConfigError, match="target_modules"):
        PrefixTuningConfig(target_modules=["q_proj"])
    with pytest.raises(ConfigError, match="encoder_reparameterization_type"):
        PTuningConfig(encoder_reparameterization_type="GRU")
    with pytest.raises(ConfigError, match="prefix_init"):  # it reads a decoder-only model's cache
        peftkit.get_peft_model(
            build("t5"), PrefixTuningConfig(num_virtual_tokens=2, prefix_init="SAMPLE_VOCAB")
        )
    with pytest.raises(TargetError, match="transformers"):
        peftkit.get_peft_model(build("mlp"), PromptTuningConfig(num_virtual_tokens=2))
    model = peftkit.get_peft_model(build("llama"), PromptTuningConfig(num_virtual_tokens=2))
    with pytest.raises(AdapterError, match="cannot be merged"):
        model.merge_adapter()
    model.add_adapter("other", PrefixTuningConfig(num_virtual_tokens=2))
    model.set_adapter(["default", "other"])
    with pytest.raises(AdapterError, match="activate one"):
        logits(model, make_inputs("llama"))


@pytest.mark.parametrize("options", [{"do_sample": False}, {"num_beams": 3}], ids=["greedy", "beam"])
def test_decoding_engine_with_mixed_rows(options):
    """peftkit's decoding engine: mixed rows equal single-row runs; greedy equals the hand loop."""
    decoding = pytest.importorskip("peftkit.decoding")
    model = mixed_model("llama")
    rows = ["prefix", "prompt", BASE_ROW, "lora", "ptune"]
    ids, mask = pad(make_inputs("llama", batch=5, seq=6)["input_ids"], [6, 4, 6, 3, 5], "left")
    with torch.no_grad():
        mixed = decoding.generate(model, ids, mask, adapter_names=rows, max_new_tokens=4, **options).sequences
        for i, name in enumerate(rows):
            single = decoding.generate(
                model, ids[i : i + 1], mask[i : i + 1], adapter_names=[name], max_new_tokens=4, **options
            ).sequences
            assert torch.equal(single[0], mixed[i]), name
        if "num_beams" not in options:
            assert torch.equal(greedy(model, ids, mask, steps=4, rows=rows)[0], mixed)


@pytest.mark.parametrize(
    "config",
    [
        PTuningV2Config(num_virtual_tokens=3, modules_to_save=["classifier"]),
        PromptTuningConfig(num_virtual_tokens=2),
    ],
    ids=["p-tuning-v2", "prompt"],
)
def test_token_classification_logits_line_up_with_tokens(config):
    import transformers

    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=64, num_labels=5,
    )  # fmt: skip
    model = peftkit.get_peft_model(transformers.BertForTokenClassification(cfg).eval(), config)
    inputs = make_inputs("bert", batch=3, seq=6)
    labels = torch.randint(0, 5, (3, 6)).masked_fill(inputs["attention_mask"] == 0, -100)
    out = model(**inputs, labels=labels)
    assert out.logits.shape == (3, 6, 5)
    loss = torch.nn.functional.cross_entropy(
        out.logits[inputs["attention_mask"].bool()], labels[inputs["attention_mask"].bool()]
    )
    torch.testing.assert_close(out.loss, loss, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("method", sorted(DECODER_CONFIGS))
def test_outputs_change_only_through_the_virtual_tokens(method):
    """Identity at init does not apply here; instead: with every virtual slot masked out, the model
    computes exactly the base model (Llama's rotary positions make the shift invisible)."""
    from peftkit.virtual import transform_inputs

    base = build("llama")
    inputs = make_inputs("llama")
    expected = logits(base, inputs)
    model = peftkit.get_peft_model(build("llama"), DECODER_CONFIGS[method]())
    rows = [model.prompt_encoder["default"]] * inputs["input_ids"].shape[0]
    done = transform_inputs(model.get_base_model(), dict(inputs), rows)
    virtual = done.kwargs["attention_mask"].shape[1] - inputs["input_ids"].shape[1]
    assert virtual == model.prompt_encoder["default"].num_virtual_tokens
    done.kwargs["attention_mask"][:, :virtual] = 0
    with torch.no_grad():
        out = model.get_base_model()(**done.kwargs).logits[:, -inputs["input_ids"].shape[1] :]
    real = inputs["attention_mask"].bool()
    torch.testing.assert_close(out[real], expected[real], atol=ATOL, rtol=1e-4)
    assert not torch.allclose(logits(model, inputs)[real], expected[real], atol=1e-3)


@pytest.mark.parametrize("cached", [False, True])
def test_logits_to_keep_returns_the_last_real_positions(cached):
    model = mixed_model("llama")
    rows = ["prompt", "ptune", BASE_ROW, "prefix"]  # prompt lengths 3, 4, 0, 0: packed without a cache
    ids, mask = pad(make_inputs("llama", batch=4, seq=6)["input_ids"], [6, 4, 5, 6], "left")
    kw = {cache_argument(model): DynamicCache(), "use_cache": True} if cached else {}
    full = model(input_ids=ids, attention_mask=mask, adapter_names=rows).logits
    last = model(input_ids=ids, attention_mask=mask, adapter_names=rows, logits_to_keep=1, **kw).logits
    torch.testing.assert_close(last, full[:, -1:], atol=ATOL, rtol=1e-4)
