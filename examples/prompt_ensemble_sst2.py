"""Prompt ensemble on SST-2 / MiniLM-L6: K prompts (each with its own classifier head) trained in the
same batches, then each prompt's accuracy beside the mean-probability and majority-vote ensembles.

    python examples/prompt_ensemble_sst2.py --members 3 --out runs/sst2-minilm-prompt-ensemble

Data, split and budget come from examples/sst2_minilm_prompt.yaml (8,000 rows, one epoch).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from peftkit.ensemble import PromptEnsemble, ensemble_accuracy
from peftkit.io import atomic_write_json
from peftkit.pipeline import _batches, prepare
from peftkit.run_config import build_run_config, load_yaml
from peftkit.training import Trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="examples/sst2_minilm_prompt.yaml")
    parser.add_argument("--members", type=int, default=3)
    parser.add_argument("--out", default="runs/sst2-minilm-prompt-ensemble")
    parser.add_argument("--limit", type=int, default=0, help="fewer training rows (smoke runs)")
    args = parser.parse_args()
    data = load_yaml(args.config)
    if args.limit:
        data["data"] = {**data["data"], "limit": args.limit}
    run = build_run_config(data)
    p = prepare(run)  # the base with adapter "default" (prompt + classifier head)
    names = ["default"] + [f"prompt{k}" for k in range(1, args.members)]
    for name in names[1:]:  # same config, its own random draw of vocabulary embeddings and head
        p.model.add_adapter(name, p.model.peft_config["default"])
    ensemble = PromptEnsemble(p.model, names)
    print(p.model.parameter_report())
    trainer = Trainer(
        ensemble,
        p.train,
        p.collate,
        replace(run.train, eval_every=0),
        args.out,
        loss_fn=lambda m, b: m(**b).loss,
    )
    result = trainer.train()
    scores = ensemble_accuracy(ensemble, _batches(p.eval, p.collate))
    summary = {
        "members": names,
        "eval_examples": len(p.eval),
        "train_steps": result.steps,
        "train_s": round(result.wall_s, 1),
        "trainable": p.model.parameter_report().trainable,
        "accuracy": scores,
    }
    atomic_write_json(Path(args.out) / "ensemble.json", summary)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
