"""``d4k sample``: images from a diffusers Flux / SD3 pipeline folder at 4K, with the SC-VAE and exact tiled
decoding (docs/sampling.md).

    d4k sample --model DIR (--prompt TEXT | --prompts FILE) [--out DIR] [--height 4096] [--width 4096]
               [--steps 50] [--guidance G] [--seed 0] [--batch-size 1] [--format jpg|png] [--quality 95]
               [--vae DIR|FILE] [--transformer DIR] [--max-memory 8GiB] [--device auto] [--dtype auto]

Prompt i (0-based, in file order) is sampled with seed SEED + i and written as OUT/{i:05d}.jpg, or as
its metadata.jsonl "file_name" with the format's extension; OUT/metadata.jsonl gets one row per
image. A rerun skips the images already written. Exit status 0 when done; 2 for a usage error (a
missing model or prompts file, a size the pipeline cannot deliver, out of memory), printed as one line.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

__all__ = ["add_parser", "run_sample"]

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_OOM = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("sample", help="sample images at 4K from a diffusers Flux / SD3 pipeline folder",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, metavar="DIR", help="a diffusers pipeline folder (model_index.json)")
    p.add_argument("--vae", metavar="DIR|FILE", help="a VAE folder or single file instead of the model's vae/")
    p.add_argument("--transformer", metavar="DIR", help="a (fine-tuned) transformer folder instead of the model's")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--prompt", metavar="TEXT", help="one prompt")
    what.add_argument("--prompts", metavar="FILE", help="one prompt a line, or a metadata.jsonl (\"text\", \"file_name\")")
    p.add_argument("--out", default="samples", metavar="DIR", help="output folder (samples)")
    p.add_argument("--height", type=int, default=4096)
    p.add_argument("--width", type=int, default=4096)
    p.add_argument("--steps", type=int, default=50, help="denoising steps (50)")
    p.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the pipeline's)")
    p.add_argument("--seed", type=int, default=0, help="prompt i gets seed + i (0)")
    p.add_argument("--batch-size", type=int, default=1, help="prompts per pipeline call (1)")
    p.add_argument("--format", default="jpg", choices=["jpg", "png"])
    p.add_argument("--quality", type=int, default=95, help="JPEG quality (95)")
    p.add_argument("--max-memory", default=None, metavar="BYTES",
                   help="the exact tiled decode's memory budget, e.g. 8GiB (default: 8 GiB or the free memory)")
    p.add_argument("--device", default="auto", help="auto | cuda | cuda:N | cpu")
    p.add_argument("--dtype", default="auto", choices=["auto", *DTYPES], help="auto: bf16 on CUDA, fp32 on the CPU")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run_sample)
    return p


def _prepare(args):
    """Everything that needs no model: the prompts, the output folder, the device and dtype."""
    from .._util import parse_memory, resolve_device
    from ..cli import UsageError
    from .output import OutputFolder
    from .prompts import Prompt, read_prompts
    from .run import pending

    for name in ("height", "width", "steps", "batch_size"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if not os.path.isdir(args.model):
        why = "does not exist" if not os.path.exists(args.model) else "is not a folder"
        raise UsageError(f"--model {args.model!r} {why}")
    try:
        prompts = [Prompt(0, args.prompt.strip())] if args.prompts is None else read_prompts(args.prompts)
        if not prompts[0].text:
            raise ValueError("--prompt is empty")
        parse_memory(args.max_memory, "--max-memory")
        device = resolve_device(args.device)
        folder = OutputFolder(args.out, args.format, args.quality)
        todo, done = pending(prompts, folder)
    except (OSError, ValueError) as e:
        raise UsageError(str(e)) from None
    dtype = DTYPES[args.dtype] if args.dtype != "auto" else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    # a rerun with every image written (and recorded) needs no model
    finished = not todo and all(name in folder.recorded for _, name in done)
    return prompts, folder, finished, device, dtype


def _load(args, device, dtype):
    """The pipeline, loaded, patched and on ``device``."""
    from ..cli import UsageError

    try:
        import diffusers  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as e:
        raise UsageError(f"d4k sample needs diffusers and transformers ({e.name} is missing): "
                         "pip install 'd4k-kernels[sample]'") from None
    from ..integrations.diffusers import check_size, load_pipeline, patch_pipeline

    if args.no_progress:  # diffusers' and transformers' loading bars too
        diffusers.utils.logging.disable_progress_bar()
        transformers.utils.logging.disable_progress_bar()
    try:
        pipe = load_pipeline(args.model, vae=args.vae, transformer=args.transformer, torch_dtype=dtype)
        patch_pipeline(pipe, max_memory=args.max_memory, progress=False if args.no_progress else None)
        check_size(pipe, args.height, args.width)
    except (OSError, ValueError, TypeError) as e:
        raise UsageError(str(e).splitlines()[0]) from None
    return pipe.to(device)


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, _OOM) or "can't allocate memory" in str(e)


def run_sample(args) -> int:
    from ..cli import UsageError
    from .run import SampleSettings, sample_to_folder

    prompts, folder, finished, device, dtype = _prepare(args)
    if finished:
        print(f"d4k sample: all {len(prompts)} images are already in {args.out!r}")
        return 0
    pipe = _load(args, device, dtype)
    extra = {k: getattr(args, k) for k in ("vae", "transformer") if getattr(args, k)}
    settings = SampleSettings(height=args.height, width=args.width, steps=args.steps, guidance=args.guidance,
                              seed=args.seed, batch_size=args.batch_size, model=args.model, extra=extra)
    try:
        res = sample_to_folder(pipe, prompts, folder, settings, progress=not args.no_progress)
    except RuntimeError as e:
        if not _is_oom(e):
            raise
        budget = args.max_memory or "the default 8 GiB"
        raise UsageError(f"out of memory sampling {args.height}x{args.width} on {device} (batch {args.batch_size}, "
                         f"decode budget {budget}): lower --max-memory or --batch-size") from None
    n = len(res.written)
    print(f"d4k sample: {n} image{'s' if n != 1 else ''} written to {args.out!r} in {res.seconds:.1f} s"
          + (f" ({len(res.skipped)} already there)" if res.skipped else ""))
    sys.stdout.flush()
    return 0
