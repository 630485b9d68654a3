"""Continuous batching in-process (no HTTP): rows of every method join and leave a running batch between
steps, and each decodes exactly what `peftkit generate` decodes for it alone."""

from __future__ import annotations

import contextlib

import pytest

pytest.importorskip("fastapi")

import torch  # noqa: E402
import transformers  # noqa: E402
from serve_helpers import ADAPTERS, save_adapters, save_base  # noqa: E402

from peftkit import BASE_ROW, PeftModel  # noqa: E402
from peftkit.decoding import DecodingConfig, generate  # noqa: E402
from peftkit.layer import adapter_layers  # noqa: E402
from peftkit.serve.adapters import AdapterTable  # noqa: E402
from peftkit.serve.batch import Slots  # noqa: E402
from peftkit.serve.jobs import Delta, Done, Finish, Job  # noqa: E402
from peftkit.serve.protocol import ApiError  # noqa: E402
from peftkit.serve.scheduler import Scheduler  # noqa: E402

PROMPTS = [
    "the movie was great",
    "what is the capital of france ?",
    "hello",
    "a red house near the pub and the dog sat on the mat",
]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-batching")
    base = save_base(root / "base")
    return base, save_adapters(base, root / "adapters")


def fresh_table(folders, names=None) -> AdapterTable:
    base, paths = folders
    model = transformers.AutoModelForCausalLM.from_pretrained(base).eval()
    tok = transformers.AutoTokenizer.from_pretrained(base)
    table = AdapterTable(model, tok, "base", paths["lora"].parent)
    for name in names if names is not None else list(paths):
        table.load(name, paths[name])
    return table


@pytest.fixture(scope="module")
def table(folders) -> AdapterTable:
    return fresh_table(folders)


class Recorder:
    """A job with its events; ``tokens(i)`` are choice i's tokens as the scheduler reported them."""

    def __init__(self, table: AdapterTable, prompt: str, model: str, config: DecodingConfig, **kw):
        self.ids = table.tokenizer(prompt)["input_ids"]
        self.config, self.events = config, []
        self.job = Job(self.ids, table.acquire(model), config, self.events.append, seed=config.seed, **kw)

    def tokens(self, index: int = 0) -> list[int]:
        return [e.token for e in self.events if isinstance(e, Delta) and e.index == index]

    @property
    def done(self) -> bool:
        return bool(self.events) and isinstance(self.events[-1], Done)


def greedy(table: AdapterTable, max_new: int, **options) -> DecodingConfig:
    tok = table.tokenizer
    return DecodingConfig(
        max_new_tokens=max_new, eos_token_id=[tok.eos_token_id], pad_token_id=tok.pad_token_id, **options
    )


def alone(table: AdapterTable, rec: Recorder, row: str, index: int = 0) -> list[int]:
    """What the decoding engine gives this request run by itself (`peftkit generate`'s path)."""
    model = table.model
    if not isinstance(model, PeftModel):
        context = contextlib.nullcontext()
    elif row == BASE_ROW:
        context = model.disable_adapter()
    else:
        model.set_adapter(row)  # one active adapter, as `peftkit generate --adapter` loads it
        context = contextlib.nullcontext()
    with context:
        out = generate(model, torch.tensor([rec.ids]), None, rec.config, tokenizer=table.decoder)
    new = out.new_tokens[index].tolist()
    eos = table.tokenizer.eos_token_id
    return new[: new.index(eos) + 1] if eos in new else new


def test_rows_of_every_method_join_and_leave_and_match_decoding_alone(table):
    scheduler = Scheduler(table, max_batch=8)
    rows = [BASE_ROW, *ADAPTERS]
    runs, sizes = [], []
    for step in range(60):
        if step % 2 == 0 and len(runs) < 18:  # a request every other step: always some joining
            i = len(runs)
            row = rows[(i * 5) % len(rows)]
            config = greedy(table, 4 + (i * 7) % 19)
            rec = Recorder(table, PROMPTS[i % len(PROMPTS)], "base" if row == BASE_ROW else row, config)
            scheduler.submit(rec.job)
            runs.append((row, rec))
        scheduler.step()
        sizes.append(len(scheduler.rows))
    while scheduler.step():
        pass
    assert max(sizes) > 4 and scheduler.running is None  # rows shared steps, and all left
    for row, rec in runs:
        assert rec.done, row
        assert rec.tokens() == alone(table, rec, row), row


def test_leaving_rows_trim_their_cache_columns(table):
    """Rows with the widest prefix / prompt / prompt length leave: those columns go from the cache."""
    scheduler = Scheduler(table, max_batch=8)
    long = Recorder(table, PROMPTS[3], "prefix", greedy(table, 3))
    rest = [Recorder(table, PROMPTS[2], name, greedy(table, 9)) for name in ("prompt", "lora", "base")]
    for rec in [long, *rest]:
        scheduler.submit(rec.job)
    scheduler.step()
    assert scheduler.running.regions[:2] == (5, 3)
    width = scheduler.running.regions[2]
    while long.job.choices[0].finish is None:
        scheduler.step()
    scheduler.step()
    prefix, embedded, real = scheduler.running.regions
    assert (prefix, embedded) == (0, 3) and real < width  # the prefix slots and left padding are gone
    assert scheduler.running.slots == [Slots(embedded=3), Slots(), Slots()]
    while scheduler.step():
        pass
    for rec, row in zip(rest, ["prompt", "lora", BASE_ROW], strict=True):
        assert rec.tokens() == alone(table, rec, row)


def test_sampled_rows_draw_as_they_would_alone(table):
    scheduler = Scheduler(table, max_batch=8)
    sampled = [
        Recorder(
            table,
            PROMPTS[i],
            name,
            greedy(table, 8, strategy="sample", top_k=20, temperature=0.9, seed=7),
            n=2,
        )
        for i, name in enumerate(["lora", "prefix"])
    ]
    noise = Recorder(table, PROMPTS[3], "prompt", greedy(table, 12))
    for rec in [noise, *sampled]:
        scheduler.submit(rec.job)
    while scheduler.step():
        pass
    for rec, name in zip(sampled, ["lora", "prefix"], strict=True):
        assert rec.tokens(0) == alone(table, rec, name)  # choice 0 draws with the request's seed
        assert rec.tokens(1) != rec.tokens(0)  # choice 1 with seed + 1


@pytest.mark.parametrize(
    "options",
    [
        {"strategy": "beam", "num_beams": 3, "num_return_sequences": 2},
        {"strategy": "contrastive", "top_k": 3},
    ],
)
def test_beam_and_contrastive_requests_run_as_their_own_batch(table, options):
    scheduler = Scheduler(table, max_batch=8)
    other = Recorder(table, PROMPTS[1], "bottleneck", greedy(table, 10))
    solo = Recorder(
        table, PROMPTS[0], "prefix", greedy(table, 6, **options), n=options.get("num_return_sequences", 1)
    )
    scheduler.submit(other.job)
    scheduler.step()
    scheduler.submit(solo.job)
    while scheduler.step():
        pass
    for i in range(solo.job.n):
        assert solo.tokens(i) == alone(table, solo, "prefix", index=i)
    assert other.tokens() == alone(table, other, "bottleneck")


def test_cancelled_rows_leave_and_an_unloaded_adapter_goes_after_its_requests(folders):
    table = fresh_table(folders, ["lora", "prefix"])
    scheduler = Scheduler(table, max_batch=8)
    gone = Recorder(table, PROMPTS[0], "prefix", greedy(table, 40, min_new_tokens=40))
    kept = Recorder(table, PROMPTS[1], "lora", greedy(table, 30, min_new_tokens=30))
    for rec in (gone, kept):
        scheduler.submit(rec.job)
    for _ in range(3):
        scheduler.step()
    assert table.unload("lora") == 1 and "lora" in table.model.peft_config  # still running
    with pytest.raises(ApiError, match="does not exist"):
        table.acquire("lora")
    gone.job.cancel()
    scheduler.step()
    assert len(scheduler.rows) == 1 and "prefix" in table.entries and table.entries["prefix"].requests == 0
    while scheduler.step():
        pass
    assert kept.done and len(kept.tokens()) == 30 and isinstance(kept.events[-2], Finish)
    assert "lora" not in table.model.peft_config and "lora" not in table.entries


def test_a_failed_load_leaves_the_served_model_as_it_was(folders, tmp_path):
    base, paths = folders
    table = fresh_table(folders, [])
    ids = torch.tensor([table.tokenizer(PROMPTS[3])["input_ids"]])
    before = table.model(ids).logits
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text((paths["bottleneck"] / "adapter_config.json").read_text())
    (broken / "adapter_model.safetensors").write_bytes(
        (paths["lora"] / "adapter_model.safetensors").read_bytes()
    )
    for attempt in range(2):  # first onto the bare base, then onto a wrapped one
        with pytest.raises(ApiError, match="cannot load adapter 'broken'"):
            table.load("broken", broken)
        assert "broken" not in table.entries
        if attempt == 0:
            assert table.model is table.base and not list(adapter_layers(table.base))
            torch.testing.assert_close(table.model(ids).logits, before, rtol=0, atol=0)
            table.load("lora", paths["lora"])
    with table.model.disable_adapter():
        torch.testing.assert_close(table.model(ids).logits, before, rtol=0, atol=0)
    assert list(table.model.peft_config) == ["lora"]
