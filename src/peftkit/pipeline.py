"""From a :class:`RunConfig` to a trained adapter: load, read, split, encode, wrap, train, save.

Each task type brings its model head, its loss and its evaluation (``TASKS`` below); everything
else is shared.
"""

from __future__ import annotations

import random
import sys
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from .data import IGNORE_INDEX, Collator, TaskSpec, encode, read_records
from .data.cloze import cloze_logits, cloze_loss, verbalizer_token_ids
from .data.packing import training_collator
from .errors import ConfigError
from .evaluation import accuracy, macro_f1
from .model import PeftModel, get_peft_model
from .precision import auto_dtype, base_dtype, warn_if_slow_bf16
from .run_config import DataSection, RunConfig, build_run_config, load_yaml
from .training import Trainer, distributed, sharding
from .training.config import BEFORE_LEVERS
from .training.resume import resume_changes
from .training.run_folder import claim_run_folder
from .training.state import require_checkpoints
from .training.trainer import default_loss

HEAD_NAMES = ("classifier", "score")


@dataclass
class Prepared:
    model: nn.Module
    tokenizer: object
    spec: TaskSpec
    train: list[dict]
    eval: list[dict]
    collate: Callable[[list[dict]], dict]
    loss_fn: Callable
    eval_fn: Callable[[nn.Module], dict[str, float]]
    weigh: Callable[[list[dict]], float] = len  # what the task's loss averages over (see Trainer)


def model_task(spec: TaskSpec) -> str:
    if spec.type == "classification":
        return "seq-cls"
    if spec.type == "seq2seq":
        return "seq2seq"
    return "masked-lm" if spec.type == "cloze" and spec.model_kind == "masked" else "causal-lm"


def load_base(run: RunConfig, spec: TaskSpec, training: bool = True):
    """The base model and tokenizer: in the dtype ``train.precision`` picks for a run that trains, in
    ``model.dtype`` for one that evaluates a saved adapter (``peftkit eval``, as before issue 19)."""
    from .models import load_model

    kwargs = {"num_labels": len(spec.label_list())} if spec.type == "classification" else {}
    dtype = _base_dtype(run) if training else getattr(torch, run.model.dtype)
    # a new head (and the adapter drawn after it) is the same draw on every run with this seed
    torch.manual_seed(run.train.seed)
    model, tok = load_model(
        run.model.name,
        task=model_task(spec),
        dtype=dtype,
        quantize=run.model.quantize,
        compute_dtype=_compute_dtype(run) if run.model.quantize else None,
        **kwargs,
    )
    if run.model.quantize:
        from .quantization import quant_stats

        print(quant_stats(model))
    return model, tok


def _compute_dtype(run: RunConfig) -> torch.dtype:
    """A 4-bit base's matmul dtype: ``model.compute_dtype``, ``auto`` resolved on this device."""
    device = distributed.current().device.type
    if run.model.compute_dtype == "auto":
        return auto_dtype(device)
    if run.model.compute_dtype == "bfloat16":
        warn_if_slow_bf16("model.compute_dtype: bfloat16", device)
    return getattr(torch, run.model.compute_dtype)


def _base_dtype(run: RunConfig) -> torch.dtype:
    """train.precision picks the base's dtype (issue 19). Under ``auto`` a 4-bit base keeps model.dtype,
    and a run sharded by FSDP2 over several processes keeps an fp32 base (a bf16 one is refused there:
    not checked against one process yet)."""
    fsdp = run.train.distributed == "fsdp" and distributed.current().active
    if fsdp and run.train.precision == "bf16":
        raise ConfigError(
            "train.precision", "bf16 is not supported with train.distributed: fsdp; use fp32, or ddp"
        )
    if (run.model.quantize or fsdp) and run.train.precision == "auto":
        return getattr(torch, run.model.dtype)
    return base_dtype(run.train.precision, run.model.dtype, distributed.current().device.type)


def read_split(run: RunConfig) -> tuple[list[dict], list[dict]]:
    """Training and held-out records; with no eval file, a seeded split that keeps groups together."""
    d, required = run.data, run.task.required_columns()
    if d.hub:
        from .data import load_hub_dataset

        rows = load_hub_dataset(d.hub, d.hub_split)
    elif d.train:
        rows = _read_file(d, d.train, required)
    else:
        raise ValueError("data.train: no training data; set data.train (a jsonl/csv/tsv file) or data.hub")
    if d.eval:
        train, held_rows = rows, _read_file(d, d.eval, required)
    else:
        train, held_rows = _split(rows, d.eval_fraction, d.group_column, d.seed)
    if d.holdout == "validation":  # the held-out rows are never read: validate on a part of train
        train, held_rows = _split(train, d.eval_fraction, d.group_column, d.seed + VALIDATION_SEED)
    train = train[: d.limit] if d.limit else train
    return train, (held_rows[: d.eval_limit] if d.eval_limit else held_rows)


VALIDATION_SEED = 7919  # offsets the validation split's seed from the test split's


def _read_file(d: DataSection, path: str, required: list[str]) -> list[dict]:
    """The good records of ``path``; skipped rows are reported with their line numbers."""
    result = read_records(path, format=d.format, columns=d.columns, delimiter=d.delimiter, required=required)
    if result.problems:
        print(f"data: {result.summary()}")
    return result.records


def _split(rows: list[dict], fraction: float, group: str | None, seed: int) -> tuple[list[dict], list[dict]]:
    keys = list(dict.fromkeys(str(r.get(group)) if group else i for i, r in enumerate(rows)))
    random.Random(seed).shuffle(keys)
    held_keys = set(keys[: round(len(keys) * fraction)])
    held = [r for i, r in enumerate(rows) if (str(r.get(group)) if group else i) in held_keys]
    train = [r for i, r in enumerate(rows) if (str(r.get(group)) if group else i) not in held_keys]
    rng = random.Random(seed + 1)
    rng.shuffle(train)
    return train, held


def prepare(
    run: RunConfig, adapter_path: str | None = None, bare: bool = False, device: torch.device | None = None
) -> Prepared:
    """Everything a run needs, with the adapter freshly added, loaded from ``adapter_path``, or none
    (``bare``: the base model alone, e.g. zero-shot cloze); batches are collated onto ``device``
    (a rank's GPU), when given."""
    train_rows, eval_rows = read_split(run)
    spec = run.task.with_labels(train_rows) if run.task.type == "classification" else run.task
    base, tok = load_base(run, spec, training=not (bare or adapter_path))
    train_examples = _encode("train", train_rows, tok, spec)
    eval_examples = _encode("eval", eval_rows, tok, spec)
    if bare:
        model = base
    elif adapter_path:
        model = _with_adapter(base, run.model.adapters, adapter_path)
    else:
        model = _with_adapter(base, run.model.adapters, _with_head(run.adapter, base, spec))
    collate = _onto(device, Collator(tok.pad_token_id))
    loss_fn, eval_fn = TASKS[spec.type](model, tok, spec, eval_examples, collate)
    weigh = LOSS_UNITS.get(spec.type, len)
    return Prepared(model, tok, spec, train_examples, eval_examples, collate, loss_fn, eval_fn, weigh)


def _onto(device: torch.device | None, collate: Callable[[list[dict]], dict]) -> Callable[[list[dict]], dict]:
    if device is None or device.type == "cpu":
        return collate
    return lambda rows: distributed.to_device(collate(rows), device)


def _with_adapter(base: nn.Module, saved: dict[str, str], adapter) -> PeftModel:
    """The base with the saved adapters ``model.adapters`` loaded frozen, then the run's own adapter
    (a new config, or a folder to load) added as ``default`` and made active."""
    if not saved:
        return (
            PeftModel.from_pretrained(base, adapter)
            if isinstance(adapter, str)
            else get_peft_model(base, adapter)
        )
    (first, path), *rest = saved.items()
    model = PeftModel.from_pretrained(base, path, adapter_name=first)
    for name, folder in rest:
        model.load_adapter(folder, adapter_name=name)
    if isinstance(adapter, str):
        model.load_adapter(adapter, adapter_name="default")
    else:
        model.add_adapter("default", adapter)
    model.set_adapter("default")
    return model


def _encode(split: str, rows: list[dict], tok, spec: TaskSpec) -> list[dict]:
    """Encoded examples of one split, their stats printed; no rows (e.g. nothing held out) is no examples."""
    if not rows:
        print(f"{split + ':':6} no rows")
        return []
    encoded = encode(rows, tok, spec)
    print(f"{split + ':':6} {encoded.stats.summary()}")
    return encoded.examples


def _with_head(config, base: nn.Module, spec: TaskSpec):
    """A new classification head trains in full with the adapter (peft does the same for SEQ_CLS)."""
    if spec.type != "classification" or config.method == "full" or config.modules_to_save:
        return config
    heads = [n for n in HEAD_NAMES if isinstance(getattr(base, n, None), nn.Module)]
    return replace(config, modules_to_save=heads) if heads else config


def _each_batch(m: nn.Module, examples: list[dict], collate, fn, size: int = 32) -> list:
    """``fn(m, batch)`` for each held-out batch in order; in a run on several processes each rank
    evaluates its share of the batches and every rank gets all the results."""
    chunks = [examples[i : i + size] for i in range(0, len(examples), size)]
    return distributed.map_batches(lambda chunk: fn(m, collate(chunk)), chunks, distributed.current())


def _classification(model, tok, spec, examples, collate):
    def one(m, batch) -> tuple:
        out = m(**batch)
        labels = batch["labels"].tolist()
        return out.loss.item() * len(labels), out.logits.argmax(-1).tolist(), labels, batch.get("tasks", [])

    def eval_fn(m) -> dict[str, float]:
        results = _each_batch(m, examples, collate, one)
        losses = [r[0] for r in results]
        preds, labels, tasks = ([x for r in results for x in r[i]] for i in (1, 2, 3))
        return {
            **_scores(preds, labels, sum(losses) / max(len(labels), 1)),
            **_per_task(preds, labels, tasks),
        }

    return (lambda m, b: m(**b).loss), eval_fn


def _cloze(model, tok, spec, examples, collate):
    ids = verbalizer_token_ids(tok, spec)

    def one(m, batch) -> tuple:
        logits = cloze_logits(m, batch, ids)  # (B, num_labels)
        loss = nn.functional.cross_entropy(logits, batch["labels"], reduction="sum").item()
        return loss, logits.argmax(-1).tolist(), batch["labels"].tolist()

    def eval_fn(m) -> dict[str, float]:
        results = _each_batch(m, examples, collate, one)
        losses = [r[0] for r in results]
        preds, labels = ([x for r in results for x in r[i]] for i in (1, 2))
        return _scores(preds, labels, sum(losses) / max(len(labels), 1))

    return (lambda m, b: cloze_loss(m, b, ids)), eval_fn


def _seq2seq_nll(model: nn.Module, batch: dict) -> tuple[float, int]:
    """Summed NLL of the target tokens and their count; decoder logits align with labels (no shift)."""
    logits = model(**batch).logits.float()  # (B, T_target, V)
    labels = batch["labels"]  # (B, T_target), -100 on padding
    nll = nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="sum")
    return nll.item(), int((labels != -100).sum())


def _lm(model, tok, spec, examples, collate):
    from .evaluation import batch_nll

    nll_fn = _seq2seq_nll if spec.type == "seq2seq" else batch_nll

    def eval_fn(m) -> dict[str, float]:
        total = count = 0.0
        for nll, n in _each_batch(m, examples, collate, nll_fn, 16):
            total, count = total + nll, count + n
        loss = total / max(count, 1)
        return {"eval_loss": loss, "eval_perplexity": float(torch.tensor(loss).exp())}

    return (default_loss if spec.type == "sft" else lambda m, b: m(**b).loss), eval_fn  # sft: train.lm_loss


def _per_task(preds: list[int], labels: list[int], tasks: list[str]) -> dict[str, float]:
    """Multi-task data (``task.task_column``): accuracy on each task's rows too."""
    out = {}
    for task in dict.fromkeys(tasks):
        rows = [i for i, t in enumerate(tasks) if t == task]
        out[f"eval_accuracy_{task}"] = accuracy([preds[i] for i in rows], [labels[i] for i in rows])
    return out


def _scores(preds: list[int], labels: list[int], loss: float) -> dict[str, float]:
    """Accuracy and macro F1, and how much of the held-out set the most frequent prediction takes
    (1.0: the model answers one class for everything, e.g. stuck at the majority label)."""
    top = max(Counter(preds).values(), default=0)
    return {
        "eval_loss": loss,
        "eval_accuracy": accuracy(preds, labels),
        "eval_macro_f1": macro_f1(preds, labels),
        "eval_top_prediction_share": top / max(len(preds), 1),
    }


TASKS = {"classification": _classification, "cloze": _cloze, "sft": _lm, "seq2seq": _lm}


def _predicted_tokens(examples: list[dict]) -> int:
    """Label tokens a causal LM's loss averages over (position t predicts label t + 1)."""
    return sum(sum(1 for label in ex["labels"][1:] if label != IGNORE_INDEX) for ex in examples)


def _target_tokens(examples: list[dict]) -> int:
    return sum(sum(1 for label in ex["labels"] if label != IGNORE_INDEX) for ex in examples)


# LM losses average over tokens: a rank's share of a batch is its share of them (others: of examples)
LOSS_UNITS = {"sft": _predicted_tokens, "seq2seq": _target_tokens}
# what each task's eval_fn reports (multi-task classification adds eval_accuracy_<task> per task);
# eval_bleu and eval_exact_match come only from decoding (`peftkit eval --generate`), never while training
EVAL_METRICS = {
    "classification": ("eval_loss", "eval_accuracy", "eval_macro_f1", "eval_top_prediction_share"),
    "cloze": ("eval_loss", "eval_accuracy", "eval_macro_f1", "eval_top_prediction_share"),
    "sft": ("eval_loss", "eval_perplexity"),
    "seq2seq": ("eval_loss", "eval_perplexity"),
}


def check_metric_for_best(run: RunConfig) -> None:
    """``train.metric_for_best`` must be a metric this task's evaluation reports: checked before anything
    loads, not after the last step with nothing saved."""
    metric, task = run.train.metric_for_best, run.task
    known = EVAL_METRICS[task.type]
    per_task = task.type == "classification" and task.task_column and metric.startswith("eval_accuracy_")
    if metric in known or per_task:
        return
    extra = " (plus eval_accuracy_<task> with task.task_column)" if task.type == "classification" else ""
    raise ConfigError(
        "train.metric_for_best",
        f"{metric!r} is not reported by the evaluation of a {task.type} run, which reports {list(known)}"
        f"{extra}; choose one of those",
    )


def train_run(
    run: RunConfig, resume: bool = False, show_progress: bool = True, overwrite: bool = False
) -> dict:
    """Train, save the adapter, the run config, metrics.jsonl and the plot; return a summary.

    The output folder is held for the whole run (see :mod:`peftkit.training.run_folder`): a fresh run
    into a folder holding another run is refused unless ``overwrite``; ``resume`` continues the run
    there, refusing a config that differs from its ``run.yaml`` except in fields safe to change.
    """
    check_metric_for_best(run)
    out, world = Path(run.output_dir), distributed.current()
    claim = lambda: claim_run_folder(out, resume=resume, overwrite=overwrite)  # noqa: E731
    with distributed.held_on_main(claim, world):  # rank 0 holds the folder; the others wait on it
        if resume:  # before anything is loaded or written
            distributed.on_main(lambda: require_checkpoints(out / "checkpoints"), world)
        p = distributed.on_every_rank(lambda: prepare(run, device=world.device), world)
        run = replace(run, task=p.spec)  # saved with its label set, so eval reads labels the same way
        if not p.eval and run.train.eval_every:
            raise ValueError(
                "train.eval_every is set but there is no held-out data (data.eval or data.eval_fraction)"
            )
        distributed.on_main(lambda: _record_config(out / "run.yaml", run, resume), world)
        return _train_and_save(run, p, out, resume, show_progress)


def _record_config(path: Path, run: RunConfig, resume: bool) -> None:
    """Save the run config before training (a killed run can be resumed and checked), after checking
    a resumed run against the saved one."""
    if resume:
        _check_resume(path, run)
    run.save(path)


def _check_resume(saved_path: Path, run: RunConfig) -> None:
    """Refuse a config that changes the run saved at ``saved_path``; report the safe changes."""
    if not saved_path.is_file():
        warnings.warn(f"--resume: no {saved_path} to compare this run's config with", stacklevel=2)
        return
    written = load_yaml(saved_path)
    train = written.get("train") or {}
    if isinstance(train, dict):  # issue 19's levers absent: the run predates them
        written["train"] = {**BEFORE_LEVERS, **train}
    saved = build_run_config(written).to_dict()
    accepted = resume_changes(saved, run.to_dict(), str(saved_path))
    if accepted:
        print(f"resume: accepted changes (recorded in {saved_path}): {'; '.join(accepted)}", file=sys.stderr)


def _training_collate(run: RunConfig, p: Prepared, world: distributed.World) -> Callable[[list[dict]], dict]:
    """train.packing (issue 19): padding-free sft batches, collated onto this rank's device."""
    chosen = training_collator(
        run.train.packing,
        p.model,
        p.train,
        p.collate,
        p.tokenizer.pad_token_id,
        p.spec.type,
        p.spec.max_length,
    )
    return chosen if chosen is p.collate else _onto(world.device, chosen)


def _train_and_save(run: RunConfig, p: Prepared, out: Path, resume: bool, show_progress: bool) -> dict:
    world = distributed.current()
    print(p.model.parameter_report())
    print(global_batch(run, world))
    eval_fn = p.eval_fn if p.eval else None
    collate = _training_collate(run, p, world)
    trainer = distributed.on_every_rank(
        lambda: Trainer(
            p.model,
            p.train,
            collate,
            run.train,
            out,
            eval_fn=eval_fn,
            loss_fn=p.loss_fn,
            show_progress=show_progress,
            weigh=p.weigh,
        ),
        world,
    )
    result = trainer.train(resume=resume)
    with sharding.gathered(p.model):  # every rank: the adapter whole (never the frozen base)
        save = lambda: p.model.save_pretrained(  # noqa: E731 (not model.adapters' copies)
            out / "adapter", adapter_names=["default"], is_main_process=world.main
        )
        distributed.on_every_rank(save, world)
        report = str(p.model.parameter_report())
        plot, figures = distributed.on_main(lambda: _figures(p.model, out), world)
    final = [r for r in result.history if any(k.startswith("eval_") for k in r)]
    return {
        "steps": result.steps,
        "train_s": round(result.wall_s, 1),
        "final": final[-1] if final else None,
        "best": result.best,
        "adapter": str(out / "adapter"),
        "plot": plot,
        "figures": figures,
        "report": report,
    }


def global_batch(run: RunConfig, world: distributed.World) -> str:
    """The examples one optimizer step sees, and what they are made of."""
    t = run.train
    how = f", {t.distributed}" if world.active else ""
    return (
        f"train: global batch {t.batch_size * t.grad_accum * world.size} = batch_size {t.batch_size} x "
        f"grad_accum {t.grad_accum} x {world.describe()}{how}"
    )


def _figures(model: PeftModel, out: Path) -> tuple[str | None, list[str]]:
    """The training plot and the methods' own figures (e.g. AdaLoRA's rank map), when they can be drawn."""
    plot, figures = None, []
    try:
        from .plotting import plot_metrics, write_figures

        plot = str(plot_metrics(out / "metrics.jsonl", out / "training.png"))
        figures = [str(f) for f in write_figures(model, out)]
    except ImportError as err:
        print(f"no plot: {err}")
    return plot, figures


def generation_scores(p: Prepared, run: RunConfig, max_new_tokens: int) -> dict[str, float]:
    """Decode the held-out prompts; exact match and BLEU against every reference sharing the input."""
    from .data import sft_prompt
    from .evaluation import bleu, exact_match, group_references
    from .generation import generate_texts

    spec = p.spec
    if spec.type not in ("sft", "seq2seq"):
        raise ValueError(f"--generate applies to sft and seq2seq tasks, not {spec.type}")
    src, tgt = (
        (spec.prompt_column, spec.response_column)
        if spec.type == "sft"
        else (spec.source_column, spec.target_column)
    )
    _, eval_rows = read_split(run)
    inputs, refs = group_references([str(r[src]) for r in eval_rows], [str(r[tgt]) for r in eval_rows])
    prompts = (
        [sft_prompt(p.tokenizer, x, spec.system_prompt) for x in inputs] if spec.type == "sft" else inputs
    )
    hyps = [h.strip() for h in generate_texts(p.model, p.tokenizer, prompts, max_new_tokens=max_new_tokens)]
    return {
        "eval_exact_match": exact_match(hyps, refs),
        "eval_bleu": bleu(hyps, refs),
        "eval_inputs": len(inputs),
    }
