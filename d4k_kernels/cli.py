"""The ``d4k`` command.

    d4k bench [--op haar] [--device auto|cuda|cpu] [--quick]   time the ops beside their peers
    d4k eval DIR [--size 2048] ...                            GLCM Score and Compression Ratio
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="time d4k ops beside their peers and print a table")
    p.add_argument("--op", action="append", default=None,
                   help="op family to run (repeatable); default: all that have benchmarks")
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    p.add_argument("--quick", action="store_true", help="fewer repeats (a smoke run)")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.add_argument("--no-graphs", action="store_true",
                   help="CUDA: skip the second timing of each case as CUDA-graph replays")

    def run(args) -> int:
        from .benchmarks import main as bench_main

        return bench_main(ops=args.op, device=args.device, quick=args.quick, json_path=args.json,
                          graphs=not args.no_graphs)

    p.set_defaults(func=run)


def main(argv: Optional[List[str]] = None) -> int:
    from . import __version__
    from .metrics.cli import add_eval_parser

    parser = argparse.ArgumentParser(prog="d4k", description="d4k-kernels command line")
    parser.add_argument("--version", action="version", version=f"d4k-kernels {__version__}")
    sub = parser.add_subparsers(dest="command")
    _add_bench(sub)
    add_eval_parser(sub)
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


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
    console_main()
