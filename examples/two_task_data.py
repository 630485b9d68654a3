"""Two binary classification tasks for multi-task runs (AdaPtLoRA vs one LoRA per task), with one
fixed split shared by every run:

- ``sst2``: SST-2 sentiment (label 0/1), ``--sst2-rows`` rows drawn with seed 0, 10% held out.
- ``family``: is the E2E venue family-friendly, read from the reference text (no/yes -> 0/1; the
  references of one meaning representation stay on one side of the split), 10% of MRs held out.

    python examples/two_task_data.py ../shared/data/sst2/train.tsv ../shared/data/e2e/train.csv \
        runs/data/two_task

writes ``{sst2,family,both}_{train,eval}.tsv`` with columns ``text, label, task`` (``both`` is the
two tasks together, for a run that reads the task column). Output belongs under the ignored ``runs/``.
"""

from __future__ import annotations

import argparse
import csv
import random
import re
from collections import Counter
from pathlib import Path

LABELS = {"no": 0, "yes": 1}


def sst2_rows(path: str, count: int, seed: int) -> tuple[list[dict], list[dict]]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = [
            {"text": r["sentence"].strip(), "label": int(r["label"]), "task": "sst2"}
            for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        ]
    random.Random(seed).shuffle(rows)
    rows = rows[:count]
    held = len(rows) // 10
    return rows[held:], rows[:held]


def family_rows(path: str, seed: int, limit: int) -> tuple[list[dict], list[dict]]:
    with open(path, newline="", encoding="utf-8") as f:
        raw = [(r["mr"], " ".join(r["ref"].split())) for r in csv.DictReader(f)]
    rows = []
    for mr, ref in raw:
        found = re.search(r"familyFriendly\[([^\]]*)\]", mr)
        if found and found.group(1).strip() in LABELS:
            rows.append({"mr": mr, "text": ref, "label": LABELS[found.group(1).strip()], "task": "family"})
    mrs = sorted({r["mr"] for r in rows})
    random.Random(seed).shuffle(mrs)
    held_mrs = set(mrs[: len(mrs) // 10])
    train = [r for r in rows if r["mr"] not in held_mrs]
    random.Random(seed + 1).shuffle(train)
    return train[:limit] if limit else train, [r for r in rows if r["mr"] in held_mrs]


def write(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
        writer.writerow(["text", "label", "task"])
        writer.writerows([r["text"], r["label"], r["task"]] for r in rows)
    print(f"{path}: {len(rows)} rows, labels {dict(Counter((r['task'], r['label']) for r in rows))}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("sst2", help="SST-2 train.tsv (label, sentence)")
    p.add_argument("e2e", help="E2E csv (mr, ref)")
    p.add_argument("out", help="output folder")
    p.add_argument("--sst2-rows", type=int, default=2000, help="SST-2 rows drawn (10%% held out)")
    p.add_argument("--family-train", type=int, default=1800, help="family training rows kept (0: all)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    splits = {
        "sst2": sst2_rows(args.sst2, args.sst2_rows, args.seed),
        "family": family_rows(args.e2e, args.seed, args.family_train),
    }
    for task, (train, held) in splits.items():
        write(out / f"{task}_train.tsv", train)
        write(out / f"{task}_eval.tsv", held)
    both_train = splits["sst2"][0] + splits["family"][0]
    random.Random(args.seed + 2).shuffle(both_train)
    write(out / "both_train.tsv", both_train)
    write(out / "both_eval.tsv", splits["sst2"][1] + splits["family"][1])


if __name__ == "__main__":
    main()
