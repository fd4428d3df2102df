"""Exact tiled decoding with a diffusers AutoencoderKL-family decoder: :class:`ExactTiledDecoder`.

Why diffusers' ``enable_tiling()`` is not exact: every tile runs the whole decoder, so each of the
decoder's GroupNorms normalises with the statistics of its tile, and the mid-block attention sees
only its tile. Here ``post_quant_conv``, ``conv_in`` and the mid-block (with its attention) run on the
whole latent (1/64 of the output pixels); the up path and the tail run in tiles (core + halo of the
receptive field, vae/tiling/windows.py), each a generator that stops at every GroupNorm
(vae/tiling/program.py); the driver (vae/tiling/driver.py) runs them layer-synchronously, so every
GroupNorm is normalised with the statistics of the whole tensor, and parks the waiting tiles' state on
the device or in pinned host memory (vae/tiling/parking.py) as the plan (vae/tiling/planner.py) says.
Nothing is recomputed except the halos. docs/ops.md, "SC-VAE and exact tiled decoding", has the
design and the memory model.
"""
from __future__ import annotations

import contextlib
from typing import Optional

import torch
import torch.nn as nn

from ..._checks import check_int, check_tensor
from ..._util import parse_memory
from ...ops.groupnorm import X_DTYPES
from ..attention import fast_vae_attention
from .driver import run_tiles
from .ops import get_ops
from .parking import Store
from .planner import TilePlan, make_plan, warn_if_host_short
from .program import decoder_program
from .structure import DecoderStructure
from .windows import Tile

__all__ = ["ExactTiledDecoder", "tiled_decode"]


def check_latent(z, dec: nn.Module, post_quant_conv: Optional[nn.Module]) -> None:
    """Raise unless ``z`` is a latent the decoder takes: (N, C, H, W) with C its input channels, not
    empty, a float dtype, on the device and in the dtype of its weights (any dtype under autocast)."""
    check_tensor(z, "z", ndim=4)
    first = post_quant_conv if post_quant_conv is not None else dec.conv_in
    if z.shape[1] != first.in_channels:
        raise ValueError(f"z has {z.shape[1]} channels but the decoder expects {first.in_channels} "
                         f"(z has shape {tuple(z.shape)})")
    check_tensor(z, "z", dtypes=X_DTYPES)
    if min(z.shape) == 0:
        raise ValueError(f"z must not be empty, got shape {tuple(z.shape)}")
    w = first.weight
    if z.device != w.device:
        raise ValueError(f"z is on {z.device} but the decoder's weights are on {w.device}")
    if z.dtype != w.dtype and not torch.is_autocast_enabled(z.device.type):
        raise TypeError(f"z has dtype {str(z.dtype).replace('torch.', '')} but the decoder's weights are "
                        f"{str(w.dtype).replace('torch.', '')}: cast one to the other")


class _Output:
    """The output image, written tile core by tile core (allocated at the first tile)."""

    def __init__(self, n: int, H: int, W: int):
        self.n, self.H, self.W = n, H, W
        self.t: Optional[torch.Tensor] = None

    def write(self, res: Tile) -> None:
        if self.t is None:
            self.t = torch.empty((self.n, res.t.shape[1], self.H, self.W), dtype=res.t.dtype, device=res.t.device)
        cy0, cy1, cx0, cx1 = res.core_box
        self.t[..., cy0:cy1, cx0:cx1] = res.core()


class _PeakMeter:
    """The CUDA allocator's peak above what was allocated when each measured part began, the largest
    over the parts (it resets the peak statistics at each part); ``peak`` stays None when off."""

    def __init__(self, device: torch.device, on: bool):
        self.device, self.on = device, on
        self.peak: Optional[int] = 0 if on else None

    @contextlib.contextmanager
    def part(self):
        if not self.on:
            yield
            return
        torch.cuda.reset_peak_memory_stats(self.device)
        a0 = torch.cuda.memory_allocated(self.device)
        yield
        self.peak = max(self.peak, torch.cuda.max_memory_allocated(self.device) - a0)


@contextlib.contextmanager
def _progress_bar(progress: Optional[bool], total: int):
    bar = None
    if progress is not False and (progress is not None or total > 1):
        try:
            from tqdm.auto import tqdm
        except ImportError:  # pragma: no cover
            tqdm = None
        if tqdm is not None:  # progress=None: tqdm shows the bar only on a terminal
            bar = tqdm(total=total, desc="d4k exact tiled decode", disable=None if progress is None else False,
                       leave=False, unit="tile-step")
    try:
        yield bar
    finally:
        if bar is not None:
            bar.close()


class ExactTiledDecoder:
    """Exact tiled decode with a diffusers AutoencoderKL-family decoder (``vae.decoder``).

    ``post_quant_conv`` (optional) is applied to the whole latent first, as AutoencoderKL._decode does.
    ``tile``: core size in latent pixels (default: from ``max_memory``); ``halo``: context in
    latent pixels (default and minimum: the receptive field); ``max_memory``: bytes or "8GiB"
    (kept in bytes); ``progress``: tqdm bar (None = only on a terminal and for more than one tile);
    ``use_kernels``: the d4k GroupNorm / upconv / attention kernels (None = on CUDA);
    ``offload``: park tile state in pinned CPU memory when it does not fit the budget
    (None/True) or never (False).
    ``measure_memory``: on CUDA, also measure the parts of the memory model the planner estimates
    (``last_fixed_peak_bytes``: the whole-latent part, ``last_step_peak_bytes``: the largest working
    set of one tile step, both above what was allocated before them). It resets the CUDA allocator's
    peak statistics before each part, so a caller's own ``max_memory_allocated`` reading over the
    decode is lost: off by default.
    """

    def __init__(self, decoder: nn.Module, post_quant_conv: Optional[nn.Module] = None, *,
                 tile: Optional[int] = None, max_memory=None, halo: Optional[int] = None,
                 progress: Optional[bool] = None, use_kernels: Optional[bool] = None,
                 offload: Optional[bool] = None, measure_memory: bool = False):
        self.structure = DecoderStructure.of(decoder)
        if tile is not None:
            check_int(tile, "tile", lo=1)
        if halo is not None:
            check_int(halo, "halo", lo=self.structure.halo)
        for v, name in ((progress, "progress"), (use_kernels, "use_kernels"), (offload, "offload")):
            if v is not None and not isinstance(v, bool):
                raise TypeError(f"{name} must be True, False or None, got {v!r}")
        self.decoder = decoder
        self.post_quant_conv = post_quant_conv
        self.tile, self.max_memory, self.halo = tile, parse_memory(max_memory), halo
        self.progress, self.use_kernels, self.offload = progress, use_kernels, offload
        self.last_plan: Optional[TilePlan] = None
        self.last_offloaded_bytes = 0  # bytes moved to the host over the whole decode
        self.last_peak_parked_bytes = 0  # the most tile state parked at once (device + host)
        self.last_peak_host_bytes = 0  # the most of it in host memory at once
        self.measure_memory = bool(measure_memory)
        self.last_fixed_peak_bytes: Optional[int] = None  # measured (CUDA, measure_memory): see above
        self.last_step_peak_bytes: Optional[int] = None

    def plan(self, z: torch.Tensor) -> TilePlan:
        """The plan of a decode of ``z``; pass it to ``__call__`` to decode without planning again."""
        check_latent(z, self.decoder, self.post_quant_conv)
        return make_plan(self.structure, tuple(z.shape), z.dtype, tile=self.tile, budget=self.max_memory,
                         halo=self.halo, device=z.device)

    @torch.no_grad()
    def __call__(self, z: torch.Tensor, plan: Optional[TilePlan] = None) -> torch.Tensor:
        plan = self.plan(z) if plan is None else self._check_plan(plan, z)
        self.last_plan = plan
        ops = get_ops(z.device, self.use_kernels)
        measure = self.measure_memory and z.device.type == "cuda"
        fixed, step = _PeakMeter(z.device, measure), _PeakMeter(z.device, measure)
        with fixed.part(), fast_vae_attention(self.decoder.mid_block, enabled=ops.name == "d4k"):
            x = self._whole_latent(z)
        programs = [decoder_program(self.decoder, ops, Tile.of(x, core, plan.halo)) for core in plan.tiles]
        out = _Output(x.shape[0], x.shape[2] * self.structure.scale, x.shape[3] * self.structure.scale)
        del x  # the tiles hold views of the mid-block output until their first GroupNorm
        store = Store(z.device, None if self.offload is False else plan.state_budget)
        if store.stream is not None and self.offload is not False:
            warn_if_host_short(plan)
        with _progress_bar(self.progress, (self.structure.n_norms + 1) * len(programs)) as bar:
            run_tiles(programs, ops.finalize, store, out.write, bar=bar, meter=step.part)
        led = store.ledger
        self.last_offloaded_bytes, self.last_peak_parked_bytes, self.last_peak_host_bytes = (
            led.offloaded, led.peak_parked, led.peak_host)
        self.last_fixed_peak_bytes, self.last_step_peak_bytes = fixed.peak, step.peak
        return out.t

    def _check_plan(self, plan: TilePlan, z: torch.Tensor) -> TilePlan:
        check_latent(z, self.decoder, self.post_quant_conv)
        if not isinstance(plan, TilePlan):
            raise TypeError(f"plan must be a TilePlan (from .plan(z)), got {type(plan).__name__}")
        if plan.z_shape != tuple(z.shape) or plan.halo < self.structure.halo:
            raise ValueError(f"plan is for a {plan.z_shape} latent with halo {plan.halo}, but z has shape "
                             f"{tuple(z.shape)} and the decoder needs a halo of at least {self.structure.halo}")
        return plan

    def _whole_latent(self, z: torch.Tensor) -> torch.Tensor:
        """post_quant_conv, conv_in and the mid-block on the whole latent, in the up path's dtype."""
        dec = self.decoder
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        x = dec.mid_block(dec.conv_in(z), None)
        return x.to(next(iter(dec.up_blocks.parameters())).dtype)


def tiled_decode(vae_or_decoder: nn.Module, z: torch.Tensor, *, tile: Optional[int] = None, max_memory=None,
                 halo: Optional[int] = None, progress: Optional[bool] = None,
                 use_kernels: Optional[bool] = None, offload: Optional[bool] = None) -> torch.Tensor:
    """Exact tiled decode of latents ``z`` (already unscaled, as AutoencoderKL.decode takes them)
    with a diffusers AutoencoderKL (or SCAutoencoderKL), or with a bare decoder (no post_quant_conv).
    Returns the image tensor (N, C, H*s, W*s), equal to the untiled decode."""
    dec = getattr(vae_or_decoder, "decoder", vae_or_decoder)
    pqc = getattr(vae_or_decoder, "post_quant_conv", None) if dec is not vae_or_decoder else None
    return ExactTiledDecoder(dec, pqc, tile=tile, max_memory=max_memory, halo=halo, progress=progress,
                             use_kernels=use_kernels, offload=offload)(z)
