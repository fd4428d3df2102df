"""VAE decode benchmarks: untiled diffusers vs diffusers' enable_tiling() vs d4k exact tiling.

CUDA (bf16, random weights): Flux F8 -> 4096^2 (512^2 latent) three ways; SC-VAE F16 -> 4096^2
(256^2 latent) untiled with the torch tail vs the d4k fused tail, and exact tiled. Peak memory is
not part of the shared runner's table: ``python -m d4k_kernels.benchmarks.vae [--device cuda]``
prints time AND torch.cuda.max_memory_allocated per case, plus the 8192^2 exact tiled decode
(too slow for the shared runner's repeated timing).
CPU: a small-channel Flux-like config at a small latent, 2x2 tiles (quick: tinier). At these
sizes the 13-pixel halo is a large part of each tile: the CPU ratio is not the GPU one.
"""
from __future__ import annotations

import argparse
import time
from typing import Callable, Dict, List, Optional

import torch

from . import Case

__all__ = ["cases", "memory_table"]


def _flux_cfg(small: Optional[str]) -> Dict:
    from ..vae.sc_vae import FLUX_VAE_CONFIG

    cfg = dict(FLUX_VAE_CONFIG)
    if small == "cpu":
        cfg.update(block_out_channels=[16, 32, 64, 64], norm_num_groups=8)
    elif small == "quick":
        cfg.update(block_out_channels=[8, 8, 16, 16], norm_num_groups=4, layers_per_block=1)
    return cfg


def _build(cfg: Dict, device, dtype, stride: int = 1):
    from ..vae.sc_vae import SCAutoencoderKL

    torch.manual_seed(0)
    vae = SCAutoencoderKL(**cfg, stride=stride)
    with torch.no_grad():
        for p in vae.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    # nn.Module.to: ModelMixin.to warns about "modules to keep in float32" (there are none)
    return torch.nn.Module.to(vae, device=device, dtype=dtype).eval()


def _specs(device: torch.device, quick: bool) -> List[Dict]:
    """(group, impl, builder) descriptions; builders return a zero-argument callable."""
    if device.type == "cuda":
        dtype, flux, flux_lat, sc_lat, big = torch.bfloat16, _flux_cfg(None), 512, 256, True
        tile_diff = None
    else:
        dtype, big = torch.float32, False
        flux = _flux_cfg("quick" if quick else "cpu")
        flux_lat, sc_lat = (16, 8) if quick else (64, 32)
        tile_diff = (64, 8) if quick else (128, 16)
    px = flux_lat * 8
    out = []
    g = f"vae decode Flux F8 -> {px}^2 ({flux_lat}^2 latent) {str(dtype).replace('torch.', '')}"
    out.append(dict(group=g, impl="diffusers", cfg=flux, lat=flux_lat, mode="untiled", stride=1))
    out.append(dict(group=g, impl="diffusers.enable_tiling", cfg=flux, lat=flux_lat, mode="diffusers_tiled",
                    stride=1, tile_diff=tile_diff))
    out.append(dict(group=g, impl="d4k exact tiled", cfg=flux, lat=flux_lat, mode="d4k_tiled", stride=1,
                    max_memory="8GiB" if big else None, tile=None if big else flux_lat // 2))
    px = sc_lat * 16
    g = f"vae decode SC-VAE F16 -> {px}^2 ({sc_lat}^2 latent) {str(dtype).replace('torch.', '')}"
    out.append(dict(group=g, impl="torch tail (untiled)", cfg=flux, lat=sc_lat, mode="untiled_torch_tail", stride=2))
    if device.type == "cuda":
        out.append(dict(group=g, impl="d4k fused tail (untiled)", cfg=flux, lat=sc_lat, mode="untiled_d4k_tail",
                        stride=2))
    out.append(dict(group=g, impl="d4k exact tiled", cfg=flux, lat=sc_lat, mode="d4k_tiled", stride=2,
                    max_memory="6GiB" if big else None, tile=None if big else sc_lat // 2))
    return out


def _make_fn(spec: Dict, device: torch.device, dtype) -> Callable[[], object]:
    from ..vae.tiled import ExactTiledDecoder

    vae = _build(spec["cfg"], device, dtype, spec["stride"])
    lat = spec["lat"]
    z = torch.randn(1, vae.config.latent_channels, lat, lat, device=device, dtype=dtype)
    mode = spec["mode"]
    if mode == "diffusers_tiled":
        vae.enable_tiling()
        if spec.get("tile_diff"):
            vae.tile_sample_min_size, vae.tile_latent_min_size = spec["tile_diff"]
    if mode in ("untiled", "diffusers_tiled", "untiled_torch_tail", "untiled_d4k_tail"):
        if mode == "untiled_torch_tail":
            vae.decoder.use_kernels = False
        if mode == "untiled_d4k_tail":
            vae.decoder.use_kernels = True

        def fn():
            with torch.no_grad():
                return vae.decode(z).sample
        return fn
    dec = ExactTiledDecoder(vae.decoder, vae.post_quant_conv, tile=spec.get("tile"),
                            max_memory=spec.get("max_memory"), progress=False)
    return lambda: dec(z)


def cases(device: torch.device, quick: bool = False) -> List[Case]:
    try:
        import diffusers  # noqa: F401
    except ImportError:
        return []
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    out = []
    for spec in _specs(device, quick):
        fn = _make_fn(spec, device, dtype)
        n_px = (spec["lat"] * 8 * spec["stride"]) ** 2
        # fewest bytes: the latent in, the RGB image out
        nbytes = (spec["lat"] ** 2 * 16 + 3 * n_px) * torch.empty((), dtype=dtype).element_size()
        out.append(Case(spec["group"], spec["impl"], fn, bytes_moved=nbytes, note=spec["mode"]))
    return out


def memory_table(device: torch.device, quick: bool = False, extra_8k: bool = True) -> List[Dict]:
    """Time (one warm run) and peak memory of every case; on CUDA also Flux F8 -> 8192^2 exact tiled."""
    rows = []
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    specs = _specs(device, quick)
    if device.type == "cuda" and extra_8k:
        specs.append(dict(group="vae decode Flux F8 -> 8192^2 (1024^2 latent) bf16", impl="d4k exact tiled",
                          cfg=_flux_cfg(None), lat=1024, mode="d4k_tiled", stride=1, max_memory="24GiB"))
    for spec in specs:
        try:
            fn = _make_fn(spec, device, dtype)
            fn()  # warm-up
            if device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            ms = (time.perf_counter() - t0) * 1e3
            peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
            err = ""
        except Exception as e:  # e.g. out of memory for the untiled 8K decode
            ms, peak, err = float("nan"), float("nan"), f"{type(e).__name__}: {str(e).splitlines()[0][:80]}"
        rows.append(dict(group=spec["group"], impl=spec["impl"], ms=ms, peak_gib=peak, error=err))
        print(f"{spec['group']:<58} {spec['impl']:<26} {ms:10.1f} ms  {peak:7.2f} GiB {err}", flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def _main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-8k", action="store_true")
    a = ap.parse_args(argv)
    from . import resolve_device

    memory_table(resolve_device(a.device), quick=a.quick, extra_8k=not a.no_8k)
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
