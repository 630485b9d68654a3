"""The benchmark suite's machinery (bench/suite*.py) on a tiny BERT: cells, cache keys, the shared
training runner for peftkit and peft, and the table / plot / README assembly. No timing asserts."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from peftkit import LoraConfig, PrefixTuningConfig, PromptEncoderConfig, PromptTuningConfig
from peftkit.data import Collator
from peftkit.training import TrainConfig
from tests.conftest import VOCAB, build

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))
suite_cells = pytest.importorskip("suite_cells")
suite_report = pytest.importorskip("suite_report")
pytest.importorskip("peft")


def examples(n: int = 8, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    return [
        {"input_ids": torch.randint(3, VOCAB, (5 + i % 3,), generator=g).tolist(), "labels": i % 3}
        for i in range(n)
    ]


def train_one(
    impl: str, tmp_path: Path, config=None, method: str = "lora", batch: int = 4
) -> tuple[object, dict]:
    config = config or LoraConfig(r=2, lora_alpha=4, target_modules=["query", "value"])
    run_cfg, spec = SimpleNamespace(adapter=config), SimpleNamespace(type="classification")
    model = suite_cells.wrap(impl, method, build("bert"), run_cfg, spec, total_steps=2)
    train = TrainConfig(lr=1e-2, max_steps=2, batch_size=batch, log_every=1)
    result, step_s, tokens = suite_cells.train_cell(
        model, examples(2 * batch), Collator(0), train, lambda m, b: m(**b).loss, None, tmp_path / impl
    )
    assert result.steps == 2 and len(step_s) == 2 and all(t > 0 for t in tokens)
    measured = {
        "trainable": suite_cells.trainable_params(model),
        "adapter_bytes": suite_cells.saved_size(model, tmp_path / impl / "adapter"),
        **suite_cells.timing_summary(step_s, tokens),
    }
    return model, measured


def test_peftkit_and_peft_cells_train_the_same_parameters(tmp_path):
    ours, mine = train_one("peftkit", tmp_path)
    theirs, ref = train_one("peft", tmp_path)
    # LoRA on query/value plus the classification head trained in full, in both implementations
    assert mine["trainable"] == ref["trainable"] == 2 * 2 * (2 * 32 + 2 * 32) + (32 * 3 + 3)
    assert mine["adapter_bytes"] > 0 and ref["adapter_bytes"] > 0
    inputs = Collator(0)(examples(4, seed=1))
    ours.eval(), theirs.eval()
    with torch.no_grad():  # same init draw, data order, optimizer and steps: the same trained model
        torch.testing.assert_close(ours(**inputs).logits, theirs(**inputs).logits, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    "method, config",
    [
        ("prompt", PromptTuningConfig(num_virtual_tokens=3)),
        ("ptuning", PromptEncoderConfig(num_virtual_tokens=3, encoder_hidden_size=8)),
    ],
)
def test_prepended_prompts_train_to_peft_s_bit_for_bit(tmp_path, method, config):
    # peft repeats one prompt for the batch: its gradient sums the rows' in one reduction, which
    # peftkit's one view of the prompt for every row reproduces (per-row copies summed them otherwise)
    assert_trains_to_peft_s_bit_for_bit(tmp_path, method, config)


@pytest.mark.parametrize(
    "method, config",
    [
        ("prefix", PrefixTuningConfig(num_virtual_tokens=3, prefix_projection=True, encoder_hidden_size=8)),
        ("ptuning_v2", PrefixTuningConfig(num_virtual_tokens=3)),
    ],
)
def test_prefixes_train_to_peft_s_bit_for_bit(tmp_path, method, config):
    # peft looks the prefix up and runs its MLP for every row of the batch, so the MLP's weight
    # gradients sum B x V rows in one matmul; peftkit's one-adapter batch computes it the same way
    import peft

    try:
        peft.get_peft_model(
            build("bert"), peft.PrefixTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=2)
        )(**Collator(0)(examples(2)))
    except ValueError as error:  # peft 0.21.2 on transformers >= 5.24 (see the README's suite section)
        if "past key values" not in str(error):
            raise
        pytest.skip(f"peft's prefix tuning does not run with this transformers: {error}")
    assert_trains_to_peft_s_bit_for_bit(tmp_path, method, config)


@pytest.mark.parametrize("hidden", [8, None])
def test_a_batch_s_prefix_gradient_sums_its_rows_in_peft_s_order(hidden):
    # the same check on peft's PrefixEncoder alone, which runs with every transformers version
    import peft
    from peft.tuners.prefix_tuning.model import PrefixEncoder as PeftPrefixEncoder

    from peftkit.methods.prefix_tuning.layer import PrefixEncoder
    from peftkit.virtual.layout import _row_prefixes

    V, L, H, d, B = 3, 2, 4, 32, 32
    ours = PrefixEncoder(V, L, H, d, hidden)
    config = peft.PrefixTuningConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=V, token_dim=d, num_layers=L, num_attention_heads=H,
        encoder_hidden_size=hidden or d, prefix_projection=hidden is not None,
    )  # fmt: skip
    theirs = PeftPrefixEncoder(config)
    theirs.load_state_dict(dict(zip(theirs.state_dict(), ours.state_dict().values(), strict=True)))
    upstream = torch.randn(2 * L, B, H, V, d // H, generator=torch.Generator().manual_seed(0))
    flat = theirs(torch.arange(V).expand(B, V))  # (B, V, 2 L d): peft's get_prompt, then its layout
    (flat.view(B, V, 2 * L, H, d // H).permute(2, 0, 3, 1, 4) * upstream).sum().backward()
    (
        _row_prefixes([ours] * B, V, torch.device("cpu")) * upstream.view(L, 2, B, H, V, d // H)
    ).sum().backward()
    for mine, reference in zip(ours.parameters(), theirs.parameters(), strict=True):
        assert torch.equal(mine.grad, reference.grad)


def assert_trains_to_peft_s_bit_for_bit(tmp_path: Path, method: str, config) -> None:
    ours, _ = train_one("peftkit", tmp_path, config, method, batch=32)
    theirs, _ = train_one("peft", tmp_path, config, method, batch=32)
    mine, peft_s = (list(m.prompt_encoder["default"].named_parameters()) for m in (ours, theirs))
    assert len(mine) == len(peft_s)  # the embedding, then the encoder's layers in the same order
    for (name, value), (_, reference) in zip(mine, peft_s, strict=True):
        assert torch.equal(value, reference), name


def test_cell_key_follows_its_settings():
    a, b = (
        suite_cells.all_cells(budget, tasks=["sst2"], methods=["lora"])
        for budget in (suite_cells.FULL, suite_cells.QUICK)
    )
    assert [c.impl for c in a] == ["peftkit", "peft"]
    assert a[0].key != a[1].key and a[0].key != b[0].key
    assert a[0].key == suite_cells.all_cells(suite_cells.FULL, tasks=["sst2"], methods=["lora"])[0].key
    assert a[0].run["data"]["limit"] == 8000 and b[0].run["data"]["limit"] == suite_cells.QUICK.sst2_limit
    # methods peft lacks get no peft cell
    assert [c.impl for c in suite_cells.all_cells(suite_cells.FULL, tasks=["sst2"], methods=["houlsby"])] == [
        "peftkit"
    ]


def test_peftkit_cells_train_at_its_default_rate_and_peft_cells_at_the_examples_old_one():
    from peftkit.registry import config_from_dict

    for (task, method), old in suite_cells.PEFT_LR.items():
        ours, theirs = suite_cells.all_cells(suite_cells.FULL, tasks=[task], methods=[method])
        example = suite_cells.load_yaml(suite_cells.EXAMPLES / suite_cells.TASKS[task][method])
        assert "lr" not in example["train"], f"{method}'s example should leave train.lr to the method"
        default = config_from_dict(example["adapter"]).default_lr
        assert ours.run["train"]["lr"] == default and theirs.run["train"]["lr"] == old
        assert {**ours.run, "train": {}} == {**theirs.run, "train": {}}  # nothing else differs
        warmup = suite_cells.PEFT_WARMUP.get((task, method), example["train"].get("warmup_ratio"))
        assert theirs.run["train"].get("warmup_ratio") == warmup
        ours_warmup = (
            example["train"].get("warmup_ratio") or config_from_dict(example["adapter"]).default_warmup_ratio
        )
        assert ours.run["train"].get("warmup_ratio", 0.0) == ours_warmup
    # an example that sets train.lr trains both cells at it
    ours, theirs = suite_cells.all_cells(suite_cells.FULL, tasks=["sst2"], methods=["lora"])
    assert ours.run["train"]["lr"] == theirs.run["train"]["lr"] == 1e-3


def measured(quality: float, step_ms: float, trainable: int = 100) -> dict:
    return {
        "status": "ok",
        "quality": quality,
        "trainable": trainable,
        "adapter_bytes": 4096,
        "step_ms_median": step_ms,
        "tokens_per_s": 1000.0,
        "peak_rss_mib": 500.0,
    }


def test_table_ratios_not_run_and_failed_cells(tmp_path):
    cells = suite_cells.all_cells(suite_cells.QUICK, tasks=["sst2"], methods=["lora", "prompt", "houlsby"])
    by = {(c.method, c.impl): c for c in cells}
    results = {
        by["lora", "peftkit"].key: measured(85.0, 90.0),
        by["lora", "peft"].key: measured(84.0, 100.0),
        by["prompt", "peft"].key: {"status": "failed", "error": "ValueError: boom"},
    }
    rows = suite_report.rows(cells, results)
    lora = next(r for r in rows if r["method"] == "lora" and r["impl"] == "peftkit")
    assert lora["ratio_to_peft"]["step_ms_median"] == pytest.approx(0.9)
    md = suite_report.markdown(rows, "title")
    line = {ln.split(" | ")[1]: ln for ln in md.splitlines() if ln.startswith("| SST-2")}
    assert "| 85.0 | 84.0 |" in line["LoRA"] and "(0.90x)" in line["LoRA"]
    assert "| not run | failed |" in line["prompt tuning"]
    assert "| not run | — |" in line["Houlsby adapter"]
    assert "ValueError: boom" in md
    png = suite_report.plot(rows, tmp_path / "q.png", "t")
    assert png is not None and png.read_bytes()[:4] == b"\x89PNG"
    assert suite_report.plot(suite_report.rows(cells, {}), tmp_path / "none.png", "t") is None


def test_speed_is_compared_only_between_cells_of_one_machine():
    cells = suite_cells.all_cells(suite_cells.QUICK, tasks=["sst2"], methods=["lora"])
    ours, theirs = (next(c for c in cells if c.impl == impl) for impl in ("peftkit", "peft"))
    avx2 = {"cpu": "AMD EPYC", "cpu_capability": "AVX2", "cores": 2}
    results = {
        ours.key: {**measured(85.0, 400.0), "machine": avx2},
        theirs.key: {**measured(84.0, 100.0), "machine": {"cpu": "AMD EPYC", "cores": 2}},
    }
    rows = suite_report.rows(cells, results)
    lora = next(r for r in rows if r["impl"] == "peftkit")
    assert "step_ms_median" not in lora["ratio_to_peft"] and "tokens_per_s" not in lora["ratio_to_peft"]
    assert lora["ratio_to_peft"]["peak_rss_mib"] == 1.0  # what does not depend on the machine's speed
    md = suite_report.markdown(rows, "title")
    assert "(4.00x)" not in md and "not compared, the cells ran on different machines" in md
    results[theirs.key]["machine"] = avx2
    lora = next(r for r in suite_report.rows(cells, results) if r["impl"] == "peftkit")
    assert lora["ratio_to_peft"]["step_ms_median"] == pytest.approx(4.0)


def test_readme_table_is_replaced_between_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{suite_report.README_START}\nold\n{suite_report.README_END}\nrest\n")
    assert suite_report.update_readme(readme, "| new |\n")
    assert (
        readme.read_text()
        == f"intro\n{suite_report.README_START}\n| new |\n{suite_report.README_END}\nrest\n"
    )
    other = tmp_path / "OTHER.md"
    other.write_text("no markers\n")
    assert not suite_report.update_readme(other, "x") and other.read_text() == "no markers\n"


def test_cache_json_round_trip(tmp_path):
    import suite

    cell = suite_cells.all_cells(suite_cells.QUICK, tasks=["sst2"], methods=["bitfit"])[0]
    assert suite.cached(cell, tmp_path) is None
    (tmp_path / f"{cell.key}.json").write_text(json.dumps({"key": cell.key, **measured(80.0, 10.0)}))
    assert suite.cached(cell, tmp_path)["quality"] == 80.0


def test_an_interpreter_that_lacks_what_its_cells_need_is_named_before_any_cell_runs(monkeypatch):
    """peft's E2E cells in the --peft-python environment need peft and sacrebleu: a missing one is
    named with the interpreter before hours of cells, not at the first cell's evaluation."""
    suite = pytest.importorskip("suite")
    assert suite.missing_modules(sys.executable, ["json", "no_such_module_xyz"]) == ["no_such_module_xyz"]
    cells = suite_cells.all_cells(suite_cells.QUICK, tasks=["e2e"], methods=["prompt"])
    asked: dict[str, list[str]] = {}
    monkeypatch.setattr(suite, "missing_modules", lambda py, mods: asked.setdefault(py, mods) and mods[-1:])
    problems = suite.interpreter_problems(cells, "/other/python")
    assert asked == {sys.executable: ["sacrebleu"], "/other/python": ["peft", "sacrebleu"]}
    assert problems == [
        f"{sys.executable} cannot import sacrebleu: pip install them into that environment",
        "/other/python cannot import sacrebleu: pip install them into that environment",
    ]


def test_a_failed_cell_is_cached_but_run_again(tmp_path):
    """A cell that failed (a missing package, say) is kept for the table, and the next run retries it."""
    import suite

    cell = suite_cells.all_cells(suite_cells.QUICK, tasks=["sst2"], methods=["bitfit"])[0]
    path = tmp_path / f"{cell.key}.json"
    path.write_text(json.dumps({"key": cell.key, "status": "failed", "error": "ImportError"}))
    assert suite.cached(cell, tmp_path)["status"] == "failed" and not suite.measured(cell, tmp_path)
    path.write_text(json.dumps({"key": cell.key, **measured(80.0, 10.0)}))
    assert suite.measured(cell, tmp_path)


def test_parallel_cells_split_the_cores(monkeypatch):
    suite = pytest.importorskip("suite")
    monkeypatch.setattr(suite.os, "cpu_count", lambda: 8)
    assert suite.thread_env(1) is None  # one cell at a time: the process's own threads
    env = suite.thread_env(2)
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "4" and "PATH" in env
    assert suite.thread_env(16)["OMP_NUM_THREADS"] == "1"


def test_seeds_pool_into_mean_sd_min_and_flag_stuck_runs():
    cells = suite_cells.all_cells(suite_cells.QUICK, tasks=["sst2"], methods=["lora"], seeds=range(3))
    assert [(c.impl, c.seed) for c in cells] == [(i, s) for s in range(3) for i in ("peftkit", "peft")]
    assert cells[0].key == suite_cells.all_cells(suite_cells.QUICK, tasks=["sst2"], methods=["lora"])[0].key
    assert len({c.key for c in cells}) == 6 and cells[2].run["train"]["seed"] == 1
    ours, theirs = [80.0, 84.0, 82.0], [70.0, 71.0, 72.0]
    results = {}
    for c in cells:
        q = (ours if c.impl == "peftkit" else theirs)[c.seed]
        share = 1.0 if (c.impl, c.seed) == ("peft", 2) else 0.6
        results[c.key] = {**measured(q, 90.0), "metrics": {"eval_top_prediction_share": share}}
    rows = suite_report.rows(cells, results)
    lora = next(r for r in rows if r["impl"] == "peftkit")
    assert lora["quality"] == pytest.approx(82.0) and lora["quality_sd"] == pytest.approx(2.0)
    assert lora["quality_min"] == 80.0 and lora["seeds"] == 3 and lora["stuck_seeds"] == []
    md = suite_report.markdown(rows, "title")
    line = next(ln for ln in md.splitlines() if ln.startswith("| SST-2"))
    assert "82.0 ± 2.0 (min 80.0, 3 seeds)" in line and "71.0 ± 1.0 (min 70.0, 3 seeds)" in line
    assert "+11.0 (beyond spread" in line  # 2 SE = 2 * sqrt(4/3 + 1/3) = 2.6
    assert "stuck on one class: sst2 lora peft, seed(s) [2]" in md
    del results[cells[4].key]  # seed 2 of peftkit not run yet
    partial = next(r for r in suite_report.rows(cells, results) if r["impl"] == "peftkit")
    assert partial["seeds"] == 2 and partial["quality"] == pytest.approx(82.0)
    assert "2 of 3 seeds" in suite_report.markdown(suite_report.rows(cells, results), "t")


def test_only_peft_prefix_cells_take_the_other_interpreter():
    """``--peft-python``: peft's prefix tuning / P-tuning v2 cells run in an environment where peft's
    prefix path works (transformers 5.24 renamed the argument peft looks for); every other cell,
    peftkit's prefix cells included, runs in ours."""
    suite = pytest.importorskip("suite")
    budget = suite_cells.QUICK
    cells = suite_cells.all_cells(budget, tasks=["sst2"], methods=["lora", "prefix", "ptuning_v2"])
    chosen = {(c.method, c.impl): suite.cell_python(c, "/other/python") for c in cells}
    assert chosen == {
        ("lora", "peftkit"): None,
        ("lora", "peft"): None,
        ("prefix", "peftkit"): None,
        ("prefix", "peft"): "/other/python",
        ("ptuning_v2", "peftkit"): None,
        ("ptuning_v2", "peft"): "/other/python",
    }
    assert all(suite.cell_python(c, None) is None for c in cells)


def test_peft_prompt_cells_that_decode_take_the_other_interpreter():
    """peft's prompt-tuning decoding loses its cache on transformers 5.24: its E2E prompt cells run
    with ``--peft-python``; its SST-2 prompt cells (no decoding) and every LoRA cell stay in ours."""
    suite = pytest.importorskip("suite")
    cells = suite_cells.all_cells(suite_cells.QUICK, tasks=["sst2", "e2e"], methods=["lora", "prompt"])
    chosen = {(c.task, c.method, c.impl): suite.cell_python(c, "/other/python") for c in cells}
    other = {key for key, python in chosen.items() if python}
    assert other == {("e2e", "prompt", "peft")}


def _tiny_peft_prompt_model():
    from peft import PromptTuningConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)  # not conftest's tiny_llama: its two decodings happen to agree on 5.24
    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        pad_token_id=0,
    )
    model = get_peft_model(
        LlamaForCausalLM(cfg), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5)
    )
    with torch.no_grad():
        model.prompt_encoder["default"].embedding.weight.normal_(0, 1)
    return model.eval()


def test_peft_decoding_that_loses_its_cache_is_refused_by_behaviour():
    """The check compares peft's greedy decoding with and without the cache, not version numbers:
    it refuses exactly when the two differ (transformers 5.24 with peft 0.21.2), naming the fix."""
    pytest.importorskip("peft")
    model = _tiny_peft_prompt_model()
    enc = {
        "input_ids": torch.tensor([[5, 6, 7, 8, 9, 10]]),
        "attention_mask": torch.ones(1, 6, dtype=torch.long),
    }
    kw = {"max_new_tokens": 4, "min_new_tokens": 4, "do_sample": False}
    with torch.no_grad():
        same = torch.equal(
            model.generate(**enc, use_cache=True, **kw), model.generate(**enc, use_cache=False, **kw)
        )
        if same:
            suite_cells.check_peft_decoding_cache(model, enc)
        else:
            with pytest.raises(RuntimeError, match="--peft-python"):
                suite_cells.check_peft_decoding_cache(model, enc)


def test_tuning_runs_only_the_named_candidates_and_chooses_among_the_most_seeded():
    tune = pytest.importorskip("tune_defaults")
    grid = tune.cells(["ptuning"], range(2), quick=True, only={"lr 5e-3"})
    assert list(grid) == [("ptuning", "lr 5e-3")]
    assert [c.run["train"]["lr"] for c in grid["ptuning", "lr 5e-3"]] == [5e-3, 5e-3]
    assert {c.run["data"]["holdout"] for c in grid["ptuning", "lr 5e-3"]} == {"validation"}

    def row(qualities: list[float], stuck: int = 0) -> dict:
        return tune.summary(
            [
                {
                    "status": "ok",
                    "quality": q,
                    "metrics": {"eval_top_prediction_share": 1.0 if i < stuck else 0.6},
                }
                for i, q in enumerate(qualities)
            ]
        )

    table = {"ptuning": {"a": row([90.0, 90.0, 90.0]), "b": row([80.0] * 5), "c": row([85.0] * 5, stuck=1)}}
    md = tune.markdown(table, 5)
    assert "| ptuning | b * | 5 |" in md  # a has the best mean but fewer seeds; c has a stuck seed
    assert "| ptuning | a | 3 |" in md and "| ptuning | c | 5 |" in md
    # the former setting stays unless the best beats it by more than one standard error
    tie = {"b": row([80.0, 81.0, 79.0]), "x (example)": row([79.5, 80.5, 78.5])}
    assert tune.choose(tie) == "x (example)"
    assert tune.choose({**tie, "b": row([83.0, 84.0, 82.0])}) == "b"
    assert tune.choose({**tie, "x (example)": row([99.0, 79.5, 80.5], stuck=1)}) == "b"


def test_peft_qlora_cells_draw_the_new_head_as_peftkits_do(tmp_path):
    """peft's QLoRA base loads through transformers + bitsandbytes, not peftkit's loader: its new head
    must still be the draw of the cell's seed (paired with peftkit's, seed for seed)."""
    pytest.importorskip("bitsandbytes")
    import transformers

    from peftkit.quantization import quantize_model

    cfg = transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=64, num_hidden_layers=1, num_attention_heads=4, intermediate_size=128
    )
    transformers.BertModel(cfg).save_pretrained(tmp_path)  # no head: the cell draws a new one

    def head(seed: int) -> torch.Tensor:
        return suite_cells.load_peft_qlora_base(str(tmp_path), 2, seed).classifier.weight

    torch.manual_seed(3)  # what peftkit.pipeline.load_base does before peftkit.models.load_model's calls
    ours = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path, num_labels=2)
    quantize_model(ours, "nf4")
    assert torch.equal(head(3), ours.classifier.weight)
    assert not torch.equal(head(3), head(4))
