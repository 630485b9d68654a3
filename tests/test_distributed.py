"""Training on several processes: 2 ranks started by ``torch.distributed.run`` on loopback (gloo, one
thread each) against one process with the global batch, for DDP and FSDP2.

- DDP on 2 ranks x batch b equals one process with batch 2b on the same data order: the loss
  trajectory and the adapter agree to 1e-5 (LoRA, prompt tuning, a bottleneck adapter), and so does
  every case of the contract table, or it is refused by name (FSDP2 and methods with whole-tensor
  hooks); FSDP2 gives the DDP adapter, saved whole, and that adapter loads in peft.
- ``torchrun -m peftkit train``: the global batch is printed, the run equals one process with the
  global batch (variable-length SFT, held-out loss evaluated on both ranks and gathered).
- A rank killed mid-run stops the run with a clear message; every checkpoint left is complete and
  ``--resume`` on 2 ranks ends with the uninterrupted run's adapter; one process may not resume it.
- The failure checklist of peft and TRL: rank-dependent random draws (rank 0's start wins), reentrant
  checkpointing with DDP (peftkit's is non-reentrant: the checkpointed run equals the plain one),
  frozen and trainable parameters in one FSDP unit (adapter modules are units of their own; frozen
  parameters never get a gradient), adapters saved empty under sharding (saved whole, equal to DDP's).
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import peft
import pytest
import torch
from cases import CASES
from conftest import build
from safetensors.torch import load_file
from scripts.dist_worker import CONTRACT, METHODS, TRAIN, contract_examples, logits_loss, tiny
from scripts.train_tiny import collate, examples
from test_cli_e2e import ENV, QA, save_llama, write_jsonl, write_yaml

import peftkit
import peftkit.training.state as state
from peftkit.cli import main
from peftkit.errors import ConfigError
from peftkit.plotting import read_metrics
from peftkit.training import TrainConfig, Trainer

SCRIPTS = Path(__file__).parent / "scripts"
TOLERANCE = {"atol": 1e-5, "rtol": 1e-5}
# the whole contract table, every method and three architectures: Adam's normalised step turns
# reduction-order noise in a near-zero gradient into differences of ~1e-4 (one element of 1024 seen
# on transformers 5.0); the 1e-5 holds in the per-method test above
LOOSE = {"atol": 2e-4, "rtol": 1e-4}
# a loss term or a per-step update on whole adapter tensors
REFUSED_UNDER_FSDP = ("adalora", "diff-pruning-hard-concrete")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args: object, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run`` with 2 processes on loopback (one thread each)."""
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
        "--master-addr", "127.0.0.1", "--master-port", str(free_port()), *map(str, args),
    ]  # fmt: skip
    full_env = {**ENV, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=full_env)


def run_config(root: Path) -> dict:
    """A tiny SFT run (variable lengths; 6 training rows: the last batch of an epoch leaves rank 1
    without examples) on FSDP2, evaluated on the held-out rows every 4 steps."""
    data = write_jsonl(root / "qa.jsonl", [{"prompt": p, "response": r} for p, r in QA])
    return {
        "model": {"name": str(save_llama(root / "llama"))},
        "task": {"type": "sft", "max_length": 48},
        "data": {"train": str(data), "eval_fraction": 0.25},
        "adapter": {"method": "lora", "r": 2, "target_modules": ["q_proj", "v_proj"]},
        "train": {
            "lr": 1e-2, "max_steps": 8, "batch_size": 2, "save_every": 2, "log_every": 1,
            "eval_every": 4, "keep_checkpoints": 4, "distributed": "fsdp",
        },
    }  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, dict, Path, str]:
    """One torchrun of the worker (every 2-rank training run of this file but the killed one)."""
    root = tmp_path_factory.mktemp("dist")
    config = write_yaml(root / "run.yaml", run_config(root))
    done = torchrun(SCRIPTS / "dist_worker.py", root / "out", config)
    assert done.returncode == 0, done.stderr[-6000:]
    reports = json.loads((root / "out" / "reports.json").read_text())
    return root / "out", reports, config, done.stdout


def trainable(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "trainable.safetensors")


def assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], **tolerance: float) -> None:
    assert a.keys() == b.keys() and a
    for key in a:
        tol = tolerance or TOLERANCE
        torch.testing.assert_close(a[key], b[key], **tol, msg=lambda m, k=key: f"{k}: {m}")


def differs(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    return [k for k in a if not torch.allclose(a[k], b[k], **TOLERANCE)]


def losses(folder: Path) -> list[float]:
    return [r["train_loss"] for r in read_metrics(folder / "metrics.jsonl")]


def one_process(model, data, train: dict, out: Path, **kw) -> dict[str, torch.Tensor]:
    """The same run in this process with the global batch (2 ranks' micro-batches as one)."""
    config = TrainConfig(**{**train, "batch_size": 2 * train["batch_size"]})
    Trainer(model, data, collate, config, out, show_progress=False, **kw).train()
    return {k: v.clone() for k, v in state.trainable_tensors(model).items()}


# --- equal to one process ------------------------------------------------------------------------


@pytest.mark.parametrize("method", sorted(METHODS))
def test_ddp_and_fsdp_on_two_ranks_equal_one_process_with_the_global_batch(runs, tmp_path, method):
    out = runs[0]
    reference = one_process(tiny(method), examples(), TRAIN, tmp_path)
    for mode in ("ddp", "fsdp"):
        assert_close(trainable(out / f"{method}-{mode}"), reference)
        torch.testing.assert_close(losses(out / f"{method}-{mode}"), losses(tmp_path), **TOLERANCE)
    assert_close(trainable(out / f"{method}-fsdp"), trainable(out / f"{method}-ddp"))


def test_the_fsdp_adapter_is_saved_whole_and_loads_in_peft(runs):
    saved = runs[0] / "lora-fsdp" / "adapter"
    tensors = load_file(saved / "adapter_model.safetensors")
    ddp = load_file(runs[0] / "lora-ddp" / "adapter" / "adapter_model.safetensors")
    assert_close(tensors, ddp)  # every key, whole shapes (r x 32, 32 x r ...), not one rank's shard
    assert any(t.abs().sum() > 0 for k, t in tensors.items() if "lora_B" in k)  # trained, not empty
    ours = peftkit.PeftModel.from_pretrained(build("llama"), saved).eval()
    theirs = peft.PeftModel.from_pretrained(build("llama"), saved).eval()
    ids = torch.randint(3, 90, (2, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ours(input_ids=ids).logits, theirs(input_ids=ids).logits)


def stochastic(model, data: list[dict]) -> bool:
    """Whether a training forward pass draws random numbers (dropout, sampled masks)."""
    model.train()
    before = torch.get_rng_state()
    logits_loss(model, collate(data[:2]))
    return not torch.equal(before, torch.get_rng_state())


def test_every_contract_case_trains_on_two_ranks_or_is_refused_by_name(runs, tmp_path):
    """Deterministic cases equal one process with the global batch; those that draw random numbers
    draw them per rank (not as one process does), so DDP and FSDP2 (the same draws) equal each other."""
    reports, checked = runs[1]["contract"], 0
    for case in CASES:
        model = build(case.kind)
        torch.manual_seed(0)
        model = case.wrap(model)
        data = contract_examples(case.kind)
        random_draws = stochastic(model, data)
        try:
            reference = one_process(model, data, CONTRACT, tmp_path / case.id, loss_fn=logits_loss)
        except ValueError as err:  # the method refuses this run in one process too (a pruned AdaLoRA)
            assert reports[f"{case.id}-ddp"] == {"error": str(err)}, case
            continue
        fsdp, ddp = reports[f"{case.id}-fsdp"], reports[f"{case.id}-ddp"]
        assert "refused" not in ddp and "error" not in ddp, (case, ddp)
        if case.id.startswith(REFUSED_UNDER_FSDP):
            assert fsdp["refused"].startswith("train.distributed: fsdp cannot train"), case
            assert "use train.distributed: ddp" in fsdp["refused"]
        else:
            assert "refused" not in fsdp and "error" not in fsdp, (case, fsdp)
            folder = runs[0]
            assert_close(trainable(folder / f"{case.id}-fsdp"), trainable(folder / f"{case.id}-ddp"), **LOOSE)
        if not random_draws:  # Adam's step turns reduction-order noise in a near-zero gradient into ~1e-4
            assert_close(trainable(runs[0] / f"{case.id}-ddp"), reference, **LOOSE)
            checked += 1
    assert checked >= len(CASES) - 8


def test_a_run_resumed_on_two_ranks_ends_as_the_uninterrupted_one(runs):
    for mode in ("ddp", "fsdp"):
        a, b = trainable(runs[0] / f"lora-{mode}"), trainable(runs[0] / f"lora-{mode}-resumed")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), mode
        assert losses(runs[0] / f"lora-{mode}-resumed") == losses(runs[0] / f"lora-{mode}")


def test_qlora_trains_under_ddp_and_fsdp_refuses_it_by_name(runs, tmp_path):
    pytest.importorskip("bitsandbytes")
    from peftkit.quantization import quantize_model

    model = quantize_model(build("llama"))
    torch.manual_seed(0)
    model = peftkit.get_peft_model(model, METHODS["lora"]())
    # the plain loss, as DDP takes it (lm_loss auto is plain over several processes): with a 4-bit
    # base computing in bf16 the chunked loss rounds dL/dz in another order, and Adam turns that into ~4e-5
    reference = one_process(model, examples(), {**TRAIN, "max_steps": 3, "lm_loss": "plain"}, tmp_path)
    assert_close(trainable(runs[0] / "qlora-ddp"), reference)
    refused = runs[1]["methods"]["qlora-fsdp"]["refused"]
    assert refused.startswith("train.distributed: fsdp cannot shard a 4-bit base") and "ddp" in refused


# --- the failure checklist -----------------------------------------------------------------------


def test_ranks_that_draw_different_adapters_train_rank_0s(runs):
    for mode in ("ddp", "fsdp"):  # each rank built its model with its own seed
        a, b = trainable(runs[0] / f"lora-{mode}"), trainable(runs[0] / f"lora-{mode}-rank_seed")
        assert all(torch.equal(a[k], b[k]) for k in a), mode


def test_gradient_checkpointing_on_two_ranks_changes_nothing(runs):
    for mode in ("ddp", "fsdp"):  # reentrant checkpointing would mark lora_B ready twice under DDP
        plain = trainable(runs[0] / f"lora-{mode}")
        assert_close(trainable(runs[0] / f"lora-{mode}-gradient_checkpointing"), plain)


def test_fsdp_units_keep_adapter_modules_apart_and_frozen_weights_get_no_gradient(runs):
    methods = runs[1]["methods"]
    for name in ("lora-fsdp", "bottleneck-fsdp"):
        units = methods[name]["units"]
        adapters = [u for u in units if u["trainable"]]
        assert adapters and all(u["frozen"] == 0 for u in adapters), units
        assert any(u["path"].endswith("layers.0") and u["frozen"] for u in units)  # blocks sharded
    # a prompt table is read directly by the root's forward: it shares the root's unit, and FSDP2
    # (one DTensor per parameter, no flat parameter) still gives the frozen ones there no gradient
    assert [u["trainable"] for u in methods["prompt_tuning-fsdp"]["units"] if u["path"] == ""] == [1]
    assert all(not report.get("frozen_grads") for report in methods.values())


# --- the command line ------------------------------------------------------------------------------


def test_torchrun_peftkit_train_prints_the_global_batch_and_equals_one_process(runs, tmp_path, capsys):
    out, reports, config, stdout = runs
    assert reports["cli"] == 0
    assert "train: global batch 4 = batch_size 2 x grad_accum 1 x 2 processes (gloo on cpu), fsdp" in stdout
    assert stdout.count("train: global batch") == 1  # rank 1 prints nothing
    one = tmp_path / "one"
    # under fsdp the base stays fp32 (train.precision auto); one process would pick bf16 where it is fast
    flags = ["--train.batch_size", "4", "--train.precision", "fp32", "--output-dir", str(one), "--quiet"]
    assert main(["train", "--config", str(config), *flags]) == 0
    assert "global batch 4 = batch_size 4 x grad_accum 1 x 1 process" in capsys.readouterr().out
    two = read_metrics(out / "cli" / "metrics.jsonl")
    want = read_metrics(one / "metrics.jsonl")
    assert [r["step"] for r in two] == [r["step"] for r in want]
    for got, row in zip(two, want):  # train and held-out losses, step by step
        for key in ("train_loss", "eval_loss"):
            if key in row:
                assert got[key] == pytest.approx(row[key], rel=1e-5, abs=1e-5), (key, got, row)
    adapter = "adapter/adapter_model.safetensors"
    assert_close(load_file(out / "cli" / adapter), load_file(one / adapter))


@pytest.mark.slow  # three more torchrun launches (about 25 s on 2 cores)
def test_a_killed_rank_stops_the_run_clearly_and_resume_on_two_ranks_finishes_it(runs, tmp_path, capsys):
    out, _, config, _ = runs
    run = tmp_path / "run"
    args = ["train", "--config", config, "--output-dir", run, "--quiet"]
    killed = torchrun(SCRIPTS / "kill_at.py", "step", 5, *args, env={"KILL_RANK": "1"})  # after step 4's
    assert killed.returncode != 0
    lines = [x for x in killed.stderr.splitlines() if x.startswith("peftkit train: error:")]
    assert len(lines) == 1, killed.stderr[-4000:]
    assert "rank 0 stopped: another rank of this run (2 processes) failed or was killed" in lines[0]
    assert f"{run}/checkpoints/step-0000004" in lines[0] and "--resume" in lines[0]
    assert f"exitcode  : -{signal.SIGKILL}" in killed.stderr  # torchrun names the killed rank
    complete = state.complete_checkpoints(run / "checkpoints")
    assert [p.name for p in complete] == ["step-0000002", "step-0000004"]
    for path in complete:
        state.read_checkpoint(path)  # every file whole and matching its checksum
    assert not (run / "adapter").exists()

    code = main(["train", "--config", str(config), "--output-dir", str(run), "--quiet", "--resume"])
    assert code == 2
    err = capsys.readouterr().err
    assert "written by a run on 2 process(es), this one has 1" in err and "Traceback" not in err

    resumed = torchrun("-m", "peftkit", *args, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    adapter = "adapter/adapter_model.safetensors"
    a, b = load_file(out / "cli" / adapter), load_file(run / adapter)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert logged(run) == logged(out / "cli")  # nothing lost, nothing logged twice


def logged(folder: Path) -> list[dict]:
    rows = read_metrics(folder / "metrics.jsonl")
    return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in rows]


# --- in one process ----------------------------------------------------------------------------------


def test_the_distributed_field_is_checked_and_a_single_process_trains_as_before(tmp_path):
    with pytest.raises(ConfigError, match=r"distributed: must be one of \['ddp', 'fsdp'\], got 'zero3'"):
        TrainConfig(distributed="zero3")
    weights = []
    for mode in ("ddp", "fsdp"):  # one process: the same run whatever the field says
        model = peftkit.get_peft_model(build("llama"), METHODS["lora"]())
        config = TrainConfig(**{**TRAIN, "max_steps": 2}, distributed=mode)
        Trainer(model, examples(), collate, config, tmp_path / mode, show_progress=False).train()
        weights.append(state.trainable_tensors(model))
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
