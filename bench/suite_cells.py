"""The suite's cells: (task, method, implementation) with one budget, and the run of one cell.

A cell trains with peftkit's own :class:`~peftkit.training.Trainer` whatever the implementation:
the same data order, steps, AdamW, schedule and evaluation; only the wrapped model differs
(``peftkit.get_peft_model`` or ``peft.get_peft_model`` on the same base). Data come from peftkit's
pipeline (``read_split`` + ``encode``), the run settings from ``examples/*.yaml`` with the budget
replaced (full or quick).
"""

from __future__ import annotations

import hashlib
import json
import resource
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
# bump when a change to the cell runner or to training makes cached cells stale. 2: issue 19's
# training defaults (bf16 base where faster, chunked loss, packed batches) and issue 21's rates
SUITE_VERSION = 2

# (task, method) -> (example config, adapter override or None). "peft" lists the methods peft has.
SST2 = {
    "full": "sst2_minilm_full.yaml",
    "lora": "sst2_minilm_lora.yaml",
    "adalora": "sst2_minilm_adalora.yaml",
    "dora": "sst2_minilm_dora.yaml",
    "ia3": "sst2_minilm_ia3.yaml",
    "qlora": "sst2_minilm_qlora.yaml",
    "houlsby": "sst2_minilm_houlsby.yaml",
    "pfeiffer": "sst2_minilm_pfeiffer.yaml",
    "prompt": "sst2_minilm_prompt.yaml",
    "prefix": "sst2_minilm_prefix.yaml",
    "ptuning": "sst2_minilm_ptuning.yaml",
    "ptuning_v2": "sst2_minilm_ptuning_v2.yaml",
    "bitfit": "sst2_minilm_bitfit.yaml",
    "selection": "sst2_minilm_selection_smallest.yaml",
    "diff_pruning": "sst2_minilm_diff_pruning.yaml",
}
E2E = {
    "lora": "e2e_smollm2_lora.yaml",
    "prefix": "e2e_smollm2_prefix.yaml",
    "prompt": "e2e_smollm2_prompt.yaml",
    "full": "e2e_smollm2_lora.yaml",  # adapter replaced below
}
E2E_FULL = {"method": "full"}
E2E_FULL_LR = 1.0e-4
# issue 21: an example that leaves train.lr unset trains peftkit at its method's default rate
# (``default_lr``, chosen by bench/tune_defaults.py on validation rows). peft has no per-method
# rate, so its cell keeps the rate the example set before that tuning, as a peft user of the example
# would: (task, method) -> that rate.
PEFT_LR = {
    ("sst2", "ptuning"): 1.0e-3,
    ("sst2", "prefix"): 1.0e-3,
    ("sst2", "adalora"): 1.0e-3,
    ("sst2", "prompt"): 1.0e-2,
}
# ... and the warm-up the example set before, where tuning changed the example's (P-tuning: 0.2)
PEFT_WARMUP = {("sst2", "ptuning"): 0.06}
PEFT_HAS = {"lora", "adalora", "dora", "ia3", "qlora", "prompt", "prefix", "ptuning", "ptuning_v2"}
LABELS = {
    "full": "full fine-tuning",
    "lora": "LoRA",
    "adalora": "AdaLoRA",
    "dora": "DoRA",
    "ia3": "(IA)³",
    "qlora": "QLoRA (NF4)",
    "houlsby": "Houlsby adapter",
    "pfeiffer": "Pfeiffer adapter",
    "prompt": "prompt tuning",
    "prefix": "prefix tuning",
    "ptuning": "P-tuning v1",
    "ptuning_v2": "P-tuning v2",
    "bitfit": "BitFit",
    "selection": "selection (smallest magnitude)",
    "diff_pruning": "learned selection (diff pruning)",
}
TASKS = {"sst2": SST2, "e2e": E2E}
TASK_LABELS = {"sst2": "SST-2 / MiniLM-L6 (accuracy %)", "e2e": "E2E / SmolLM2-135M (BLEU)"}


@dataclass(frozen=True)
class Budget:
    """How much each cell trains and evaluates; the same for every cell of a task."""

    sst2_limit: int = 8000
    sst2_eval_limit: int = 1000
    sst2_epochs: float = 1.0
    e2e_steps: int = 40
    e2e_bleu_inputs: int = 0  # 0: every held-out input
    max_new_tokens: int = 64


FULL = Budget()
QUICK = Budget(sst2_limit=192, sst2_eval_limit=128, e2e_steps=3, e2e_bleu_inputs=4, max_new_tokens=16)


@dataclass
class Cell:
    """One (task, method, implementation, seed). The seed is ``train.seed`` of the run: it sets the data
    order and the new head's and the adapter's random draws; the held-out split stays the same."""

    task: str
    method: str
    impl: str  # "peftkit" | "peft"
    run: dict[str, Any]  # the run config (YAML mapping) this cell trains with
    eval: dict[str, Any] = field(default_factory=dict)

    @property
    def seed(self) -> int:
        return int(self.run.get("train", {}).get("seed", 0))

    @property
    def key(self) -> str:
        spec = {"suite": SUITE_VERSION, **self.to_dict()}
        digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
        return f"{self.task}-{self.method}-{self.impl}-{digest}"

    @property
    def group(self) -> tuple[str, str, str]:
        """What the seeds of a cell share: its row in the table."""
        return self.task, self.method, self.impl

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "method": self.method,
            "impl": self.impl,
            "run": self.run,
            "eval": self.eval,
        }


def load_yaml(path: Path) -> dict[str, Any]:
    from peftkit.run_config import load_yaml as load

    return load(path)


def run_settings(task: str, method: str, budget: Budget) -> tuple[dict[str, Any], dict[str, Any]]:
    """The example's run config with the budget applied, and the evaluation settings."""
    run = load_yaml(EXAMPLES / TASKS[task][method])
    data, train = dict(run["data"]), dict(run["train"])
    train.update(eval_every=0, save_every=0, log_every=5)
    if task == "sst2":
        data.update(limit=budget.sst2_limit, eval_limit=budget.sst2_eval_limit)
        train.update(epochs=budget.sst2_epochs)
        if method == "adalora":
            run["adapter"] = adalora_schedule(run["adapter"], budget.sst2_limit / FULL.sst2_limit)
        evaluation: dict[str, Any] = {"metric": "eval_accuracy"}
    else:
        train.update(max_steps=budget.e2e_steps, warmup_steps=min(10, max(1, budget.e2e_steps // 4)))
        evaluation = {
            "metric": "eval_bleu",
            "inputs": budget.e2e_bleu_inputs,
            "max_new_tokens": budget.max_new_tokens,
        }
        if method == "full":
            run["adapter"], train["lr"] = dict(E2E_FULL), E2E_FULL_LR
    train.setdefault("lr", default_lr(run["adapter"]))
    warmup = default_warmup(run["adapter"])  # written only where the method has one: cell keys stay
    if warmup and "warmup_ratio" not in train and not train.get("warmup_steps"):
        train["warmup_ratio"] = warmup
    run.update(data=data, train=train)
    run.pop("output_dir", None)
    return run, evaluation


def default_lr(adapter: dict[str, Any]) -> float:
    """The rate peftkit trains ``adapter``'s method at when ``train.lr`` is unset."""
    return _method_default(adapter, "default_lr")


def default_warmup(adapter: dict[str, Any]) -> float:
    """The warm-up ratio peftkit trains ``adapter``'s method with when the example sets none."""
    return _method_default(adapter, "default_warmup_ratio")


def _method_default(adapter: dict[str, Any], attr: str) -> float:
    from peftkit.registry import config_from_dict

    return getattr(config_from_dict(adapter), attr)


def adalora_schedule(adapter: dict[str, Any], fraction: float) -> dict[str, Any]:
    """AdaLoRA's tinit / tfinal / deltaT scaled to a budget of ``fraction`` of the full steps."""
    if fraction >= 1:
        return adapter
    scaled = {k: max(1, round(adapter[k] * fraction)) for k in ("tinit", "tfinal", "deltaT") if k in adapter}
    return {**adapter, **scaled}


def all_cells(
    budget: Budget,
    tasks: list[str] | None = None,
    methods: list[str] | None = None,
    seeds: list[int] | tuple[int, ...] = (0,),
) -> list[Cell]:
    """Every cell of the suite, once per seed (seed 0 keeps the example's settings, and its cache key)."""
    cells = []
    for task, table in TASKS.items():
        if tasks and task not in tasks:
            continue
        for method in table:
            if methods and method not in methods:
                continue
            for seed in seeds:
                run, evaluation = run_settings(task, method, budget)
                if seed:
                    run["train"] = {**run["train"], "seed": seed}
                cells.append(Cell(task, method, "peftkit", run, evaluation))
                if method in PEFT_HAS:
                    cells.append(Cell(task, method, "peft", peft_run(task, method, run), evaluation))
    return cells


def peft_run(task: str, method: str, run: dict[str, Any]) -> dict[str, Any]:
    """The run of ``method``'s peft cell: peftkit's, at the rate of :data:`PEFT_LR` and the warm-up of
    :data:`PEFT_WARMUP` where they have one."""
    train = dict(run["train"])
    if (task, method) in PEFT_LR:
        train["lr"] = PEFT_LR[task, method]
    if (task, method) in PEFT_WARMUP:
        train["warmup_ratio"] = PEFT_WARMUP[task, method]
    return {**run, "train": train}


# ---- building the model --------------------------------------------------------------------------
def peft_config(method: str, adapter: dict[str, Any], task_type: str, total_steps: int) -> Any:
    """peft's config for the same method and fields (P-tuning v2: prefix tuning without projection)."""
    import peft

    from peftkit.models import PACKAGED, resolve_model_path

    fields = {k: v for k, v in adapter.items() if k != "method"}
    if fields.get("tokenizer_name_or_path") in PACKAGED:
        fields["tokenizer_name_or_path"] = resolve_model_path(fields["tokenizer_name_or_path"])
    builders: dict[str, Callable[..., Any]] = {
        "lora": peft.LoraConfig,
        "qlora": peft.LoraConfig,
        "adalora": lambda **f: peft.AdaLoraConfig(total_step=total_steps, **f),
        "dora": peft.LoraConfig,  # use_dora comes with the fields
        "ia3": peft.IA3Config,
        "prompt": peft.PromptTuningConfig,
        "prefix": peft.PrefixTuningConfig,
        "ptuning": peft.PromptEncoderConfig,
        "ptuning_v2": lambda **f: peft.PrefixTuningConfig(**{**f, "prefix_projection": False}),
    }
    if method not in builders:
        raise ValueError(f"peft has no {method!r}; the suite compares it with peftkit only")
    return builders[method](task_type=task_type, **fields)


def load_peft_qlora_base(name: str, num_labels: int, seed: int) -> Any:
    """The same base through transformers + bitsandbytes (NF4, double quant, the compute dtype
    peftkit's ``compute_dtype: auto`` picks on this machine), head kept; the new head is drawn after
    ``torch.manual_seed(seed)``, as :func:`peftkit.pipeline.load_base` draws peftkit's."""
    import transformers

    from peftkit.models import resolve_model_path
    from peftkit.precision import auto_dtype

    q = transformers.BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=auto_dtype(),
        llm_int8_skip_modules=["classifier", "score", "lm_head"],
    )
    torch.manual_seed(seed)
    return transformers.AutoModelForSequenceClassification.from_pretrained(
        resolve_model_path(name), quantization_config=q, num_labels=num_labels, dtype=torch.float32
    )


def load_tokenizer(run_cfg: Any) -> Any:
    """The tokenizer as ``peftkit.models.load_model`` sets it up (a pad token)."""
    import transformers

    from peftkit.models import resolve_model_path

    tok = transformers.AutoTokenizer.from_pretrained(resolve_model_path(run_cfg.model.name))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def wrap(impl: str, method: str, base: Any, run_cfg: Any, spec: Any, total_steps: int) -> Any:
    """``base`` with the cell's adapter, by peftkit or by peft; a classification head trains in full."""
    seed = getattr(getattr(run_cfg, "train", None), "seed", 0)
    torch.manual_seed(seed)  # the same adapter initialisation draw in both implementations
    if impl == "peftkit":
        from peftkit import get_peft_model
        from peftkit.pipeline import _with_head

        return get_peft_model(base, _with_head(run_cfg.adapter, base, spec))
    import peft

    task_type = "SEQ_CLS" if spec.type == "classification" else "CAUSAL_LM"
    model = peft.get_peft_model(base, peft_config(method, run_cfg_adapter(run_cfg), task_type, total_steps))
    if method == "adalora":  # peft's rank allocation: called after each optimizer step, before zero_grad
        model.after_optimizer_step = lambda step: model.base_model.update_and_allocate(step)
    return model


def run_cfg_adapter(run_cfg: Any) -> dict[str, Any]:
    return {k: v for k, v in run_cfg.adapter.to_dict().items() if v is not None and k in _PEFT_FIELDS}


_PEFT_FIELDS = {
    "r",
    "lora_alpha",
    "lora_dropout",
    "use_dora",
    "target_modules",
    "feedforward_modules",
    "init_r",
    "target_r",
    "tinit",
    "tfinal",
    "deltaT",
    "beta1",
    "beta2",
    "orth_reg_weight",
    "num_virtual_tokens",
    "prompt_tuning_init",
    "prompt_tuning_init_text",
    "tokenizer_name_or_path",
    "prefix_projection",
    "encoder_hidden_size",
    "encoder_reparameterization_type",
}


# ---- measuring -----------------------------------------------------------------------------------
def trainable_params(model: Any) -> int:
    if hasattr(model, "parameter_report"):
        return int(model.parameter_report().trainable)
    return int(sum(p.numel() for p in model.parameters() if p.requires_grad))


def saved_size(model: Any, folder: Path) -> int:
    """Bytes on disk of ``model.save_pretrained`` (the 'default' adapter only, head included)."""
    if hasattr(model, "parameter_report"):
        model.save_pretrained(folder, adapter_names=["default"])
    else:
        model.save_pretrained(folder)
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def train_cell(
    model: Any, examples: list[dict], collate: Any, train_cfg: Any, loss_fn: Any, eval_fn: Any, out: Path
):
    """Train with peftkit's Trainer, timing each optimizer step; returns (TrainResult, step s, tokens)."""
    from peftkit.training import Trainer

    class TimedTrainer(Trainer):
        step_s: list[float] = []
        step_tokens: list[int] = []

        def _step(self, step: int) -> tuple[float, int]:
            t0 = time.perf_counter()
            loss, tokens = super()._step(step)
            self.step_s.append(time.perf_counter() - t0)
            self.step_tokens.append(tokens)
            return loss, tokens

    TimedTrainer.step_s, TimedTrainer.step_tokens = [], []
    trainer = TimedTrainer(
        model, examples, collate, train_cfg, out, eval_fn=eval_fn, loss_fn=loss_fn, show_progress=False
    )
    result = trainer.train()
    return result, TimedTrainer.step_s, TimedTrainer.step_tokens


def timing_summary(step_s: list[float], step_tokens: list[int]) -> dict[str, float]:
    import statistics

    return {
        "steps": len(step_s),
        "step_ms_median": statistics.median(step_s) * 1e3,
        "step_ms_min": min(step_s) * 1e3,
        "tokens_per_s": sum(step_tokens) / sum(step_s),
        "train_s": sum(step_s),
    }


def generate_peft(
    model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int, batch: int = 16
) -> list[str]:
    """peft's own decoding (``PeftModel.generate``), greedy, left padding, as peftkit's generate_texts."""
    from peftkit.decoding import cut_at_stop_string
    from peftkit.generation import decoding_config, padding_side

    config = decoding_config(tokenizer, max_new_tokens)
    special = not getattr(tokenizer, "chat_template", None)
    texts: list[str] = []
    with padding_side(tokenizer, "left"), torch.no_grad():
        for i in range(0, len(prompts), batch):
            enc = tokenizer(
                prompts[i : i + batch], return_tensors="pt", padding=True, add_special_tokens=special
            )
            if i == 0:
                check_peft_decoding_cache(model, enc)
            out = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
            texts += tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    return [cut_at_stop_string(t, config.stop_strings) for t in texts]


def check_peft_decoding_cache(model: Any, enc: Any, new_tokens: int = 4) -> None:
    """Refuse a peft whose decoding with a prompt-learning adapter disagrees with and without the
    cache (peft 0.21.2 on transformers 5.24 looks for the cache under its former name, re-inserts the
    virtual tokens at every step and decodes garbage); checked by behaviour on one prompt."""
    config = model.peft_config[model.active_adapter]
    if not config.is_prompt_learning or str(config.peft_type).endswith("PREFIX_TUNING"):
        return  # prefix tuning decodes only with the cache (its prefix lives there)
    one = {k: v[:1] for k, v in enc.items()}
    kw = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False}
    cached = model.generate(**one, use_cache=True, **kw)
    if not torch.equal(cached, model.generate(**one, use_cache=False, **kw)):
        import transformers

        raise RuntimeError(
            f"peft's greedy decoding with its {config.peft_type} adapter differs with and without the "
            f"cache on transformers {transformers.__version__}: peft's prompt-learning decoding does "
            "not find this version's cache; run peft's cells with --peft-python (an environment with "
            "transformers 5.23)"
        )


def bleu_scores(impl: str, model: Any, tokenizer: Any, spec: Any, rows: list[dict], evaluation: dict) -> dict:
    """BLEU and exact match on the held-out inputs (each with all its references), greedy decoding."""
    from peftkit.data import sft_prompt
    from peftkit.evaluation import bleu, exact_match, group_references
    from peftkit.generation import generate_texts

    inputs, refs = group_references(
        [str(r[spec.prompt_column]) for r in rows], [str(r[spec.response_column]) for r in rows]
    )
    n = evaluation["inputs"] or len(inputs)
    inputs, refs = inputs[:n], refs[:n]
    prompts = [sft_prompt(tokenizer, x, spec.system_prompt) for x in inputs]
    model.eval()
    gen = generate_texts if impl == "peftkit" else generate_peft
    hyps = [h.strip() for h in gen(model, tokenizer, prompts, max_new_tokens=evaluation["max_new_tokens"])]
    return {
        "eval_bleu": bleu(hyps, refs),
        "eval_exact_match": exact_match(hyps, refs),
        "eval_inputs": len(inputs),
        "sample": hyps[:2],
    }


def run_cell(cell: Cell) -> dict[str, Any]:
    """Train and evaluate one cell in this process; every measured number of the cell."""
    from peftkit.data import Collator, encode
    from peftkit.pipeline import TASKS as PIPELINE_TASKS
    from peftkit.pipeline import load_base, read_split
    from peftkit.run_config import build_run_config

    run_cfg = build_run_config({**cell.run, "output_dir": "unused"})
    train_rows, eval_rows = read_split(run_cfg)
    spec = run_cfg.task.with_labels(train_rows) if run_cfg.task.type == "classification" else run_cfg.task
    if cell.impl == "peft" and run_cfg.model.quantize:
        labels, seed = len(spec.label_list()), run_cfg.train.seed
        base, tok = load_peft_qlora_base(run_cfg.model.name, labels, seed), load_tokenizer(run_cfg)
    else:
        base, tok = load_base(run_cfg, spec)
    collate = Collator(tok.pad_token_id)
    train_ex = encode(train_rows, tok, spec).examples
    eval_ex = encode(eval_rows, tok, spec).examples if spec.type == "classification" else []
    loss_fn, eval_fn = PIPELINE_TASKS[spec.type](base, tok, spec, eval_ex, collate)
    steps = run_cfg.train.max_steps or int(
        run_cfg.train.epochs * -(-len(train_ex) // run_cfg.train.batch_size)
    )
    model = wrap(cell.impl, cell.method, base, run_cfg, spec, steps)
    trainable = trainable_params(model)
    with tempfile.TemporaryDirectory(prefix="peftkit-bench-") as tmp:
        result, step_s, step_tokens = train_cell(
            model, train_ex, collate, run_cfg.train, loss_fn, eval_fn if eval_ex else None, Path(tmp)
        )
        size = saved_size(model, Path(tmp) / "adapter")
        history = [
            {k: r[k] for k in ("step", "train_loss") if k in r} for r in result.history if "train_loss" in r
        ]
        final = next((r for r in reversed(result.history) if "eval_accuracy" in r), {})
    metrics = {k: v for k, v in final.items() if k.startswith("eval_")}
    if spec.type == "classification":
        quality = 100 * metrics["eval_accuracy"]
    else:
        metrics = bleu_scores(cell.impl, model, tok, spec, eval_rows, cell.eval)
        quality = metrics["eval_bleu"]
    return {
        "status": "ok",
        "quality": quality,
        "metrics": metrics,
        "trainable": trainable,
        "adapter_bytes": size,
        **timing_summary(step_s, step_tokens),
        "train_examples": len(train_ex),
        "eval_examples": len(eval_ex),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "loss_curve": history,
    }


def child_main(spec_path: Path, out_path: Path) -> None:
    """One cell in this (fresh) process; the result, or the failure, is written to ``out_path``."""
    from lora_overhead import machine_info

    from peftkit.io import atomic_write_json

    cell = Cell(**json.loads(spec_path.read_text()))
    t0 = time.perf_counter()
    try:
        measured = run_cell(cell)
    except Exception as err:  # recorded as a failed cell with its cause, shown as such in the table
        measured = {
            "status": "failed",
            "error": f"{type(err).__name__}: {err}"[:500],
            "trace": traceback.format_exc()[-3000:],
        }
    measured["process_s"] = time.perf_counter() - t0  # load, train, evaluate; no lock wait
    atomic_write_json(
        out_path, {"key": cell.key, "cell": cell.to_dict(), "machine": machine_info(), **measured}
    )
