"""The `headsculpt` command line. Each subcommand lives in `commands/<name>.py` with `register` (argparse
only, no heavy imports, so `--help` stays fast) and `run`."""
from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__
from .errors import HeadSculptError
from .quiet import quiet_console

# Subcommand modules under headsculpt_engine.commands, in the order `--help` lists them.
COMMANDS = [
    "generate",
    "edit",
    "batch",
    "learn_token",
    "download_models",
    "make_tiny_models",
    "serve",
    "landmarks",
    "bench",
    "evaluate",
    "dataset",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="headsculpt",
        description="HeadSculpt engine: craft and edit 3D head avatars from text on a head prior.")
    parser.add_argument("--version", action="version", version=f"headsculpt {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"{__package__}.commands.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_console()
    try:
        return int(args.run(args) or 0)
    except HeadSculptError as error:
        print(f"headsculpt: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("headsculpt: interrupted", file=sys.stderr)
        return 130
