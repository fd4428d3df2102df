"""The ``d4k`` command.

    d4k bench [--op haar] [--device auto|cuda|cpu] [--quick]   time the ops beside their peers
    d4k eval DIR [--size 2048] ...                            GLCM Score and Compression Ratio
    d4k sample --model DIR --prompt TEXT ...                  4K images from a Flux / SD3 pipeline

``python -m d4k_kernels.cli`` runs the same command.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional


# Each subcommand lives in its own module, which defines ``add_parser(subparsers)``; the parser it adds
# sets ``func(args) -> int``. A user mistake is one line on stderr and exit status 2: a subcommand
# raises UsageError (or returns 2 after printing its own line), never a traceback.
SUBCOMMANDS = (
    "d4k_kernels.benchmarks.cli",
    "d4k_kernels.metrics.cli",
    "d4k_kernels.sampling.cli",
)


class UsageError(Exception):
    """A mistake in how a command was called (a missing file, a bad option value): printed as one line."""


def main(argv: Optional[List[str]] = None) -> int:
    import importlib

    from . import __version__

    parser = argparse.ArgumentParser(prog="d4k", description="d4k-kernels command line")
    parser.add_argument("--version", action="version", version=f"d4k-kernels {__version__}")
    sub = parser.add_subparsers(dest="command")
    for mod in SUBCOMMANDS:
        importlib.import_module(mod).add_parser(sub)
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except UsageError as e:
        print(f"d4k {args.command}: error: {e}", file=sys.stderr)
        return 2


def console_main() -> None:
    """Entry point of the ``d4k`` script and ``python -m d4k_kernels.cli``.

    Under torchrun (WORLD_SIZE > 1) the process leaves with ``os._exit`` once the command has
    returned, its results written and the streams flushed: a rank can abort *after* a complete
    ``d4k eval`` (its summary printed, the process group destroyed) with "terminate called without
    an active exception" during interpreter shutdown, which torchrun reports as a failed job.
    Nothing of ours runs at shutdown, so skipping it loses nothing.
    """
    import os

    rc = main()
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)
    sys.exit(rc)


if __name__ == "__main__":
    # run the package's module, not this __main__ copy: the subcommands raise d4k_kernels.cli.UsageError
    from d4k_kernels.cli import console_main as _console_main

    _console_main()
