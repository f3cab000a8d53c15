"""``seg-ros``: one entry point, one module per subcommand in this package.

A subcommand module defines ``register(subparsers)`` which adds its parser and sets
``func(args) -> int`` as the parser default; modules are discovered, so adding a command
touches no shared file.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys

from .. import cli as _cli_pkg
from ..errors import SegRosError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seg-ros", description="seg_ros segmentation tools")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for info in sorted(pkgutil.iter_modules(_cli_pkg.__path__), key=lambda m: m.name):
        if info.name in ("main", "common") or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{_cli_pkg.__name__}.{info.name}")
        if hasattr(module, "register"):
            module.register(sub)
    return parser


def run_command(args: argparse.Namespace) -> int:
    """Run a parsed subcommand; return its exit code.

    The contract of every entry point (``seg-ros`` and the light ``python -m seg_ros.cli.X``
    ones): a SegRosError is one line and exit code 2, Ctrl-C exit code 130.
    """
    try:
        return int(args.func(args) or 0)
    except SegRosError as exc:
        print(f"seg-ros {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"seg-ros {args.command}: interrupted", file=sys.stderr)
        return 130


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="[seg-ros] %(levelname)s: %(message)s")
    return run_command(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
