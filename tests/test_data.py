"""peftkit.data: reading files, encoding the four task types, collating, cloze scoring."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import torch
import transformers

from peftkit.data import (
    Collator,
    DataError,
    TaskSpec,
    batches,
    cloze_logits,
    cloze_loss,
    encode,
    fit_prompt_response,
    load_hub_dataset,
    read_records,
    sft_prompt,
    verbalizer_token_ids,
)

sys.path.insert(0, str(Path(__file__).parent))
from conftest import tiny_llama  # noqa: E402
from tiny_tokenizer import tiny_tokenizer  # noqa: E402

SHARED_DATA = Path(__file__).parents[2] / "shared/data"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --- readers -------------------------------------------------------------------------------------


def test_read_jsonl_renames_columns(tmp_path):
    path = write(
        tmp_path, "d.jsonl", '{"sentence": "a great movie", "label": 1}\n{"sentence": "bad", "label": 0}\n'
    )
    result = read_records(path, columns={"sentence": "text"})
    assert result.records == [{"text": "a great movie", "label": 1}, {"text": "bad", "label": 0}]
    assert result.problems == [] and result.path == path


def test_read_csv_quoted_fields(tmp_path):
    text = 'mr,ref\n"name[Alimentum], area[city centre]","There is a place, Alimentum, in the ""centre""."\n'
    result = read_records(write(tmp_path, "e2e.csv", text), columns={"mr": "source", "ref": "target"})
    assert result.records == [
        {
            "source": "name[Alimentum], area[city centre]",
            "target": 'There is a place, Alimentum, in the "centre".',
        }
    ]


def test_read_tsv_keeps_quotes(tmp_path):
    text = 'sentence\tlabel\n"it \'s a charming and often affecting journey . \t1\nso " bad\t0\n'
    result = read_records(write(tmp_path, "sst.tsv", text), columns={"sentence": "text"})
    assert [r["text"] for r in result.records] == [
        "\"it 's a charming and often affecting journey . ",
        'so " bad',
    ]
    assert [r["label"] for r in result.records] == ["1", "0"]


def test_format_override_and_unknown(tmp_path):
    path = write(tmp_path, "d.txt", "text;label\nhello;1\n")
    assert read_records(path, format="csv", delimiter=";").records == [{"text": "hello", "label": "1"}]
    with pytest.raises(DataError, match=r"allowed formats: \['jsonl', 'csv', 'tsv'\]"):
        read_records(path)


def test_jsonl_problems_have_line_numbers(tmp_path):
    lines = [
        '{"text": "fine", "label": 1}',  # 1
        "",  # 2 empty row
        '{"text": "broken", ',  # 3 bad JSON
        '{"label": 0}',  # 4 missing text
        '{"text": "  ", "label": 0}',  # 5 empty text
        "[1, 2]",  # 6 not an object
        '{"text": "ok", "label": 0}',  # 7
    ]
    result = read_records(write(tmp_path, "d.jsonl", "\n".join(lines) + "\n"), required=["text", "label"])
    assert [r["text"] for r in result.records] == ["fine", "ok"]
    assert [line for line, _ in result.problems] == [2, 3, 4, 5, 6]
    reasons = dict(result.problems)
    assert reasons[2] == "empty row" and "invalid JSON" in reasons[3]
    assert reasons[4] == "missing field 'text'" and reasons[5] == "empty field 'text'"
    assert "skipped 5 bad rows (lines 2, 3, 4, 5, 6" in result.summary()


def test_csv_problems_have_line_numbers(tmp_path):
    text = 'text,label\ngood one,1\n\nonly one field\n"multi\nline",0\n,1\ntoo,many,fields\nlast,0\n'
    result = read_records(write(tmp_path, "d.csv", text), required=["text", "label"])
    assert [r["text"] for r in result.records] == ["good one", "multi\nline", "last"]
    # header = line 1; the quoted field spans lines 5-6, so the next row is line 7
    assert result.problems == [
        (3, "empty row"),
        (4, "expected 2 columns, got 1"),
        (7, "empty field 'text'"),
        (8, "expected 2 columns, got 3"),
    ]


def test_summary_lists_first_ten_lines(tmp_path):
    text = "text\n" + "ok\n" + "\n" * 12
    summary = read_records(write(tmp_path, "d.csv", text)).summary()
    assert "skipped 12 bad rows (lines 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, ...;" in summary


def test_strict_raises_naming_lines(tmp_path):
    path = write(tmp_path, "d.jsonl", '{"text": "a"}\nnot json\n{"text": ""}\n')
    assert len(read_records(path, required=["text"]).records) == 1
    with pytest.raises(DataError, match=r"2 bad rows \(line 2: invalid JSON.*line 3: empty field 'text'"):
        read_records(path, required=["text"], strict=True)


def test_every_row_bad_and_missing_file(tmp_path):
    with pytest.raises(DataError, match="every row is bad"):
        read_records(write(tmp_path, "d.jsonl", "nope\n{\n"))
    with pytest.raises(DataError, match="no such file"):
        read_records(tmp_path / "absent.csv")


@pytest.mark.parametrize(
    ("name", "text"),
    [("d.csv", "sentence,label\nhi,1\n"), ("d.jsonl", '{"sentence": "hi", "label": 1}\n')],
)
def test_missing_column_names_present_columns(tmp_path, name, text):
    path = write(tmp_path, name, text)
    with pytest.raises(DataError, match=r"required column 'text' not found; columns present: \[.*'sentence'"):
        read_records(path, required=["label", "text"])
    with pytest.raises(DataError, match=r"column 'review' \(in columns=\) not found"):
        read_records(path, columns={"review": "text"})


# --- hub (error paths only; tests run offline) ---------------------------------------------------


def test_hub_without_datasets_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(DataError, match="pip install datasets"):
        load_hub_dataset("glue", config_name="sst2")


def fake_datasets(error: Exception) -> types.ModuleType:
    def load_dataset(*args, **kwargs):
        raise error

    return types.SimpleNamespace(load_dataset=load_dataset)


def test_hub_offline(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", fake_datasets(FileNotFoundError("not in cache")))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match=r"unreachable, offline mode is set \(HF_HUB_OFFLINE\).*local"):
        load_hub_dataset("glue")


def test_hub_connection_error(monkeypatch):
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setitem(sys.modules, "datasets", fake_datasets(ConnectionError("no route to host")))
    with pytest.raises(DataError, match="hub is unreachable, connection failed"):
        load_hub_dataset("glue")
    monkeypatch.setitem(sys.modules, "datasets", fake_datasets(KeyError("bad split")))
    with pytest.raises(KeyError):  # not a network problem: not hidden
        load_hub_dataset("glue")


# --- TaskSpec ------------------------------------------------------------------------------------

CLOZE = {"template": "{text} It was {mask}.", "verbalizer": {0: "terrible", 1: "great"}}


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"type": "regression"}, "type"),
        ({"type": "sft", "model_kind": "seq2seq"}, "model_kind"),
        ({"type": "sft", "max_length": 0}, "max_length"),
        ({"type": "classification", "labels": ["a", "a"]}, "labels"),
        ({"type": "cloze", "template": "{text} It was", "verbalizer": {0: "bad"}}, "template"),
        ({"type": "cloze", "template": "{mask}: {text}", "verbalizer": {0: "bad"}}, "template"),
        ({"type": "cloze", "template": "{text} {mask}", "verbalizer": {}}, "verbalizer"),
        ({"type": "cloze", **CLOZE, "labels": [0, 1, 2]}, "labels"),
    ],
)
def test_task_spec_checks_fields(kwargs, field):
    with pytest.raises(ValueError, match=f"^{field}: "):
        TaskSpec(**kwargs)


def test_task_spec_allowed_values_in_message():
    with pytest.raises(ValueError, match=r"allowed values: \['classification', 'cloze', 'sft', 'seq2seq'\]"):
        TaskSpec(type="qa")
    assert TaskSpec(type="cloze", model_kind="masked", template="{mask}: {text}", verbalizer={0: "bad"})


# --- sft -----------------------------------------------------------------------------------------


def check_response_only_labels(example: dict, n_prompt: int, response_ids: list[int]) -> None:
    """Token by token: -100 on every prompt position, the input id on every response position."""
    ids, labels = example["input_ids"], example["labels"]
    assert len(labels) == len(ids) == n_prompt + len(response_ids)
    for pos in range(len(ids)):
        expected = -100 if pos < n_prompt else ids[pos]
        assert labels[pos] == expected, pos
    assert ids[n_prompt:] == response_ids


@pytest.mark.parametrize("chat", [False, True])
def test_sft_loss_only_on_response(chat):
    tok = tiny_tokenizer(chat_template=chat, bos=True)
    records = [{"prompt": "what is the capital of france ?", "response": "paris ."}]
    enc = encode(records, tok, TaskSpec(type="sft"))
    prompt_text = sft_prompt(tok, records[0]["prompt"])
    # chat templates write their own markup (no added BOS); a plain prompt gets the BOS
    prompt_ids = tok(prompt_text, add_special_tokens=not chat)["input_ids"]
    if chat:
        assert prompt_text == "<|user|> what is the capital of france ? <eos> <|assistant|> "
        assert tok.convert_ids_to_tokens(prompt_ids)[-1] == "<|assistant|>"
    else:
        assert prompt_text == "what is the capital of france ?\n" and prompt_ids[0] == tok.bos_token_id
    response_ids = tok("paris .", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    check_response_only_labels(enc.examples[0], len(prompt_ids), response_ids)
    assert enc.examples[0]["attention_mask"] == [1] * len(prompt_ids + response_ids)


def test_sft_messages_column_and_system_prompt():
    tok = tiny_tokenizer(chat_template=True)
    chat = [
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "hello ."},
        {"role": "user", "content": "who are you ?"},
        {"role": "assistant", "content": "you are a helpful assistant"},
    ]
    spec = TaskSpec(type="sft", messages_column="messages", system_prompt="you are helpful")
    enc = encode([{"messages": chat}], tok, spec)
    prompt = sft_prompt(tok, chat[:-1], system_prompt="you are helpful")
    assert prompt.startswith("<|system|> you are helpful <eos> <|user|> hello <eos> <|assistant|> hello .")
    assert prompt.endswith("<|user|> who are you ? <eos> <|assistant|> ")
    prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    response_ids = tok("you are a helpful assistant", add_special_tokens=False)["input_ids"] + [
        tok.eos_token_id
    ]
    check_response_only_labels(enc.examples[0], len(prompt_ids), response_ids)


def test_sft_plain_messages_and_dropped_rows():
    tok = tiny_tokenizer()
    chat = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "world"}]
    assert sft_prompt(tok, chat[:1], system_prompt="you are helpful") == "you are helpful\nhello\n"
    records = [{"m": chat}, {"m": chat[:1]}, {"m": [*chat[:1], {"role": "assistant", "content": " "}]}]
    enc = encode(records, tok, TaskSpec(type="sft", messages_column="m"))
    assert len(enc.examples) == 1
    assert enc.stats.dropped == {"chat does not end with an assistant message": 1, "empty response": 1}
    with pytest.raises(DataError, match="row 0: no value for column 'prompt'"):
        encode([{"question": "hi", "response": "hello"}], tok, TaskSpec(type="sft"))


def test_sft_truncation_cuts_prompt_left_then_response_end():
    tok = tiny_tokenizer()
    prompt = "the cat sat on the mat and the dog sat on the house"  # 13 tokens + "\n" (nothing)
    response = "a red cat"  # 3 tokens + eos
    spec = TaskSpec(type="sft", max_length=10)
    enc = encode(
        [{"prompt": prompt, "response": response}, {"prompt": "hello", "response": "world"}], tok, spec
    )
    long, short = enc.examples
    assert enc.stats.truncated == 1 and len(long["input_ids"]) == 10
    prompt_ids = tok(prompt)["input_ids"]
    response_ids = tok(response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert long["input_ids"] == prompt_ids[-6:] + response_ids  # prompt cut from the left
    check_response_only_labels(long, 6, response_ids)
    assert short["labels"] == [-100, tok.convert_tokens_to_ids("world"), tok.eos_token_id]
    # a response longer than the budget keeps half the budget for the prompt, then is cut at its end
    assert fit_prompt_response([1] * 8, [2] * 20, 10) == ([1] * 5, [2] * 5, True)
    assert fit_prompt_response([1] * 3, [2] * 20, 10) == ([1] * 3, [2] * 7, True)


# --- cloze ---------------------------------------------------------------------------------------

CLOZE_RECORDS = [
    {"text": "a great film", "label": 1},
    {"text": "the plot was dull and the acting was awful", "label": "0"},
]


def tiny_llama_lm(vocab: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return tiny_llama(vocab_size=vocab).eval()


def test_cloze_causal_positions_and_verbalizer():
    tok = tiny_tokenizer(bos=True)
    spec = TaskSpec(type="cloze", **CLOZE)
    enc = encode(CLOZE_RECORDS, tok, spec)
    assert enc.labels == [0, 1] and [e["labels"] for e in enc.examples] == [1, 0]
    first = enc.examples[0]
    # the prompt is the template up to {mask}; "." after it is dropped
    assert tok.convert_ids_to_tokens(first["input_ids"]) == ["<bos>", "a", "great", "film", "it", "was"]
    assert first["score_position"] == 5 and "mask_position" not in first
    assert verbalizer_token_ids(tok, spec) == tok.convert_tokens_to_ids(["terrible", "great"])


def test_cloze_shared_first_token_rejected():
    spec = TaskSpec(
        type="cloze", template="{text} {mask}", verbalizer={"pos": "great fun", "neg": "great bore"}
    )
    with pytest.raises(ValueError, match="start with the same token"):
        verbalizer_token_ids(tiny_tokenizer(), spec)
    with pytest.raises(ValueError, match="start with the same token"):
        encode([{"text": "a", "label": "pos"}], tiny_tokenizer(), spec)


def test_cloze_truncates_text_not_template():
    tok = tiny_tokenizer()
    spec = TaskSpec(type="cloze", max_length=5, **CLOZE)
    enc = encode(CLOZE_RECORDS, tok, spec)
    assert enc.stats.truncated == 1
    assert tok.convert_ids_to_tokens(enc.examples[1]["input_ids"]) == ["the", "plot", "was", "it", "was"]
    assert encode(CLOZE_RECORDS[:1], tok, TaskSpec(type="cloze", max_length=2, **CLOZE)) is not None
    with pytest.raises(DataError, match="template alone is longer than max_length"):
        encode(CLOZE_RECORDS, tok, TaskSpec(type="cloze", max_length=1, **CLOZE))


@pytest.mark.parametrize("side", ["right", "left"])
def test_cloze_logits_equal_manual_indexing(side):
    tok = tiny_tokenizer(bos=True)
    spec = TaskSpec(type="cloze", **CLOZE)
    enc = encode(CLOZE_RECORDS, tok, spec)
    batch = Collator(tok.pad_token_id, padding_side=side, position_ids=side == "left")(enc.examples)
    short, long = (len(e["input_ids"]) for e in enc.examples)
    expected_positions = [short - 1, long - 1] if side == "right" else [long - 1, long - 1]
    assert batch["score_position"].tolist() == expected_positions
    ids = verbalizer_token_ids(tok, spec)
    model = tiny_llama_lm(len(tok))
    with torch.no_grad():
        got = cloze_logits(model, batch, ids)  # (B, 2)
        full = model(
            **{k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
        ).logits
        alone = [model(input_ids=torch.tensor([e["input_ids"]])).logits[0, -1, ids] for e in enc.examples]
    assert got.shape == (2, 2)
    for b, pos in enumerate(expected_positions):
        torch.testing.assert_close(got[b], full[b, pos, ids])
        torch.testing.assert_close(got[b], alone[b], atol=1e-5, rtol=1e-4)  # padding changes nothing


def test_cloze_loss_trains():
    tok = tiny_tokenizer()
    spec = TaskSpec(type="cloze", **CLOZE)
    batch = Collator(tok.pad_token_id)(encode(CLOZE_RECORDS, tok, spec).examples)
    model = tiny_llama_lm(len(tok)).train()
    loss = cloze_loss(model, batch, verbalizer_token_ids(tok, spec))
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert model.lm_head.weight.grad is not None


def test_cloze_masked_lm():
    tok = tiny_tokenizer(bos=True)
    spec = TaskSpec(type="cloze", model_kind="masked", **CLOZE)
    enc = encode(CLOZE_RECORDS, tok, spec)
    first = enc.examples[0]
    assert tok.convert_ids_to_tokens(first["input_ids"]) == [
        "<bos>",
        "a",
        "great",
        "film",
        "it",
        "was",
        "[MASK]",
        ".",
    ]
    assert first["mask_position"] == first["score_position"] == 6
    batch = Collator(tok.pad_token_id, padding_side="left")(enc.examples)
    assert (batch["input_ids"][torch.arange(2), batch["mask_position"]] == tok.mask_token_id).all()
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4
    )
    model = transformers.BertForMaskedLM(cfg).eval()
    ids = verbalizer_token_ids(tok, spec)
    with torch.no_grad():
        got = cloze_logits(model, batch, ids)
        full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(got, full[torch.arange(2), batch["mask_position"]][:, ids])
    multi = TaskSpec(type="cloze", model_kind="masked", template="{text} {mask}", verbalizer={0: "not good"})
    with pytest.raises(ValueError, match="is 2 tokens"):
        verbalizer_token_ids(tok, multi)


# --- classification and seq2seq ------------------------------------------------------------------


def test_classification_encode_and_bert_forward():
    tok = tiny_tokenizer()
    records = [
        {"text": "a great movie", "label": "pos"},
        {"text": "bad", "label": "neg"},
        {"text": "fine", "label": "mid"},
    ]
    enc = encode(records, tok, TaskSpec(type="classification", max_length=2))
    assert enc.labels == ["mid", "neg", "pos"] and [e["labels"] for e in enc.examples] == [2, 1, 0]
    assert enc.stats.truncated == 1 and enc.stats.max_length == 2 and enc.stats.count == 3
    batch = Collator(tok.pad_token_id)(enc.examples)
    assert batch["labels"].dtype == torch.long and batch["labels"].shape == (3,)
    assert batch["attention_mask"].tolist() == [[1, 1], [1, 0], [1, 0]]
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_labels=3,
    )
    loss = transformers.BertForSequenceClassification(cfg)(**batch).loss
    assert torch.isfinite(loss)


def test_classification_numeric_labels_and_unknown_label():
    tok = tiny_tokenizer()
    records = [{"text": "good", "label": "10"}, {"text": "bad", "label": "2"}]
    assert encode(records, tok, TaskSpec(type="classification")).labels == ["2", "10"]
    spec = TaskSpec(type="classification", labels=[0, 1])
    assert [e["labels"] for e in encode([{"text": "x", "label": "1"}], tok, spec).examples] == [1]
    with pytest.raises(DataError, match=r"row 1: label 'neutral' is not one of \[0, 1\]"):
        encode([{"text": "x", "label": 0}, {"text": "y", "label": "neutral"}], tok, spec)


def test_seq2seq_encode_and_t5_forward():
    tok = tiny_tokenizer()
    records = [
        {"source": "translate to german : the cat", "target": "the cat"},
        {"source": "translate to german : the red house", "target": "the red house and the blue house"},
    ]
    enc = encode(records, tok, TaskSpec(type="seq2seq", max_length=6))
    first, second = enc.examples
    assert first["labels"] == tok("the cat", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert len(second["labels"]) == 6 and second["labels"][-1] == tok.eos_token_id
    assert enc.stats.truncated == 1 and len(second["input_ids"]) == 6  # rows counted, not sides
    batch = Collator(tok.pad_token_id)(enc.examples)
    assert batch["labels"][0].tolist()[3:] == [-100] * 3
    torch.manual_seed(0)
    cfg = transformers.T5Config(
        vocab_size=len(tok),
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=1,
        num_decoder_layers=1,
        num_heads=4,
        decoder_start_token_id=tok.pad_token_id,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )
    loss = transformers.T5ForConditionalGeneration(cfg)(**batch).loss
    assert torch.isfinite(loss)


# --- collator ------------------------------------------------------------------------------------


def test_collator_pads_each_field():
    examples = [
        {"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1], "labels": [-100, 6, 7], "score_position": 2},
        {"input_ids": [8], "attention_mask": [1], "labels": [8], "score_position": 0},
    ]
    right = Collator(pad_token_id=0)(examples)
    assert right["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert right["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert right["score_position"].tolist() == [2, 0]
    left = Collator(pad_token_id=0, padding_side="left", position_ids=True)(examples)
    assert left["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]]
    assert left["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert left["labels"].tolist() == [[-100, 6, 7], [-100, -100, 8]]
    assert left["score_position"].tolist() == [2, 2]
    assert left["position_ids"].tolist() == [[0, 1, 2], [0, 0, 0]]
    with pytest.raises(ValueError, match="padding_side"):
        Collator(0, padding_side="middle")


def test_batches_cover_everything_once():
    items = list(range(10))
    assert [len(b) for b in batches(items, 4)] == [4, 4, 2]
    shuffled = [
        x for b in batches(items, 3, shuffle=True, generator=torch.Generator().manual_seed(0)) for x in b
    ]
    again = [
        x for b in batches(items, 3, shuffle=True, generator=torch.Generator().manual_seed(0)) for x in b
    ]
    assert sorted(shuffled) == items and shuffled == again


# --- the real shared files -----------------------------------------------------------------------


def test_real_sst2_and_e2e():
    sst2, e2e = SHARED_DATA / "sst2/train.tsv", SHARED_DATA / "e2e/train.csv"
    if not (sst2.is_file() and e2e.is_file()):
        pytest.skip(f"shared data not found under {SHARED_DATA}")
    spec = TaskSpec(type="classification", max_length=32)
    result = read_records(sst2, columns={"sentence": "text"}, required=spec.required_columns())
    assert len(result.records) == 67_349 and result.problems == []
    assert {r["label"] for r in result.records} == {"0", "1"}
    enc = encode(result.records[:100], tiny_tokenizer(), spec)
    assert enc.labels == ["0", "1"] and enc.stats.count == 100
    e2e_spec = TaskSpec(type="seq2seq")
    e2e_rows = read_records(
        e2e, columns={"mr": "source", "ref": "target"}, required=e2e_spec.required_columns()
    )
    assert len(e2e_rows.records) > 1000
    assert e2e_rows.records[0]["source"].startswith("name[")
    assert encode(e2e_rows.records[:50], tiny_tokenizer(), e2e_spec).stats.count == 50
