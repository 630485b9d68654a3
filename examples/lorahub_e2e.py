"""LoRAHub on tasks derived from the shared data: compose four LoRAs for a held-out task.

    python examples/lorahub_e2e.py --sst2 ../shared/data/sst2/train.tsv --e2e ../shared/data/e2e/train.csv

Source tasks (one LoRA each on SmolLM2-135M, same settings): SST-2 sentiment (answer positive /
negative), and from E2E references the restaurant's food, area and eatType. Held-out related
task: is the restaurant family friendly (yes / no), read from the reference text. E2E MRs are
split (seeded) so that held-out MRs appear in no training or few-shot example. Compares, on the
held-out MRs: zero-shot, LoRAHub (nevergrad search over the four LoRAs on the few examples),
and a LoRA trained on the same few examples. Greedy answers of at most 6 tokens, exact match
after lower-casing and stripping punctuation.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import re
import string
from pathlib import Path

from peftkit import PeftModel
from peftkit.composition.lorahub import LoraHubConfig, few_shot_batches, lorahub_search
from peftkit.data import sft_prompt
from peftkit.generation import generate_texts
from peftkit.models import load_model
from peftkit.pipeline import train_run
from peftkit.run_config import build_run_config

QUESTIONS = {
    "food": "What kind of food does the restaurant serve? Answer with the cuisine only.",
    "area": "In which area is the restaurant? Answer riverside or city centre.",
    "eatType": "What type of place is it? Answer pub, restaurant or coffee shop.",
    "familyFriendly": "Is the place family friendly? Answer yes or no.",
}
SENTIMENT = "Is the sentiment of this review positive or negative? Answer positive or negative."


def attribute(mr: str, name: str) -> str | None:
    found = re.search(rf"{name}\[([^\]]*)\]", mr)
    return found.group(1).strip() if found else None


def e2e_tasks(path: str, seed: int) -> tuple[dict[str, list[dict]], dict[str, list[dict]]]:
    """Per attribute: (train rows, held-out rows) as {input, output}; held-out MRs are 20%, seeded."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    mrs = sorted({r["mr"] for r in rows})
    random.Random(seed).shuffle(mrs)
    held = set(mrs[: len(mrs) // 5])
    train: dict[str, list[dict]] = {k: [] for k in QUESTIONS}
    test: dict[str, list[dict]] = {k: [] for k in QUESTIONS}
    for r in rows:
        for name, question in QUESTIONS.items():
            value = attribute(r["mr"], name)
            if value:
                example = {"input": f"{question}\nText: {' '.join(r['ref'].split())}", "output": value}
                (test if r["mr"] in held else train)[name].append(example)
    return train, test


def sst2_task(path: str, n: int, seed: int) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        rows = [line.rstrip("\n").split("\t") for line in f][1:]
    random.Random(seed).shuffle(rows)
    label = {"0": "negative", "1": "positive"}
    return [{"input": f"{SENTIMENT}\nText: {s}", "output": label[y]} for y, s in rows[:n]]


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def train_lora(
    model: str, train: str, out: Path, steps: int, batch: int, eval_file: str | None = None
) -> Path:
    data = {"train": train, "seed": 0, "eval_fraction": 0.05}
    if eval_file:
        data["eval"] = eval_file
    run = {
        "model": {"name": model},
        "task": {"type": "sft", "prompt_column": "input", "response_column": "output", "max_length": 128},
        "data": data,
        "adapter": {"method": "lora", "r": 8, "lora_alpha": 16, "target_modules": "all-linear"},
        "train": {"lr": 1e-3, "max_steps": steps, "batch_size": batch, "warmup_steps": 2, "log_every": 10},
        "output_dir": str(out),
    }
    summary = train_run(build_run_config(run), show_progress=False)
    print(out.name, summary.get("report"))
    return out / "adapter"


def norm(text: str) -> str:
    return text.lower().strip().strip(string.punctuation + " ").strip()


def accuracy(model, tok, rows: list[dict]) -> float:
    prompts = [sft_prompt(tok, r["input"]) for r in rows]
    answers = generate_texts(model, tok, prompts, max_new_tokens=6, batch_size=16)
    return sum(norm(a) == norm(r["output"]) for a, r in zip(answers, rows)) / len(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sst2", default="../shared/data/sst2/train.tsv")
    p.add_argument("--e2e", default="../shared/data/e2e/train.csv")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--shots", type=int, default=10, help="few-shot examples of the held-out task (5 to 20)")
    p.add_argument("--rows", type=int, default=800, help="training rows per source task")
    p.add_argument("--steps", type=int, default=40, help="steps per source LoRA (batch 8)")
    p.add_argument("--test", type=int, default=200, help="held-out examples scored")
    p.add_argument("--budget", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/lorahub-e2e")
    args = p.parse_args()
    out, rng = Path(args.out), random.Random(args.seed)
    train, test = e2e_tasks(args.e2e, args.seed)
    sources = {"sst2": sst2_task(args.sst2, args.rows, args.seed)}
    for name in ("food", "area", "eatType"):
        sources[name] = rng.sample(train[name], min(args.rows, len(train[name])))
    few = rng.sample(train["familyFriendly"], args.shots)
    held = rng.sample(test["familyFriendly"], min(args.test, len(test["familyFriendly"])))
    adapters = {
        name: train_lora(
            args.model, write_jsonl(out / "data" / f"{name}.jsonl", rows), out / name, args.steps, 8
        )
        for name, rows in sources.items()
    }
    few_file = write_jsonl(out / "data" / "few.jsonl", few)
    few_lora = train_lora(
        args.model, few_file, out / "few-shot-lora", args.steps, min(8, args.shots), few_file
    )

    base, tok = load_model(args.model, task="causal-lm")
    results = {
        "shots": args.shots,
        "test": len(held),
        "steps": args.steps,
        "zero_shot": accuracy(base.eval(), tok, held),
    }
    print("partial:", json.dumps(results), flush=True)
    names = list(adapters)
    model = PeftModel.from_pretrained(base, adapters[names[0]], adapter_name=names[0])
    for name in names[1:]:
        model.load_adapter(adapters[name], adapter_name=name)
    for name in names:
        model.set_adapter(name)
        results[f"source_{name}"] = accuracy(model, tok, held)
        print("partial:", json.dumps(results), flush=True)
    batches = few_shot_batches(tok, few, batch_size=args.shots)
    hub = lorahub_search(
        model, names, batches, LoraHubConfig(budget=args.budget, seed=args.seed), progress=False
    )
    results["lorahub"] = accuracy(model, tok, held)
    print("partial:", json.dumps(results), flush=True)
    results["lorahub_weights"] = dict(zip(names, hub.weights))
    print("partial:", json.dumps(results), flush=True)
    results["lorahub_few_shot_loss"] = hub.loss
    print("partial:", json.dumps(results), flush=True)
    model.unload()
    few_model = PeftModel.from_pretrained(base, few_lora).eval()
    results["few_shot_lora"] = accuracy(few_model, tok, held)
    print("partial:", json.dumps(results), flush=True)
    print(json.dumps(results, indent=2))
    (out / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
