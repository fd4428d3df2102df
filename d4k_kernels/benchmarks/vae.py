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
import math
import re
import statistics
import time
from typing import Callable, Dict, List, Optional, Sequence

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
    # the time target is a ratio of these two: on CUDA each is the median of 3 warm runs
    # (single runs gave 1.07-1.23x on the same kind of machine)
    runs = 3 if big else 1
    out.append(dict(group=g, impl="diffusers", cfg=flux, lat=flux_lat, mode="untiled", stride=1, runs=runs))
    out.append(dict(group=g, impl="diffusers.enable_tiling", cfg=flux, lat=flux_lat, mode="diffusers_tiled",
                    stride=1, tile_diff=tile_diff))
    out.append(dict(group=g, impl="d4k exact tiled", cfg=flux, lat=flux_lat, mode="d4k_tiled", stride=1,
                    max_memory="8GiB" if big else None, tile=None if big else flux_lat // 2, runs=runs))
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
    from ..vae.tiling import ExactTiledDecoder

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
                            max_memory=spec.get("max_memory"), progress=spec.get("progress", False))

    def tiled():
        return dec(z)

    tiled.decoder = dec  # memory_table reports the plan (tile, offloaded bytes)
    return tiled


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


def _psnr(a: torch.Tensor, ref: torch.Tensor) -> float:
    a, ref = a.float(), ref.float()
    rng = (ref.max() - ref.min()).item()
    mse = ((a - ref) ** 2).mean().item()
    return float("inf") if mse == 0 else 10 * math.log10(rng * rng / mse)


def memory_table(device: torch.device, quick: bool = False, extra_8k: bool = True,
                 tiles: Sequence[int] = (), only: Optional[str] = None, warm_8k: bool = False) -> List[Dict]:
    """Time (one warm run, or the median of ``runs``; the 8192^2 decode: one cold run, warm with
    ``warm_8k``), peak memory and PSNR against the group's untiled decode of every case; on CUDA also
    Flux F8 -> 8192^2 exact tiled. ``tiles``: extra exact tiled Flux 4096^2 decodes with these tile
    sizes (latent pixels) under the same 8 GiB budget; ``only``: a regex on group + impl."""
    rows = []
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    # order: what a time-limited GPU run needs most comes first (the untiled reference, the exact tiled
    # decode and its PSNR, the 8192^2 decode, the tile sweep; then diffusers' tiling and the SC-VAE)
    specs = _specs(device, quick)
    diffusers_tiled = [sp for sp in specs if sp["mode"] == "diffusers_tiled"]
    specs = [sp for sp in specs if sp["mode"] != "diffusers_tiled"]
    base = next(sp for sp in specs if sp["mode"] == "d4k_tiled" and sp["stride"] == 1)
    at = specs.index(base) + 1
    extra = []
    if device.type == "cuda" and extra_8k:
        extra.append(dict(group="vae decode Flux F8 -> 8192^2 (1024^2 latent) bf16", impl="d4k exact tiled",
                          cfg=_flux_cfg(None), lat=1024, mode="d4k_tiled", stride=1, max_memory="24GiB",
                          warmup=warm_8k, progress=True))  # ~4x the 4096^2 decode: one run (kernels compiled
        # above), with a progress bar on stderr so that a run cut by a time limit shows how far it got
    extra += [dict(base, impl=f"d4k exact tiled, tile={t}", tile=t) for t in tiles]
    specs[at:at] = extra + diffusers_tiled
    if only:
        specs = [sp for sp in specs if re.search(only, f"{sp['group']} {sp['impl']}")]
    refs: Dict[str, torch.Tensor] = {}
    for spec in specs:
        psnr, info = float("nan"), ""
        try:
            fn = _make_fn(spec, device, dtype)
            if spec.get("warmup", True):
                fn()  # warm-up
            if device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            times = []
            for _ in range(spec.get("runs", 1)):
                t0 = time.perf_counter()
                out = fn()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times.append((time.perf_counter() - t0) * 1e3)
            ms = statistics.median(times)
            if len(times) > 1:
                info = f"median of {len(times)}: {min(times):.0f}-{max(times):.0f} ms; "
            peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
            err = ""
            if spec["mode"].startswith("untiled") and spec["group"] not in refs:
                refs[spec["group"]] = out.detach().cpu()
            elif spec["group"] in refs:
                psnr = _psnr(out.detach().cpu(), refs[spec["group"]])
            dec = getattr(fn, "decoder", None)
            if dec is not None and getattr(dec, "last_plan", None) is not None:
                pl = dec.last_plan
                G = 2**30
                info += (f"tile {pl.tile}, {pl.n_tiles} tiles, offloaded {dec.last_offloaded_bytes / G:.1f} GiB "
                         f"(est {pl.est_offload / G:.1f}), host peak {dec.last_peak_host_bytes / G:.1f} GiB "
                         f"(est {pl.est_host / G:.1f})")
                if device.type == "cuda" and spec["lat"] <= 512:
                    # one more (untimed) run measuring the planner's two estimated parts (it resets the
                    # peak statistics, so it runs after the timed runs and their peak reading)
                    dec.measure_memory = True
                    del out
                    out = fn()
                    dec.measure_memory = False
                    info += (f"; memory model: whole-latent part {dec.last_fixed_peak_bytes / G:.2f} GiB "
                             f"(est {pl.est_fixed / G:.2f}), largest tile step {dec.last_step_peak_bytes / G:.2f} "
                             f"GiB (est {pl.est_tile / G:.2f}), device state budget {pl.state_budget / G:.2f}")
            del out
        except (RuntimeError, ValueError) as e:  # e.g. out of memory for the untiled 8K decode: a row says so
            ms, peak, err = float("nan"), float("nan"), f"{type(e).__name__}: {str(e).splitlines()[0][:80]}"
        rows.append(dict(group=spec["group"], impl=spec["impl"], ms=ms, peak_gib=peak, psnr_db=psnr, info=info,
                         error=err))
        print(f"{spec['group']:<58} {spec['impl']:<26} {ms:10.1f} ms  {peak:7.2f} GiB  PSNR {psnr:6.1f} dB  "
              f"{info} {err}".rstrip(), flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def _main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-8k", action="store_true")
    ap.add_argument("--warm-8k", action="store_true",
                    help="time the 8192^2 decode after a first run (pinned pool and caches warm; ~2 min)")
    ap.add_argument("--tiles", default="", help="extra exact tiled Flux decodes with these tiles, e.g. 96,128")
    ap.add_argument("--only", default=None, help="regex on 'group impl': run only the matching cases")
    a = ap.parse_args(argv)
    from . import resolve_device

    tiles = [int(t) for t in a.tiles.split(",") if t.strip()]
    memory_table(resolve_device(a.device), quick=a.quick, extra_8k=not a.no_8k, tiles=tiles, only=a.only,
                 warm_8k=a.warm_8k)
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
