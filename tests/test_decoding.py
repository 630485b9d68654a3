"""The decoding engine: parity with transformers' generate, batching, cache, hooks, stopping."""

from __future__ import annotations

import pytest
import torch
from conftest import VOCAB, build
from test_contract import perturb
from tiny_tokenizer import tiny_tokenizer

from peftkit import BASE_ROW, ConfigError, LoraConfig, get_peft_model
from peftkit.decoding import (
    CacheUnusedWarning,
    DecodingConfig,
    ModelLogitsHook,
    TextStreamer,
    build_mask,
    generate,
    to_additive,
)
from peftkit.decoding.contrastive import choose, degeneration_penalty

GEN_KINDS = ["llama", "gpt2", "t5"]


def model_of(kind: str, seed: int = 0):
    """A tiny model with peaked next-token distributions: a random model's are nearly uniform, so
    float noise (cached vs recomputed, batched vs single) would flip near-tied choices."""
    model = build(kind, seed)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(6.0)
    return model


def prompts(batch: int = 3, length: int = 6, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (batch, length), generator=g)


def eos_ids(n: int = 12, seed: int = 0) -> list[int]:
    """Many end ids, so that beams really finish at different lengths."""
    return (torch.randperm(VOCAB - 3, generator=torch.Generator().manual_seed(seed))[:n] + 3).tolist()


def hf_kwargs(strategy: str, **kw) -> dict:
    """The transformers generate() keywords for the same settings (no sampling defaults leaking in)."""
    out = {"do_sample": strategy == "sample", "top_k": None, "top_p": None, "temperature": None}
    out.update(kw)
    return out


# ---- parity with transformers ---------------------------------------------------------------------
PARITY = [
    ("greedy", {}),
    ("greedy", {"repetition_penalty": 1.5, "no_repeat_ngram_size": 2}),
    ("greedy", {"min_new_tokens": 4}),
    ("beam", {"num_beams": 3}),
    ("beam", {"num_beams": 4, "length_penalty": 0.5, "early_stopping": True, "num_return_sequences": 2}),
    ("beam", {"num_beams": 3, "length_penalty": 2.0, "early_stopping": "never"}),
    ("beam", {"num_beams": 2, "length_penalty": -1.0, "repetition_penalty": 1.3}),
    ("sample", {"temperature": 0.7, "top_k": 20, "top_p": 0.9}),
    ("sample", {"temperature": 1.3, "top_p": 0.5}),
]


@pytest.mark.parametrize("kind", GEN_KINDS)
@pytest.mark.parametrize(("strategy", "kw"), PARITY, ids=[f"{s}-{i}" for i, (s, _) in enumerate(PARITY)])
def test_token_equal_to_transformers_generate(kind, strategy, kw):
    model = model_of(kind)
    ids, eos = prompts(), eos_ids()
    common = {"max_new_tokens": 10, "eos_token_id": eos, "pad_token_id": 1}
    ours = generate(model, ids, strategy=strategy, seed=5, **common, **kw).sequences
    torch.manual_seed(5)  # transformers samples from the global generator; ours from a seeded private one
    ref = model.generate(ids, attention_mask=torch.ones_like(ids), **common, **hf_kwargs(strategy, **kw))
    assert torch.equal(ours, ref)


def test_beams_really_end_early():
    """The parity cases exercise finished hypotheses: some returned beams end before the budget."""
    eos = torch.tensor(eos_ids())
    kw = {"strategy": "beam", "num_beams": 3, "max_new_tokens": 10, "eos_token_id": eos.tolist()}
    out = generate(model_of("llama"), prompts(), **kw)
    assert torch.isin(out.new_tokens, eos).any(dim=1).any()


# ---- batching, cache, reproducibility -------------------------------------------------------------
@pytest.mark.parametrize("kind", ["llama", "gpt2"])
@pytest.mark.parametrize(
    "options",
    [
        {"strategy": "greedy"},
        {"strategy": "beam", "num_beams": 3, "length_penalty": 0.8},
        {"strategy": "contrastive", "top_k": 3, "penalty_alpha": 0.6},
        {"strategy": "greedy", "repetition_penalty": 1.4, "no_repeat_ngram_size": 2},
    ],
    ids=["greedy", "beam", "contrastive", "penalties"],
)
def test_left_padded_batch_equals_one_by_one(kind, options):
    model = model_of(kind)
    rows = [prompts(1, n, seed=n)[0] for n in (3, 7, 5)]
    width = max(len(r) for r in rows)
    ids = torch.stack([torch.cat([torch.zeros(width - len(r), dtype=torch.long), r]) for r in rows])
    mask = torch.stack([torch.cat([torch.zeros(width - len(r)), torch.ones(len(r))]) for r in rows]).long()
    common = {"max_new_tokens": 8, "eos_token_id": eos_ids(4), "pad_token_id": 1, **options}
    batched = generate(model, ids, mask, **common).new_tokens
    for i, row in enumerate(rows):
        single = generate(model, row[None], **common).new_tokens[0]
        assert torch.equal(batched[i, : len(single)], single), f"row {i}"
        assert (batched[i, len(single) :] == 1).all()


class NoCache(torch.nn.Module):
    """The same model with its cache thrown away: the engine must fall back to full recomputation."""

    def __init__(self, model):
        super().__init__()
        self.inner = model
        self.config = model.config

    def forward(
        self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, use_cache=None
    ):
        out = self.inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)
        out.past_key_values = out.cache = None
        return out


@pytest.mark.parametrize("strategy", ["greedy", "beam"])
def test_kv_cache_matches_recomputing_the_sequence(strategy):
    model = model_of("llama")
    ids = prompts()
    kw = {"strategy": strategy, "num_beams": 3 if strategy == "beam" else 1, "max_new_tokens": 8}
    kw.update(eos_token_id=eos_ids(4), pad_token_id=1)  # NoCache has no generation_config to read them from
    assert torch.equal(generate(model, ids, **kw).sequences, generate(NoCache(model), ids, **kw).sequences)


def fed_lengths(model) -> list[int]:
    """Record how many (decoder) tokens per row each forward call of ``model`` is fed."""
    seen: list[int] = []

    def hook(module, args, kwargs):
        ids = kwargs.get("decoder_input_ids", kwargs.get("input_ids"))
        seen.append(ids.shape[1] if ids is not None else kwargs["inputs_embeds"].shape[1])

    model.register_forward_pre_hook(hook, with_kwargs=True)
    return seen


@pytest.mark.parametrize("kind", GEN_KINDS)
@pytest.mark.parametrize("strategy", ["greedy", "beam", "contrastive"])
def test_every_step_after_the_prompt_feeds_one_token_per_row(kind, strategy, recwarn):
    """The KV cache is really used (transformers renamed its argument from ``past_key_values`` to
    ``cache``; a stepper that misses it re-runs the whole sequence silently)."""
    model = model_of(kind)
    seen = fed_lengths(model)
    extra = {"beam": {"num_beams": 2}, "contrastive": {"penalty_alpha": 0.6, "top_k": 3}}.get(strategy, {})
    out = generate(model, prompts(), strategy=strategy, max_new_tokens=6, min_new_tokens=6, **extra)
    first = 1 if kind == "t5" else prompts().shape[1]  # T5's decoder starts from its start token
    assert out.sequences.shape[1] == first + 6
    later = 6 if strategy == "contrastive" else 5  # contrastive feeds the candidates for every token
    assert seen == [first] + [1] * later
    assert not [w for w in recwarn if issubclass(w.category, CacheUnusedWarning)]


def test_a_model_that_ignores_its_cache_is_re_run_in_full_with_a_warning():
    model = NoCache(model_of("llama"))
    seen = fed_lengths(model.inner)
    with pytest.warns(CacheUnusedWarning, match="did not grow"):
        out = generate(model, prompts(), max_new_tokens=4, min_new_tokens=4, pad_token_id=1, eos_token_id=[2])
    assert seen == [6, 1, 7, 8, 9]  # the first cached step is caught and re-run on the whole sequence
    expected = generate(
        model.inner, prompts(), max_new_tokens=4, min_new_tokens=4, pad_token_id=1, eos_token_id=[2]
    )
    assert torch.equal(out.sequences, expected.sequences)


def test_seeded_sampling_is_reproducible_and_leaves_the_global_generator_alone():
    model = model_of("llama")
    kw = {"strategy": "sample", "temperature": 1.5, "max_new_tokens": 12}
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    a = generate(model, prompts(), seed=7, **kw).sequences
    assert torch.rand(1).item() == before.item()  # our draws came from a private generator
    assert torch.equal(a, generate(model, prompts(), seed=7, **kw).sequences)
    assert not torch.equal(a, generate(model, prompts(), seed=8, **kw).sequences)


def test_sampling_filters_keep_only_allowed_tokens():
    model = model_of("llama")
    ids = prompts(1)
    step0 = model(ids).logits[0, -1]
    top2 = set(step0.topk(2).indices.tolist())
    for seed in range(8):
        first = generate(model, ids, strategy="sample", top_k=2, max_new_tokens=1, seed=seed).new_tokens[0, 0]
        assert int(first) in top2
    tiny_p = generate(model, ids, strategy="sample", top_p=1e-6, max_new_tokens=6, seed=3).sequences
    assert torch.equal(tiny_p, generate(model, ids, max_new_tokens=6).sequences)  # top-p -> 0 is greedy


# ---- contrastive search ---------------------------------------------------------------------------
def test_degeneration_penalty_changes_the_choice():
    """Two candidates: A is likelier (0.6 vs 0.4) but its hidden state repeats the context."""
    context = torch.tensor([[[1.0, 0.0], [1.0, 0.1]]])  # (1, T=2, H=2)
    candidates = torch.tensor([[[2.0, 0.0], [0.0, 1.0]]])  # A parallel to context[0], B nearly orthogonal
    probs = torch.tensor([[0.6, 0.4]])
    penalty = degeneration_penalty(context, torch.tensor([[True, True]]), candidates)
    assert penalty[0].tolist() == pytest.approx([1.0, 0.1 / 1.01**0.5], abs=1e-6)
    assert choose(probs, penalty, alpha=0.0).item() == 0  # greedy: A
    assert choose(probs, penalty, alpha=0.5).item() == 1  # A: 0.3 - 0.5 = -0.2 < B: 0.2 - 0.05
    masked = degeneration_penalty(context, torch.tensor([[True, False]]), candidates)  # padding ignored
    assert masked[0, 1].item() == pytest.approx(0.0, abs=1e-6)


def naive_contrastive(model, ids: torch.Tensor, k: int, alpha: float, steps: int) -> list[int]:
    """Contrastive search by brute force: no cache, every candidate re-run on its whole sequence."""
    seq = ids[0].tolist()
    for _ in range(steps):
        out = model(torch.tensor([seq]), output_hidden_states=True)
        context = out.hidden_states[-1][0]  # (T, H)
        probs, cands = out.logits[0, -1].softmax(-1).topk(k)
        scores = []
        for p, c in zip(probs, cands, strict=True):
            h = model(torch.tensor([seq + [int(c)]]), output_hidden_states=True).hidden_states[-1][0, -1]
            cos = torch.nn.functional.cosine_similarity(context, h[None], dim=-1).max()
            scores.append((1 - alpha) * p - alpha * cos)
        seq.append(int(cands[int(torch.stack(scores).argmax())]))
    return seq


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_contrastive_search_equals_brute_force(kind):
    model = model_of(kind)
    ids = prompts(1, 5, seed=3)
    ours = generate(model, ids, strategy="contrastive", top_k=4, penalty_alpha=0.6, max_new_tokens=8)
    assert ours.sequences[0].tolist() == naive_contrastive(model, ids, 4, 0.6, 8)
    greedy = generate(model, ids, max_new_tokens=8).sequences
    plain = generate(model, ids, strategy="contrastive", top_k=4, penalty_alpha=0.0, max_new_tokens=8)
    assert torch.equal(plain.sequences, greedy)


def test_contrastive_search_on_an_encoder_decoder():
    model = model_of("t5")
    out = generate(model, prompts(2), strategy="contrastive", top_k=3, penalty_alpha=0.5, max_new_tokens=6)
    assert out.sequences.shape == (2, 7)


# ---- adapters -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "options",
    [{"strategy": "contrastive", "top_k": 3}, {"strategy": "beam", "num_beams": 2}],
    ids=["contrastive", "beam"],
)
def test_mixed_adapter_rows_equal_single_runs(options):
    model = get_peft_model(model_of("llama"), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    model.add_adapter("b", LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    perturb(model, "default", seed=1)
    perturb(model, "b", seed=2)
    ids, rows = prompts(), ["b", BASE_ROW, "default"]
    mixed = model.generate(ids, adapter_names=rows, max_new_tokens=6, **options)
    for i, row in enumerate(rows):
        single = model.generate(ids[i : i + 1], adapter_names=[row], max_new_tokens=6, **options)
        assert torch.equal(mixed[i, : single.shape[1]], single[0]), f"row {i} ({row})"


# ---- hooks, streaming, stopping -------------------------------------------------------------------
@pytest.mark.parametrize(
    "options",
    [{"strategy": "greedy"}, {"strategy": "beam", "num_beams": 3}, {"strategy": "contrastive", "top_k": 3}],
    ids=["greedy", "beam", "contrastive"],
)
def test_model_logits_hook_steps_other_models_in_lock_step(options):
    """Decoding A with a hook that returns B's logits must pick B's tokens, steps and beams included."""
    a, b = model_of("llama", seed=0), model_of("llama", seed=1)
    ids = prompts()
    take_b = ModelLogitsHook([b], lambda own, others: others[0])
    kw = {"max_new_tokens": 7, "eos_token_id": eos_ids(6), "pad_token_id": 1}
    if options["strategy"] == "contrastive":  # without the penalty it must pick B's greedy tokens
        ours = generate(a, ids, logits_hook=take_b, penalty_alpha=0.0, **kw, **options).sequences
        assert torch.equal(ours, generate(b, ids, **kw).sequences)
        return
    assert torch.equal(
        generate(a, ids, logits_hook=take_b, **kw, **options).sequences,
        generate(b, ids, **kw, **options).sequences,
    )


def test_logits_hook_vocabulary_mismatch_is_a_clear_error():
    from transformers import LlamaConfig, LlamaForCausalLM

    small = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=50,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
        )
    ).eval()
    hook = ModelLogitsHook([small], lambda own, others: own + others[0])
    with pytest.raises(ConfigError, match="same vocabulary"):
        generate(model_of("llama"), prompts(1, 4) % 50, logits_hook=hook, max_new_tokens=2)


def scripted(words: list[str], tok):
    """A hook that makes the model say ``words``, one per step."""
    ids = tok.convert_tokens_to_ids(words)

    def hook(step, sequences, logits):
        forced = torch.full_like(logits, -1e4)
        forced[:, ids[min(step, len(ids) - 1)]] = 0.0
        return forced

    return hook


def test_stop_strings_streaming_and_eos():
    tok = tiny_tokenizer()
    model = model_of("llama")
    hook = scripted(["the", "movie", "was", "great", "fun", "<eos>"], tok)
    seen: list[str] = []
    streamer = TextStreamer(tok, write=seen.append)
    out = generate(
        model,
        prompts(1, 4),
        logits_hook=hook,
        stop_strings=["was great"],
        tokenizer=tok,
        streamer=streamer,
        max_new_tokens=10,
    )
    assert tok.decode(out.new_tokens[0]) == "the movie was great"
    assert "".join(seen) == "the movie was great"
    out = generate(model, prompts(1, 4), logits_hook=hook, eos_token_id=tok.eos_token_id, max_new_tokens=10)
    assert tok.decode(out.new_tokens[0]) == "the movie was great fun <eos>"


def test_streamer_sees_every_token():
    model, ids = model_of("gpt2"), prompts(2)
    got: list[torch.Tensor] = []
    out = generate(model, ids, max_new_tokens=5, streamer=lambda tokens, finished: got.append(tokens.clone()))
    assert torch.equal(torch.stack(got, dim=1), out.new_tokens)


# ---- bad input ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"strategy": "nucleus"}, "strategy"),
        ({"strategy": "sample", "temperature": 0}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"num_beams": 4}, "num_beams"),
        ({"strategy": "beam", "num_beams": 2, "num_return_sequences": 3}, "num_return_sequences"),
        ({"strategy": "contrastive", "top_k": 1}, "top_k"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"early_stopping": "sometimes"}, "early_stopping"),
        ({"stop_strings": [""]}, "stop_strings"),
    ],
)
def test_bad_settings_name_their_field(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        DecodingConfig(**kwargs)


def test_bad_calls_are_clear_errors():
    model, ids = model_of("llama"), prompts(2)
    right_padded = torch.ones_like(ids)
    right_padded[0, -1] = 0
    with pytest.raises(ConfigError, match="padding_side = 'left'"):
        generate(model, ids, right_padded)
    with pytest.raises(ConfigError, match="cannot stream"):
        generate(model, ids, strategy="beam", num_beams=2, streamer=lambda *a: None)
    with pytest.raises(ConfigError, match="need a tokenizer"):
        generate(model, ids, stop_strings=["x"])
    with pytest.raises(ConfigError, match="unknown decoding option"):
        generate(model, ids, typical_p=0.9)


# ---- masks ----------------------------------------------------------------------------------------
def test_masks():
    causal = build_mask("causal", 4)[0, 0]
    assert torch.equal(causal, torch.ones(4, 4, dtype=torch.bool).tril())
    assert build_mask("bidirectional", 3).all()
    prefix = build_mask("prefix", 5, prefix_length=2)[0, 0]
    assert prefix[:, :2].all() and torch.equal(prefix[2:, 2:], torch.ones(3, 3, dtype=torch.bool).tril())
    assert not prefix[0, 2]  # after the prefix, still causal
    cached = build_mask("causal", 1, key_length=6)  # one new query after 5 cached keys sees all
    assert cached.all()
    padded = build_mask("causal", 3, key_padding=torch.tensor([[0, 1, 1], [1, 1, 1]]))
    assert padded.shape == (2, 1, 3, 3) and not padded[0, 0, :, 0].any() and padded[1, 0, 2].all()
    additive = to_additive(build_mask("causal", 2))
    assert additive[0, 0, 0, 1] == torch.finfo(torch.float32).min and additive[0, 0, 1, 0] == 0
    with pytest.raises(ConfigError, match="kind"):
        build_mask("sideways", 2)
    with pytest.raises(ConfigError, match="prefix_length"):
        build_mask("prefix", 2, prefix_length=5)


def test_prefix_mask_in_a_real_model_makes_the_prefix_bidirectional():
    """Fed to Llama, a prefix-LM mask over 3 of 6 tokens gives the prefix positions exactly what a
    bidirectional pass over the prefix alone gives them, and stays causal after the prefix."""
    model = model_of("llama")
    ids = prompts(1, 6)
    prefix = model(ids, attention_mask=to_additive(build_mask("prefix", 6, prefix_length=3))).logits
    alone = model(ids[:, :3], attention_mask=to_additive(build_mask("bidirectional", 3))).logits
    causal = model(ids).logits
    torch.testing.assert_close(prefix[:, :3], alone, atol=1e-5, rtol=1e-5)
    assert (prefix[:, :2] - causal[:, :2]).abs().max() > 1e-3  # the prefix now sees ahead
