"""One rank of a test run started by ``torch.distributed.run`` (see tests/test_distributed.py).

Usage: dist_worker.py OUT_DIR RUN_YAML

Trains, on 2 ranks (gloo), every row of RUNS (LoRA, prompt tuning and a bottleneck adapter under
DDP and FSDP2, plus the failure checklist: rank-dependent draws, gradient checkpointing), LoRA
crashed on both ranks and resumed, every case of the contract table under DDP and FSDP2, and last
``peftkit train --config RUN_YAML`` (into OUT_DIR/cli). Rank 0 writes each run's trainable tensors,
its metrics and its FSDP2 units into OUT_DIR; a run the trainer refuses writes the refusal.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cases import CASES  # noqa: E402
from conftest import build  # noqa: E402

import peftkit  # noqa: E402
from peftkit.cli import main  # noqa: E402
from peftkit.errors import ConfigError  # noqa: E402
from peftkit.training import TrainConfig, Trainer, distributed, sharding  # noqa: E402
from peftkit.training.state import trainable_tensors  # noqa: E402
from scripts.train_tiny import collate, examples  # noqa: E402

METHODS = {  # the rows the issue names: a layer method, a virtual-token method, an adapter module
    "lora": lambda: peftkit.LoraConfig(r=4, target_modules=["q_proj", "v_proj", "up_proj"]),
    "prompt_tuning": lambda: peftkit.PromptTuningConfig(num_virtual_tokens=3),
    "bottleneck": lambda: peftkit.BottleneckConfig(bottleneck_size=4),
}
# 40 examples, 2 per rank per micro-batch, 2 micro-batches: 8 a step, the last step of an epoch short
TRAIN = {"lr": 1e-2, "max_steps": 6, "batch_size": 2, "grad_accum": 2, "seed": 3, "log_every": 1}
CONTRACT = {"lr": 1e-2, "max_steps": 2, "batch_size": 1, "grad_accum": 1, "seed": 1, "log_every": 1}
RUNS = [(m, mode, {}) for m in METHODS for mode in ("ddp", "fsdp")] + [
    ("lora", "ddp", {"rank_seed": True}),  # each rank draws its own init: rank 0's must win
    ("lora", "fsdp", {"rank_seed": True}),
    ("lora", "ddp", {"gradient_checkpointing": True}),  # non-reentrant: lora_B is marked ready once
    ("lora", "fsdp", {"gradient_checkpointing": True}),
]


def run_name(method: str, mode: str, extra: dict) -> str:
    return "-".join([method, mode, *sorted(extra)])


def contract_examples(kind: str, n: int = 6) -> list[dict]:
    g = torch.Generator().manual_seed(5)
    rows = []
    for _ in range(n):
        row = {"input_ids": torch.randint(3, 90, (6,), generator=g).tolist()}
        if kind != "mlp":
            row["attention_mask"] = [1] * 6
        if kind == "t5":
            row["decoder_input_ids"] = torch.randint(3, 90, (4,), generator=g).tolist()
        rows.append(row)
    return rows


def logits_loss(model, batch: dict) -> torch.Tensor:
    """A loss every model kind of the table has (its outputs' mean square)."""
    out = model(**batch)
    out = out if isinstance(out, torch.Tensor) else out.logits
    return out.float().pow(2).mean()


def units(model) -> list[dict]:
    """Each FSDP2 unit and the trainable and frozen parameters it manages itself."""
    out = []
    for path, module in model.named_modules():
        if isinstance(module, torch.distributed.fsdp.FSDPModule):
            inner = {id(p) for m in module.modules() if m is not module for p in _managed(m)}
            own = [p for p in module.parameters() if id(p) not in inner]
            trainable = sum(1 for p in own if p.requires_grad)
            out.append({"path": path, "trainable": trainable, "frozen": len(own) - trainable})
    return out


def _managed(module):
    return module.parameters() if isinstance(module, torch.distributed.fsdp.FSDPModule) else []


def crash_at(call: int):
    """A loss that raises on every rank at the same micro-batch: the run stops between collectives."""
    calls = {"n": 0}

    def loss_fn(model, batch):
        calls["n"] += 1
        if calls["n"] == call:
            raise RuntimeError("crash")
        return model(**batch).loss

    return loss_fn


def train(model, data, config: TrainConfig, out: Path, loss_fn=None, resume: bool = False) -> dict:
    kw = {"loss_fn": loss_fn} if loss_fn else {}
    trainer = Trainer(model, data, collate, config, out, show_progress=False, **kw)
    trainer.train(resume=resume)
    frozen_grads = [n for n, p in model.named_parameters() if not p.requires_grad and p.grad is not None]
    report = {"units": units(model), "frozen_grads": frozen_grads}
    with sharding.gathered(model):
        # every rank exports; the trainable adapter only (a fusion's frozen adapters stay sharded)
        model.save_pretrained(out / "adapter", adapter_names=["default"], is_main_process=trainer.world.main)
        if trainer.world.main:
            tensors = {k: v.cpu() for k, v in trainable_tensors(model).items()}
            save_file(tensors, out / "trainable.safetensors")
    return report


def tiny(method: str, seed: int = 0):
    model = build("llama", seed=seed)
    torch.manual_seed(seed)
    return peftkit.get_peft_model(model, METHODS[method]())


def run_methods(root: Path, world: distributed.World) -> dict:
    reports = {}
    for method, mode, extra in RUNS:
        model = tiny(method, seed=world.rank if extra.get("rank_seed") else 0)
        flags = {k: v for k, v in extra.items() if k != "rank_seed"}
        config = TrainConfig(**TRAIN, **flags, distributed=mode, save_every=3)
        name = run_name(method, mode, extra)
        reports[name] = train(model, examples(), config, root / name)
    return reports


def run_resumes(root: Path) -> dict:
    """LoRA stopped in step 5 (2 micro-batches a step) after its checkpoint at step 3, then resumed."""
    reports = {}
    for mode in ("ddp", "fsdp"):
        config, out = TrainConfig(**TRAIN, distributed=mode, save_every=3), root / f"lora-{mode}-resumed"
        try:
            train(tiny("lora"), examples(), config, out, loss_fn=crash_at(9))
        except RuntimeError as err:
            assert str(err) == "crash", err
        reports[out.name] = train(tiny("lora"), examples(), config, out, resume=True)
    return reports


def run_qlora(root: Path) -> dict:
    """LoRA on a 4-bit NF4 base: DDP trains it, FSDP2 refuses it (bitsandbytes keeps the quantisation
    state outside the tensor FSDP2 shards). Nothing when bitsandbytes is not installed."""
    try:
        from peftkit.quantization import quantize_model, require_bitsandbytes

        require_bitsandbytes()
    except ImportError:
        return {}
    reports = {}
    for mode in ("ddp", "fsdp"):
        model = quantize_model(build("llama"))
        torch.manual_seed(0)
        model = peftkit.get_peft_model(model, METHODS["lora"]())
        config = TrainConfig(**{**TRAIN, "max_steps": 3}, distributed=mode)
        try:
            reports[f"qlora-{mode}"] = train(model, examples(), config, root / f"qlora-{mode}")
        except ConfigError as err:
            reports[f"qlora-{mode}"] = {"refused": str(err)}
    return reports


def run_contract(root: Path) -> dict:
    reports = {}
    for case in CASES:
        for mode in ("ddp", "fsdp"):
            model = build(case.kind)
            torch.manual_seed(0)
            model = case.wrap(model)
            config = TrainConfig(**CONTRACT, distributed=mode)
            name = f"{case.id}-{mode}"
            try:
                reports[name] = train(model, contract_examples(case.kind), config, root / name, logits_loss)
            except ConfigError as err:
                reports[name] = {"refused": str(err)}
            except ValueError as err:  # the method's own refusal, as in one process
                reports[name] = {"error": str(err)}
    return reports


if __name__ == "__main__":
    root, run_yaml = Path(sys.argv[1]), sys.argv[2]
    with distributed.process_group() as world:
        assert world.size == 2, world
        reports = {
            "methods": {**run_methods(root, world), **run_resumes(root), **run_qlora(root)},
            "contract": run_contract(root),
        }
        reports["cli"] = main(["train", "--config", run_yaml, "--output-dir", str(root / "cli"), "--quiet"])
        if world.main:
            (root / "reports.json").write_text(json.dumps(reports, indent=1))
