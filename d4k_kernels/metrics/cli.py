"""``d4k eval DIR``: the paper's GLCM Score and Compression Ratio of a folder of images.

    d4k eval DIR [--size 2048] [--patch 64] [--device auto|cuda|cpu] [--out results.csv|.json]
                 [--workers N] [--limit N] [--recursive] [--batch N] [--no-progress]

Prints (stdout) the paper's summary lines ``GLCM Score: 0.xxxx`` and ``Compression Ratio: xx.xx``,
then "N images evaluated, M skipped" with each skipped file and its reason. A progress bar goes to
stderr. Exit status: 0 when at least one image was evaluated; 1 when none could be; 2 for a usage
error (DIR missing, bad option, CUDA requested but absent).
Launch with ``torchrun --nproc_per_node G -m d4k_kernels.cli eval DIR`` to shard over G GPUs.
"""
from __future__ import annotations

import argparse
import os
import sys


def _positive(v: str) -> int:
    try:
        n = int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v!r}")
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v!r}")
    return n


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "eval",
        help="GLCM Score and Compression Ratio of a folder of images (the paper's eval.py)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("dir", metavar="DIR", help="folder of images (PNG, JPEG, WebP, ...)")
    p.add_argument("--size", type=_positive, default=2048,
                   help="top-left crop size evaluated (2048; 4096 for 4K); smaller images are skipped")
    p.add_argument("--patch", type=_positive, default=64, help="GLCM patch size (64)")
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    p.add_argument("--out", default=None, help="per-image results, .csv or .json")
    p.add_argument("--workers", type=_positive, default=None, help="decoding threads (default: min(16, CPUs) / processes)")
    p.add_argument("--limit", type=_positive, default=None, help="only the first N images (sorted by name)")
    p.add_argument("--recursive", action="store_true", help="also images in sub-folders")
    p.add_argument("--batch", type=_positive, default=None, help="images per GLCM call (default: auto)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_eval)
    return p


def run_eval(args) -> int:
    from .evaluate import evaluate_folder

    err = sys.stderr
    if not os.path.isdir(args.dir):
        why = "does not exist" if not os.path.exists(args.dir) else "is not a directory"
        print(f"d4k eval: error: {args.dir!r} {why}", file=err)
        return 2
    if args.out is not None and os.path.splitext(args.out)[1].lower() not in (".csv", ".json"):
        print(f"d4k eval: error: --out must end in .csv or .json, got {args.out!r}", file=err)
        return 2
    if args.size % args.patch:
        print(f"d4k eval: error: --size ({args.size}) must be a multiple of --patch ({args.patch})", file=err)
        return 2
    try:
        res = evaluate_folder(
            args.dir, size=args.size, patch=args.patch, device=args.device, workers=args.workers,
            limit=args.limit, recursive=args.recursive, batch=args.batch, progress=not args.no_progress,
        )
    except (RuntimeError, ValueError, ImportError) as e:
        print(f"d4k eval: error: {e}", file=err)
        return 2
    rank = int(os.environ.get("RANK", "0")) if res.world_size > 1 else 0
    if rank != 0:
        return 0 if res.ok else 1
    if args.out is not None:
        res.write(args.out)
    print(res.summary())
    if args.out is not None:
        print(f"per-image results: {args.out}")
    n = len(res.records)
    if n and res.seconds > 0:
        print(f"d4k eval: {n} files in {res.seconds:.2f} s ({n / res.seconds:.2f} files/s, "
              f"device {args.device}, {res.world_size} process(es))", file=err)
    if not res.ok:
        if n == 0:
            print(f"d4k eval: error: no image files in {args.dir!r}", file=err)
        else:
            print(f"d4k eval: error: none of the {n} image file(s) in {args.dir!r} could be evaluated", file=err)
        return 1
    return 0
