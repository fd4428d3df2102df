"""``d4k bench``: time the d4k ops beside their peers and print one table (d4k_kernels.benchmarks)."""
from __future__ import annotations

import argparse


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("bench", help="time d4k ops beside their peers and print a table")
    p.add_argument("--op", action="append", default=None,
                   help="op family to run (repeatable); default: all that have benchmarks")
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    p.add_argument("--quick", action="store_true", help="fewer repeats (a smoke run)")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.add_argument("--no-graphs", action="store_true",
                   help="CUDA: skip the second timing of each case as CUDA-graph replays")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    from . import main as bench_main

    return bench_main(ops=args.op, device=args.device, quick=args.quick, json_path=args.json,
                      graphs=not args.no_graphs)
