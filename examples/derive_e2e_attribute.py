"""Derive a text-classification task from E2E: read an attribute of the meaning representation
(default ``familyFriendly``, yes/no) back from the reference text.

    python examples/derive_e2e_attribute.py ../shared/data/e2e/train.csv runs/data/e2e_family.tsv

Writes ``mr<TAB>text<TAB>label`` for the references whose MR sets the attribute (``mr`` lets a run
keep all references of one MR on one side of the split: ``data.group_column: mr``). The output
belongs outside the repository or under the ignored ``runs/``.
"""

from __future__ import annotations

import argparse
import csv
import re
from collections import Counter
from pathlib import Path


def attribute(mr: str, name: str) -> str | None:
    found = re.search(rf"{re.escape(name)}\[([^\]]*)\]", mr)
    return found.group(1).strip() if found else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("source", help="E2E csv with columns mr, ref")
    p.add_argument("out", help="TSV to write (mr, text, label)")
    p.add_argument("--attribute", default="familyFriendly", help="MR attribute to predict")
    args = p.parse_args()
    with open(args.source, newline="", encoding="utf-8") as f:
        rows = [(r["mr"], r["ref"], attribute(r["mr"], args.attribute)) for r in csv.DictReader(f)]
    rows = [(mr, " ".join(ref.split()), label) for mr, ref, label in rows if label]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
        writer.writerow(["mr", "text", "label"])
        writer.writerows(rows)
    print(f"{out}: {len(rows)} rows, labels {dict(Counter(label for _, _, label in rows))}")


if __name__ == "__main__":
    main()
