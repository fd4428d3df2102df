"""The decode step inside a diffusers FluxPipeline: what ``__call__`` does after the last denoising step
(unpack the tokens to latents, unscale them, ``vae.decode``, postprocess to PIL), three ways:

* ``diffusers untiled``: the stock decode (for the SC-VAE, the pipeline patched for its sizes only,
  ``patch_pipeline(exact_decode=False)``: stock diffusers cannot size an SC-VAE pipeline at all);
* ``diffusers enable_tiling``: the same with ``vae.enable_tiling()`` (not exact);
* ``d4k patch_pipeline``: ``patch_pipeline(pipe, max_memory=...)``, the exact tiled decode.

CUDA (bf16, random weights, the real VAE configs): the SC-VAE F16 and Flux F8, each to 4096^2.
``python -m d4k_kernels.benchmarks.pipeline [--device cuda]`` prints time, peak memory
(``torch.cuda.max_memory_allocated``) and the largest difference from the untiled image in 8-bit levels
per case. CPU: the small-channel configs of benchmarks/vae.py at 256^2 (quick: 128^2), tiles forced small.
"""
from __future__ import annotations

import argparse
import importlib.util
import statistics
import time
from typing import Callable, Dict, List, Optional

import numpy as np
import torch

from . import Case

__all__ = ["cases", "memory_table"]


def _pipeline(stride: int, small: Optional[str], device, dtype):
    """A FluxPipeline around a random-weight VAE (benchmarks/vae.py's configs) and a one-block transformer
    (only its config is read here); no text encoders."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    from .vae import _build, _flux_cfg

    vae = _build(_flux_cfg(small), device, dtype, stride)
    tr = FluxTransformer2DModel(patch_size=1, in_channels=4 * vae.config.latent_channels, num_layers=1,
                                num_single_layers=0, attention_head_dim=16, num_attention_heads=1,
                                joint_attention_dim=16, pooled_projection_dim=16, axes_dims_rope=(4, 6, 6))
    return FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=None, tokenizer=None,
                        text_encoder_2=None, tokenizer_2=None, transformer=tr)


def _dtype(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def _specs(device: torch.device, quick: bool) -> List[Dict]:
    if device.type == "cuda":
        px, small, budget = 4096, None, "8GiB"
    else:
        px, small, budget = (128, "quick", None) if quick else (256, "cpu", None)
    dtype = _dtype(device)
    out = []
    for stride, name in ((2, "SC-VAE F16"), (1, "Flux F8")):
        lat = px // (8 * stride)
        g = f"pipeline decode step {name} -> {px}^2 ({lat}^2 latent) {str(dtype).replace('torch.', '')}"
        base = dict(group=g, stride=stride, small=small, px=px, lat=lat)
        out.append(dict(base, impl="diffusers untiled", mode="untiled"))
        out.append(dict(base, impl="diffusers enable_tiling", mode="diffusers_tiled"))
        out.append(dict(base, impl="d4k patch_pipeline", mode="d4k", max_memory=budget,
                        tile=None if budget else lat // 2))
    return out


def _make_fn(spec: Dict, device: torch.device, dtype) -> Callable[[], object]:
    from ..integrations.diffusers import patch_pipeline

    pipe = _pipeline(spec["stride"], spec["small"], device, dtype)
    px, lat, mode = spec["px"], spec["lat"], spec["mode"]
    if mode == "d4k":
        patch_pipeline(pipe, max_memory=spec["max_memory"], tile=spec["tile"], progress=False)
    elif spec["stride"] != 1:
        patch_pipeline(pipe, exact_decode=False)  # the sizes only
    if mode == "diffusers_tiled":
        pipe.vae.enable_tiling()
        if device.type != "cuda":  # tiles smaller than the toy image
            pipe.vae.tile_sample_min_size, pipe.vae.tile_latent_min_size = px // 2, lat // 2
    g = torch.Generator("cpu").manual_seed(0)
    tokens = torch.randn(1, (lat // 2) ** 2, 4 * pipe.vae.config.latent_channels, generator=g).to(device, dtype)

    def step():
        with torch.no_grad():
            z = pipe._unpack_latents(tokens, px, px, pipe.vae_scale_factor)
            z = z / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor
            image = pipe.vae.decode(z, return_dict=False)[0]
            return pipe.image_processor.postprocess(image, output_type="pil")

    step.pipe = pipe
    return step


def cases(device: torch.device, quick: bool = False) -> List[Case]:
    # diffusers' pipeline modules import transformers too
    if any(importlib.util.find_spec(m) is None for m in ("diffusers", "transformers")):
        return []
    dtype = _dtype(device)
    size = torch.empty((), dtype=dtype).element_size()
    # fewest bytes: the latent in, the RGB image out; PIL postprocessing is host work (no CUDA graph)
    return [Case(s["group"], s["impl"], _make_fn(s, device, dtype), note=s["mode"], graph=False,
                 bytes_moved=(s["lat"] ** 2 * 16 + 3 * s["px"] ** 2) * size)
            for s in _specs(device, quick)]


def _measure(spec: Dict, device: torch.device, dtype, runs: int):
    """(median ms of ``runs`` warm runs, peak GiB on CUDA else nan, the first image as int16 pixels)."""
    fn = _make_fn(spec, device, dtype)
    fn()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        images = fn()  # PIL images: the device work is finished
        times.append((time.perf_counter() - t0) * 1e3)
    peak = float("nan")
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**30
        del fn
        torch.cuda.empty_cache()  # the next case starts from the weights it builds
    return statistics.median(times), peak, np.asarray(images[0], dtype=np.int16)


def memory_table(device: torch.device, quick: bool = False, runs: int = 3) -> List[Dict]:
    """Per case: the median time of ``runs`` warm runs, the peak memory (CUDA) and the largest
    difference from the group's untiled image, in 8-bit levels; printed as the rows finish."""
    from . import _short

    dtype, nan = _dtype(device), float("nan")
    rows, refs = [], {}
    for spec in _specs(device, quick):
        row = dict(group=spec["group"], impl=spec["impl"], ms=nan, peak_gib=nan, max_levels=nan, error="")
        try:
            row["ms"], row["peak_gib"], img = _measure(spec, device, dtype, runs)
        except (RuntimeError, ValueError) as e:  # out of memory, say: the row tells
            row["error"] = _short(e)
        else:
            if spec["mode"] == "untiled":
                refs[spec["group"]] = img
            elif spec["group"] in refs:
                row["max_levels"] = float(np.abs(img - refs[spec["group"]]).max())
        rows.append(row)
        print(f"{row['group']:<62} {row['impl']:<24} {row['ms']:10.1f} ms {row['peak_gib']:7.2f} GiB "
              f"max diff {row['max_levels']:4.0f} levels {row['error']}".rstrip(), flush=True)
    return rows


def _main(argv=None) -> int:
    from . import resolve_device

    parser = argparse.ArgumentParser(prog="python -m d4k_kernels.benchmarks.pipeline",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto | cuda | cpu")
    parser.add_argument("--quick", action="store_true", help="the smaller CPU shapes")
    parser.add_argument("--runs", type=int, default=3, help="timed warm runs per case (the median is printed)")
    args = parser.parse_args(argv)
    memory_table(resolve_device(args.device), quick=args.quick, runs=args.runs)
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
