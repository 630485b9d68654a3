"""Train an adapter. With no arguments: the main job (LoRA on the packaged SmolLM2-135M for a built-in
extraction task, evaluated before and after). With ``--config run.yaml`` and/or ``--section.field``
flags: any task, model and method (see peftkit.run_config for the YAML layout).

Started by ``torchrun`` with several processes (``torchrun --nproc-per-node N -m peftkit train --config
run.yaml``), it trains data-parallel (``train.distributed``: ddp or fsdp); rank 0 prints, logs and saves."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal

HELP = "train an adapter (no arguments: the built-in demo on SmolLM2-135M)"


def add_parser(p: argparse.ArgumentParser, method: str | None = None) -> None:
    """``method`` (from ``--adapter.method`` on the command line): whose fields ``--help`` lists."""
    from ..registry import list_methods
    from ..run_config import flag_fields

    p.add_argument(
        "--config", help="run config YAML (sections: model, task, data, adapter, train, output_dir)"
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in output_dir from its last readable checkpoint (the config must match "
        "its run.yaml except fields safe to change: see the README)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run already in output_dir (its metrics, checkpoints, adapter and plots)",
    )
    p.add_argument("--output-dir", dest="output_dir", help="where the adapter, metrics and plot go")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    demo = p.add_argument_group("built-in demo (used when no --config and no section flags are given)")
    demo.add_argument("--demo-steps", type=int, default=None, help="optimizer steps (default 40)")
    demo.add_argument(
        "--demo-train", type=int, default=None, help="generated training examples (default 2000)"
    )
    demo.add_argument("--demo-eval", type=int, default=None, help="held-out examples (default 64)")
    for section, fields in flag_fields(method).items():
        about = f"{section} section (value parsed as YAML)"
        if section == "adapter" and method not in list_methods():
            about += "; a method's own fields: peftkit train --adapter.method METHOD --help"
        group = p.add_argument_group(about)
        for name, help_text, shown in fields:
            group.add_argument(
                f"--{section}.{name}",
                dest=f"set:{section}.{name}",
                metavar="V",
                help=help_text if shown else argparse.SUPPRESS,
            )


def requested_method(argv: list[str]) -> str | None:
    """The value of ``--adapter.method`` in ``argv`` (``--adapter.method lora`` or ``=lora``), if any."""
    for i, arg in enumerate(argv):
        if arg == "--adapter.method" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--adapter.method="):
            return arg.partition("=")[2]
    return None


def overrides(args: argparse.Namespace) -> dict[str, str]:
    out = {k[4:]: v for k, v in vars(args).items() if k.startswith("set:") and v is not None}
    if args.output_dir:
        out["output_dir"] = args.output_dir
    return out


def run(args: argparse.Namespace) -> int:
    from ..training import distributed

    with distributed.process_group() as world:  # one process unless started by torchrun
        if world.active:
            signal.signal(signal.SIGTERM, _stopped)  # torchrun stops the others when a rank fails
        try:
            with _quiet_unless_main(world.main):
                return _run(args, world.active)
        except distributed.OtherRankFailed:
            return 2  # rank 0 has printed the error


def _stopped(signum: int, frame: object) -> None:
    from ..training.distributed import RankLost

    raise RankLost("torchrun stopped this rank (SIGTERM)")


@contextlib.contextmanager
def _quiet_unless_main(main: bool):
    """Ranks other than 0 print nothing to stdout (their errors still reach stderr)."""
    if main:
        yield
        return
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        yield


def _run(args: argparse.Namespace, distributed: bool) -> int:
    sets = overrides(args)
    if not args.config and not {k for k in sets if k != "output_dir"}:
        if distributed:
            from ..errors import ConfigError

            raise ConfigError(
                "--config", "the built-in demo runs on one process; give a run config to torchrun"
            )
        return _demo(args)
    from ..pipeline import train_run
    from ..run_config import apply_overrides, build_run_config, load_yaml

    data = load_yaml(args.config) if args.config else {}
    config = build_run_config(apply_overrides(data, sets))
    summary = train_run(config, resume=args.resume, show_progress=not args.quiet, overwrite=args.overwrite)
    print(json.dumps(summary, indent=2))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from ..demo import DemoSettings, run_demo
    from ..errors import ConfigError

    if args.resume:
        raise ConfigError(
            "--resume", "the built-in demo does not resume; run it again (with --overwrite to replace it)"
        )
    settings = DemoSettings(show_progress=not args.quiet, overwrite=args.overwrite)
    for field, value in (
        ("output_dir", args.output_dir),
        ("max_steps", args.demo_steps),
        ("n_train", args.demo_train),
        ("n_eval", args.demo_eval),
    ):
        if value is not None:
            setattr(settings, field, value)
    run_demo(settings)
    return 0
