"""The ``peftkit`` command line: one module per sub-command, each with ``add_parser`` and ``run``."""

from __future__ import annotations

import argparse
import sys

from . import compose as compose_cmd
from . import eval as eval_cmd
from . import export as export_cmd
from . import generate as generate_cmd
from . import inspect as inspect_cmd
from . import inspect_fusion as inspect_fusion_cmd
from . import merge as merge_cmd
from . import serve as serve_cmd
from . import train as train_cmd

# expected failures (bad config/data/paths, missing packages): one clean line and exit code 2.
# ConfigError, DataError, CheckpointError and TargetError are ValueErrors; OSError covers missing,
# unreadable or unwritable files and transformers' "no weights in this directory".
EXPECTED_ERRORS = (ValueError, OSError, ImportError)

COMMANDS = {
    "train": train_cmd,
    "eval": eval_cmd,
    "generate": generate_cmd,
    "merge": merge_cmd,
    "export": export_cmd,
    "inspect": inspect_cmd,
    "inspect-fusion": inspect_fusion_cmd,
    "compose": compose_cmd,
    "serve": serve_cmd,
}


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; ``argv`` tells ``train --help`` which method's adapter fields to list."""
    parser = argparse.ArgumentParser(prog="peftkit", description="Parameter-efficient fine-tuning toolkit.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module in COMMANDS.items():
        # no abbreviations: `--adapter.rank 4` must not silently set --adapter.rank_pattern
        command = sub.add_parser(name, help=module.HELP, description=module.__doc__, allow_abbrev=False)
        if module is train_cmd:
            module.add_parser(command, method=train_cmd.requested_method(argv or []))
        else:
            module.add_parser(command)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    try:
        return COMMANDS[args.command].run(args) or 0
    except EXPECTED_ERRORS as err:
        print(f"peftkit {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
