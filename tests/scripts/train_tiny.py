"""Train LoRA on a tiny Llama with synthetic data; optionally SIGKILL itself after N steps.

Usage: train_tiny.py OUT_DIR [--resume] [--kill-after N]
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import build  # noqa: E402

import peftkit  # noqa: E402
from peftkit.training import TrainConfig, Trainer  # noqa: E402


def examples(n: int = 40) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 90, (n, 8), generator=g).tolist()
    return [{"input_ids": x, "attention_mask": [1] * 8, "labels": x} for x in ids]


def collate(rows: list[dict]) -> dict:
    return {k: torch.tensor([r[k] for r in rows]) for k in rows[0]}


def main() -> None:
    out, resume = Path(sys.argv[1]), "--resume" in sys.argv
    kill_after = int(sys.argv[sys.argv.index("--kill-after") + 1]) if "--kill-after" in sys.argv else 0
    model = peftkit.get_peft_model(
        build("llama"), peftkit.LoraConfig(r=4, target_modules="all-linear", lora_dropout=0.1)
    )
    calls = {"n": 0}

    def loss_fn(m, batch):
        calls["n"] += 1
        if kill_after and calls["n"] > kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
        return m(**batch).loss

    cfg = TrainConfig(
        lr=1e-2,
        max_steps=12,
        batch_size=4,
        grad_accum=2,
        save_every=3,
        warmup_steps=2,
        schedule="cosine",
        log_every=1,
        seed=7,
    )
    Trainer(model, examples(), collate, cfg, out, loss_fn=loss_fn, show_progress=False).train(resume=resume)
    model.save_pretrained(out / "adapter")


if __name__ == "__main__":
    main()
