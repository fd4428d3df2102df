"""Exact tiled decoding for diffusers AutoencoderKL-family decoders (SPEC.md §4).

Why diffusers' ``enable_tiling()`` is not exact: every tile runs the whole decoder, so each of the
decoder's GroupNorms normalises with the statistics of its tile, and the mid-block attention sees
only its tile. Here:

* ``post_quant_conv``, ``conv_in`` and the mid-block (with its attention) run on the whole latent
  (it is small: 1/64 of the output pixels);
* the up path runs in tiles. A tile is a *core* (the tiles' cores partition the latent) plus a
  halo of at least the up path's receptive field (13 latent pixels for Flux / SD3 / SDXL). Each
  3x3 conv shrinks the valid window of a tile by its reach (except at the image border, where the
  zero padding is the real one), each nearest x2 doubles every coordinate; the window bookkeeping
  is exact for any latent size (the last tile row/column may be smaller);
* every GroupNorm of the up path (and ``conv_norm_out``) is normalised with the statistics of the
  whole tensor: the tiles run *layer-synchronously*. Each tile is a Python generator that runs up
  to the next GroupNorm, hands its partial sums (sum, sum of squares, over its CORE only, in
  float64) and its live state to the driver and waits; the driver sums the partials of all tiles,
  finalises mean / rstd, and resumes every tile. Between two GroupNorms a tile's state (its
  activation and, inside a ResNet block, the residual branch) stays on the device while the
  memory budget allows, otherwise it is parked in pinned CPU memory (asynchronous copies).

Nothing is recomputed except the halos; see bench/NOTES_vae.md for the memory model.

Public API: :func:`tiled_decode`, :class:`ExactTiledDecoder`, :func:`parse_memory`,
:func:`required_halo`.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._checks import check_int, check_tensor
from .._util import parse_memory

__all__ = ["tiled_decode", "ExactTiledDecoder", "TilePlan", "parse_memory", "required_halo", "DEFAULT_MAX_MEMORY"]

DEFAULT_MAX_MEMORY = 8 * 2**30  # 8 GiB
MIN_AUTO_TILE = 32  # latent pixels: the smallest tile the memory planner picks (halo 13 on each side)


# ----------------------------------------------------------------------------------------------
# the small op interface: plain torch, or the d4k kernels (ops/groupnorm.py, ops/upconv.py)
# ----------------------------------------------------------------------------------------------

class TorchOps:
    """Plain torch GroupNorm statistics / apply and the decoder tail (the reference path)."""

    name = "torch"

    @staticmethod
    def stats(x: torch.Tensor, num_groups: int, out: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(N, G, 2) float64 [sum, sum of squares] of x per (sample, group); added into ``out``.
        Per-channel reductions accumulate in float64 without a float64 copy of x."""
        n, c = x.shape[:2]
        dims = tuple(range(2, x.dim()))
        cnt = math.prod(x.shape[2:])
        xf = x if x.dtype in (torch.float32, torch.float64) else x.to(torch.float32)
        # per-channel variance and mean (fp32, numerically stable), combined in float64
        var, mean = torch.var_mean(xf, dim=dims, correction=0)
        mean, var = mean.to(torch.float64), var.to(torch.float64)
        s = torch.stack([mean * cnt, (var + mean * mean) * cnt], dim=-1)
        s = s.reshape(n, num_groups, c // num_groups, 2).sum(2)
        if out is None:
            return s
        out += s
        return out

    @staticmethod
    def finalize(stats: torch.Tensor, count: int, eps: float) -> Tuple[torch.Tensor, torch.Tensor]:
        mean = stats[..., 0] / count
        var = (stats[..., 1] / count - mean * mean).clamp_min(0)
        rstd = torch.rsqrt(var + eps)
        return mean.to(torch.float32), rstd.to(torch.float32)

    @staticmethod
    def apply(x, mean, rstd, weight, bias, num_groups, act=None):
        """GroupNorm with the given statistics as x * scale + shift per channel in fp32 (the form
        nn.GroupNorm's kernels use), rounded to x.dtype, then ``act`` on the x.dtype result (as the
        diffusers decoder does)."""
        n, c = x.shape[:2]
        cg = c // num_groups
        scale = rstd.to(torch.float32).repeat_interleave(cg, dim=1)  # (N, C)
        if weight is not None:
            scale = scale * weight.to(torch.float32)
        shift = -mean.to(torch.float32).repeat_interleave(cg, dim=1) * scale
        if bias is not None:
            shift = shift + bias.to(torch.float32)
        shp = (n, c) + (1,) * (x.dim() - 2)
        y = torch.addcmul(shift.reshape(shp), x.to(torch.float32), scale.reshape(shp)).to(x.dtype)
        if isinstance(act, nn.SiLU):
            return F.silu(y, inplace=True)  # y is a fresh tensor
        return act(y) if act is not None else y

    @classmethod
    def upconv_tail(cls, x, mean, rstd, gn_weight, gn_bias, conv_weight, conv_bias, num_groups,
                    act=None, partitioned=True):
        """GN-apply -> act -> nearest x2 -> conv3x3 over the 2x grid of x, zero padded as the
        SC-VAE tail: partitioned pads (top 2, left 2) of the upsampled map, plain pads 1 all round."""
        y = cls.apply(x, mean, rstd, gn_weight, gn_bias, num_groups, act=act)
        y = F.interpolate(y, scale_factor=2.0, mode="nearest")
        y = F.pad(y, (2, 0, 2, 0) if partitioned else (1, 1, 1, 1))
        return F.conv2d(y, conv_weight, conv_bias)


class KernelOps(TorchOps):
    """The d4k Triton kernels (ops/groupnorm.py, ops/upconv.py) where they apply."""

    name = "d4k"

    def __init__(self):
        from ..ops import groupnorm, upconv  # noqa: F401  (ImportError -> not available)

        self._gn = groupnorm
        self._up = upconv

    def stats(self, x, num_groups, out=None):
        return self._gn.group_norm_stats(x, num_groups, out=out)

    def finalize(self, stats, count, eps):
        return self._gn.group_norm_finalize(stats, count, eps)

    def apply(self, x, mean, rstd, weight, bias, num_groups, act=None):
        if act is None or isinstance(act, nn.SiLU):
            return self._gn.group_norm_apply(x, mean, rstd, weight, bias, num_groups, silu=act is not None)
        return TorchOps.apply(x, mean, rstd, weight, bias, num_groups, act=act)

    def upconv_tail(self, x, mean, rstd, gn_weight, gn_bias, conv_weight, conv_bias, num_groups,
                    act=None, partitioned=True):
        if not isinstance(act, nn.SiLU):
            return TorchOps.upconv_tail(x, mean, rstd, gn_weight, gn_bias, conv_weight, conv_bias,
                                        num_groups, act=act, partitioned=partitioned)
        return self._up.upconv_tail(x, mean, rstd, gn_weight, gn_bias, conv_weight, conv_bias, num_groups,
                                    partitioned=partitioned)


_KERNEL_OPS: Optional[object] = None


def kernels_available() -> bool:
    global _KERNEL_OPS
    if _KERNEL_OPS is None:
        try:
            _KERNEL_OPS = KernelOps()
        except Exception:  # not landed yet / triton missing
            _KERNEL_OPS = False
    return _KERNEL_OPS is not False


def get_ops(device: torch.device, use_kernels: Optional[bool] = None):
    """TorchOps, or KernelOps when ``use_kernels`` (default: the kernels are importable and the
    tensors are on CUDA)."""
    if use_kernels is None:
        use_kernels = device.type == "cuda" and kernels_available()
    if use_kernels:
        if not kernels_available():
            raise RuntimeError("use_kernels=True but d4k_kernels.ops.groupnorm / ops.upconv cannot be imported")
        return _KERNEL_OPS
    return TorchOps


# ----------------------------------------------------------------------------------------------
# memory sizes
# ----------------------------------------------------------------------------------------------

# ----------------------------------------------------------------------------------------------
# decoder structure
# ----------------------------------------------------------------------------------------------

def _check_conv3(conv, what):
    if not isinstance(conv, nn.Conv2d) or conv.kernel_size != (3, 3) or conv.stride != (1, 1) \
            or conv.dilation != (1, 1) or conv.groups != 1 or conv.padding_mode != "zeros":
        raise ValueError(f"exact tiling supports 3x3 stride-1 zero-padded convs only; {what} is {conv!r}")


def _check_gn(norm, what):
    if not isinstance(norm, nn.GroupNorm):
        raise ValueError(f"exact tiling needs nn.GroupNorm layers; {what} is {type(norm).__name__}")


def check_decoder(dec: nn.Module) -> None:
    """Raise ValueError unless ``dec`` is a decoder this module can tile exactly."""
    for name in ("conv_in", "mid_block", "up_blocks", "conv_norm_out", "conv_act", "conv_out"):
        if not hasattr(dec, name):
            raise ValueError(f"{type(dec).__name__} is not a diffusers AutoencoderKL-style decoder (no {name!r})")
    _check_gn(dec.conv_norm_out, "decoder.conv_norm_out (SpatialNorm decoders are not supported)")
    _check_conv3(dec.conv_out, "decoder.conv_out")
    for i, block in enumerate(dec.up_blocks):
        if not hasattr(block, "resnets") or getattr(block, "attentions", None):
            raise ValueError(f"up_blocks[{i}] ({type(block).__name__}) is not supported: need resnets + "
                             "upsamplers and no attention (UpDecoderBlock2D)")
        for j, r in enumerate(block.resnets):
            what = f"up_blocks[{i}].resnets[{j}]"
            if getattr(r, "upsample", None) is not None or getattr(r, "downsample", None) is not None \
                    or getattr(r, "time_emb_proj", None) is not None or not getattr(r, "pre_norm", True):
                raise ValueError(f"{what} ({type(r).__name__}) has up/down sampling, a time embedding or "
                                 "post-norm: not supported")
            for n in ("norm1", "norm2"):
                _check_gn(getattr(r, n, None), f"{what}.{n}")
            _check_conv3(r.conv1, f"{what}.conv1")
            _check_conv3(r.conv2, f"{what}.conv2")
            sc = getattr(r, "conv_shortcut", None)
            if sc is not None and (not isinstance(sc, nn.Conv2d) or sc.kernel_size != (1, 1) or sc.stride != (1, 1)):
                raise ValueError(f"{what}.conv_shortcut must be a 1x1 conv, got {sc!r}")
        ups = getattr(block, "upsamplers", None) or []
        if len(ups) > 1:
            raise ValueError(f"up_blocks[{i}] has {len(ups)} upsamplers; expected at most one")
        for u in ups:
            if getattr(u, "use_conv_transpose", False) or getattr(u, "norm", None) is not None \
                    or not getattr(u, "interpolate", True) or not getattr(u, "use_conv", False):
                raise ValueError(f"up_blocks[{i}].upsamplers[0] must be nearest x2 + conv (Upsample2D(use_conv=True))")
            _check_conv3(_up_conv(u), f"up_blocks[{i}].upsamplers[0].conv")
    stride = getattr(dec, "stride", 1)
    if stride not in (1, 2):
        raise ValueError(f"decoder stride must be 1 or 2, got {stride!r}")


def _up_conv(u):
    return u.conv if getattr(u, "name", "conv") == "conv" else u.Conv2d_0


def _tail(dec):
    """(stride, partitioned) of a decoder's tail: stride 2 = SC-VAE (extra nearest x2 at the end)."""
    return getattr(dec, "stride", 1), bool(getattr(dec, "partitioned", True))


def _stage_info(dec) -> Tuple[int, List[Tuple[int, int, int]]]:
    """Walk the up path backwards from the output and return (halo, stages): ``halo`` is the context a
    tile needs at the latent resolution, ``stages`` lists (scale, channels, margin) for each
    resolution: the widest tensor there and the context (pixels at that scale) it still needs."""
    stride, part = _tail(dec)
    blocks = list(dec.up_blocks)
    s = 2 ** sum(1 for blk in blocks if getattr(blk, "upsamplers", None))
    c0 = dec.conv_norm_out.num_channels
    stages = []
    if stride == 2:
        b, a = (2, 0) if part else (1, 1)
        stages.append((2 * s, max(c0, dec.conv_out.out_channels), max(b, a)))
        b, a = math.ceil(b / 2), math.ceil(a / 2)
    else:
        b, a = 1, 1
    for blk in reversed(blocks):
        c_out = blk.resnets[-1].conv2.out_channels
        if getattr(blk, "upsamplers", None):
            b, a = b + 1, a + 1
            stages.append((s, c_out, max(b, a)))  # the upsampled tensor (and its conv)
            b, a = math.ceil(b / 2), math.ceil(a / 2)
            s //= 2
        n = 2 * len(blk.resnets)
        b, a = b + n, a + n
        c_in = blk.resnets[0].conv1.in_channels
        stages.append((s, max(c_in, c_out), max(b, a)))
    return max(b, a), stages[::-1]


def required_halo(dec: nn.Module) -> int:
    """Latent pixels of context a tile needs on each side: the up path's receptive field (13 for
    Flux / SD3 / SDXL and for the SC-VAE F16), computed from the decoder's layers."""
    return _stage_info(dec)[0]


def _scale(dec) -> int:
    s = 2 ** sum(1 for b in dec.up_blocks if getattr(b, "upsamplers", None))
    return s * _tail(dec)[0]


# ----------------------------------------------------------------------------------------------
# tiles and their windows
# ----------------------------------------------------------------------------------------------

class _Tile:
    """A tile tensor (N, C, h, w) that holds rows [y0, y1) and columns [x0, x1) of the full
    (H, W) tensor at the current resolution; its core [cy0, cy1) x [cx0, cx1) is the part it owns."""

    __slots__ = ("t", "y0", "y1", "x0", "x1", "H", "W", "cy0", "cy1", "cx0", "cx1")

    def __init__(self, t, y0, y1, x0, x1, H, W, core):
        self.t, self.y0, self.y1, self.x0, self.x1, self.H, self.W = t, y0, y1, x0, x1, H, W
        self.cy0, self.cy1, self.cx0, self.cx1 = core
        if t is not None and tuple(t.shape[-2:]) != (y1 - y0, x1 - x0):
            raise AssertionError(f"tile tensor {tuple(t.shape)} does not match window {(y0, y1, x0, x1)}")
        if not (y0 <= self.cy0 and self.cy1 <= y1 and x0 <= self.cx0 and self.cx1 <= x1):
            raise RuntimeError(f"halo too small: window {(y0, y1, x0, x1)} does not cover core "
                               f"{(self.cy0, self.cy1, self.cx0, self.cx1)} (increase halo)")

    @property
    def core_box(self):
        return (self.cy0, self.cy1, self.cx0, self.cx1)

    def core(self) -> torch.Tensor:
        return self.t[..., self.cy0 - self.y0:self.cy1 - self.y0, self.cx0 - self.x0:self.cx1 - self.x0]

    def new(self, t, y0, y1, x0, x1, H=None, W=None, core=None):
        return _Tile(t, y0, y1, x0, x1, self.H if H is None else H, self.W if W is None else W,
                     self.core_box if core is None else core)

    def crop(self, y0, y1, x0, x1) -> "_Tile":
        t = self.t[..., y0 - self.y0:y1 - self.y0, x0 - self.x0:x1 - self.x0]
        return self.new(t, y0, y1, x0, x1)

    def up2(self, t) -> "_Tile":
        c = self.core_box
        return _Tile(t, 2 * self.y0, 2 * self.y1, 2 * self.x0, 2 * self.x1, 2 * self.H, 2 * self.W,
                     tuple(2 * v for v in c))


def _conv_range(a: int, b: int, n: int, pb: int):
    """1-D bookkeeping of a 3-tap conv on the rows [a, b) of a length-n signal whose full-tensor
    conv is out[i] = sum_k w[k] u[i + k - pb] (u = 0 outside [0, n); output length n).
    Returns (lo, hi, src_lo, src_hi, pad_before, pad_after): the output rows [lo, hi) this window
    computes exactly, and the input rows to read plus the zero rows to add."""
    lo = 0 if a == 0 else a + pb
    hi = n if b == n else b + pb - 2
    if hi <= lo:
        raise RuntimeError(f"tile window [{a}, {b}) of {n} is too small for its conv (halo too small)")
    s0, s1 = lo - pb, hi - pb + 2
    src_lo, src_hi = max(s0, a), min(s1, b)
    return lo, hi, src_lo, src_hi, src_lo - s0, s1 - src_hi


def _conv3_tile(x: _Tile, conv: nn.Conv2d, pb: int = 1) -> _Tile:
    ly, hy, sy0, sy1, py0, py1 = _conv_range(x.y0, x.y1, x.H, pb)
    lx, hx, sx0, sx1, px0, px1 = _conv_range(x.x0, x.x1, x.W, pb)
    t = x.t[..., sy0 - x.y0:sy1 - x.y0, sx0 - x.x0:sx1 - x.x0]
    if pb == 1:
        # the conv's own zero padding (no padded copy of the tile); the rows/cols it invents on a
        # side that is not the image border are cropped away
        out = F.conv2d(t, conv.weight, conv.bias, padding=1)
        out = out[..., 1 - py0:out.shape[-2] - 1 + py1, 1 - px0:out.shape[-1] - 1 + px1]
    else:
        if py0 or py1 or px0 or px1:
            t = F.pad(t, (px0, px1, py0, py1))
        out = F.conv2d(t, conv.weight, conv.bias)
    return x.new(out, ly, hy, lx, hx)


def _crop_upconv(x: _Tile, out: torch.Tensor, pb: int) -> _Tile:
    """``out`` is an upconv computed over the 2x grid of the whole tile with the full-tensor zero
    padding; keep the rows/cols whose inputs were all inside the tile (or truly outside the image)."""
    ly, hy = _conv_range(2 * x.y0, 2 * x.y1, 2 * x.H, pb)[:2]
    lx, hx = _conv_range(2 * x.x0, 2 * x.x1, 2 * x.W, pb)[:2]
    oy, ox = 2 * x.y0, 2 * x.x0
    t = out[..., ly - oy:hy - oy, lx - ox:hx - ox]
    c = x.core_box
    return _Tile(t, ly, hy, lx, hx, 2 * x.H, 2 * x.W, tuple(2 * v for v in c))


# ----------------------------------------------------------------------------------------------
# the per-tile program (a generator that yields at every GroupNorm)
# ----------------------------------------------------------------------------------------------

@dataclass
class _Req:
    stats: torch.Tensor      # (N, G, 2) float64 partial sums over the tile's core
    count: int               # elements per group in the core
    norm: nn.GroupNorm
    live: List[_Tile]        # the tile's state while it waits (the driver may park it)


def _gn_request(ops, x: _Tile, norm: nn.GroupNorm, live: List[_Tile]) -> _Req:
    core = x.core()
    G = norm.num_groups
    cnt = (core.shape[1] // G) * core.shape[-2] * core.shape[-1]
    return _Req(ops.stats(core, G), cnt, norm, live)


def _tile_program(dec, ops, x: _Tile):
    """Runs the up path + tail of ``dec`` on one tile; yields a _Req at each GroupNorm and expects
    (mean, rstd) back; returns the output tile."""
    for block in dec.up_blocks:
        for r in block.resnets:
            live = [x]
            mean, rstd = yield _gn_request(ops, x, r.norm1, live)
            x = live[0]
            h = x.new(ops.apply(x.t, mean, rstd, r.norm1.weight, r.norm1.bias, r.norm1.num_groups,
                                act=r.nonlinearity), x.y0, x.y1, x.x0, x.x1)
            h = _conv3_tile(h, r.conv1)
            # the residual branch, cropped to what conv2 can still produce
            res = x.crop(h.y0, h.y1, h.x0, h.x1)
            if r.conv_shortcut is not None:
                res = res.new(r.conv_shortcut(res.t), res.y0, res.y1, res.x0, res.x1)
            live = [res, h]
            x = None
            mean, rstd = yield _gn_request(ops, h, r.norm2, live)
            res, h = live
            h = h.new(ops.apply(h.t, mean, rstd, r.norm2.weight, r.norm2.bias, r.norm2.num_groups,
                                act=r.nonlinearity), h.y0, h.y1, h.x0, h.x1)
            h = h.new(r.dropout(h.t), h.y0, h.y1, h.x0, h.x1)
            h = _conv3_tile(h, r.conv2)
            res = res.crop(h.y0, h.y1, h.x0, h.x1)
            out = res.t + h.t
            if r.output_scale_factor != 1:
                out = out / r.output_scale_factor
            x = h.new(out, h.y0, h.y1, h.x0, h.x1)
            res = h = out = None
        for u in getattr(block, "upsamplers", None) or []:
            t = F.interpolate(x.t, scale_factor=2.0, mode="nearest")
            x = _conv3_tile(x.up2(t), _up_conv(u))
            t = None  # no device tensor may stay in this frame across a yield but those in `live`
    norm = dec.conv_norm_out
    live = [x]
    mean, rstd = yield _gn_request(ops, x, norm, live)
    x = live[0]
    stride, part = _tail(dec)
    if stride == 1:
        h = x.new(ops.apply(x.t, mean, rstd, norm.weight, norm.bias, norm.num_groups, act=dec.conv_act),
                  x.y0, x.y1, x.x0, x.x1)
        return _conv3_tile(h, dec.conv_out)
    pb = 2 if part else 1
    out = ops.upconv_tail(x.t, mean, rstd, norm.weight, norm.bias, dec.conv_out.weight, dec.conv_out.bias,
                          norm.num_groups, act=dec.conv_act, partitioned=part)
    return _crop_upconv(x, out, pb)


# ----------------------------------------------------------------------------------------------
# parking tile state between GroupNorms
# ----------------------------------------------------------------------------------------------

class _Parked:
    __slots__ = ("kind", "t", "nbytes", "dev", "event")

    def __init__(self, kind, t, nbytes):
        self.kind, self.t, self.nbytes, self.dev, self.event = kind, t, nbytes, None, None


class _ParkLedger:
    """Where a parked tensor goes, and the byte counts: it stays on the device while the parked device
    bytes fit ``device_bytes`` (None: unbounded), else it goes to host memory. The decoder's
    :class:`_Store` and the planner's :func:`simulate_parking` both place state through it."""

    def __init__(self, device_bytes: Optional[int]):
        self.limit = device_bytes
        self.on_device = self.on_host = 0
        self.offloaded = 0  # bytes moved to the host
        self.peak_parked = 0  # the most bytes parked at once (device + host)
        self.peak_host = 0  # the most of them in host memory at once

    def park(self, nb: int) -> bool:
        """Account nb parked bytes; True when they go to host memory."""
        self.peak_parked = max(self.peak_parked, self.on_device + self.on_host + nb)
        if self.limit is None or self.on_device + nb <= self.limit:
            self.on_device += nb
            return False
        self.on_host += nb
        self.offloaded += nb
        self.peak_host = max(self.peak_host, self.on_host)
        return True

    def release(self, nb: int, on_host: bool) -> None:
        if on_host:
            self.on_host -= nb
        else:
            self.on_device -= nb


class _Store:
    """Keeps parked tensors on the device while they fit ``device_bytes``, else in (pinned) host
    memory (:class:`_ParkLedger` decides). On CUDA the copies run on a side stream: a tile's state goes
    to the host while the next tile computes, and the next tile's state comes back (:meth:`prefetch`)
    while this one computes."""

    def __init__(self, device: torch.device, device_bytes: Optional[int]):
        self.device = device
        self.ledger = _ParkLedger(device_bytes)
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def park(self, t: torch.Tensor) -> _Parked:
        nb = t.numel() * t.element_size()
        if not self.ledger.park(nb):
            return _Parked("dev", t, nb)
        host = torch.empty(t.shape, dtype=t.dtype, device="cpu", pin_memory=self.stream is not None)
        if self.stream is not None:
            self.stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(self.stream):
                host.copy_(t, non_blocking=True)
            t.record_stream(self.stream)  # t's memory is not reused before the copy is done
        else:
            host.copy_(t)
        return _Parked("host", host, nb)

    def prefetch(self, h: _Parked) -> None:
        if h.kind != "host" or h.dev is not None:
            return
        if self.stream is None:
            h.dev = h.t.to(self.device)
            return
        with torch.cuda.stream(self.stream):
            h.dev = h.t.to(self.device, non_blocking=True)
            h.event = self.stream.record_event()

    def unpark(self, h: _Parked) -> torch.Tensor:
        self.ledger.release(h.nbytes, h.kind == "host")
        if h.kind == "dev":
            return h.t
        self.prefetch(h)
        t = h.dev
        if self.stream is not None:
            cur = torch.cuda.current_stream(self.device)
            cur.wait_event(h.event)
            t.record_stream(cur)
        h.t = h.dev = h.event = None
        return t


# ----------------------------------------------------------------------------------------------
# planning: tile size from the memory budget
# ----------------------------------------------------------------------------------------------

@dataclass
class TilePlan:
    tile: int                   # core size in latent pixels
    halo: int                   # latent pixels of context on each side
    tiles: List[Tuple[int, int, int, int]]  # latent cores (y0, y1, x0, x1)
    budget: Optional[int]       # bytes, None = unbounded
    est_fixed: int              # bytes: weights + whole-latent mid-block + output image (mid-block phase)
    est_tile: int               # bytes: working set of one tile
    state_budget: Optional[int]  # bytes of parked state allowed on the device
    est_state: int = 0          # bytes: the most tile state parked at once (device + host)
    est_host: int = 0           # bytes: the most of it in (pinned) host memory at once
    est_offload: int = 0        # bytes: moved to the host over the whole decode (and back)
    est_resident: int = 0       # bytes held through the tile phase: weights + mid-block output + image

    @property
    def n_tiles(self) -> int:
        return len(self.tiles)


def estimate_tile_bytes(dec, n: int, tile: int, halo: int, itemsize: int) -> int:
    """Peak working bytes of one tile: at each resolution, the widest activation over the tile's
    window there (s * tile + 2 * the context still needed, plus the extra halo given) times a factor
    that covers the input, the fp32 GroupNorm temporaries, the conv output and the residual."""
    need, stages = _stage_info(dec)
    extra = max(0, halo - need)
    peak = 0
    for s, c, m in stages:
        side = s * (tile + 2 * extra) + 2 * m
        peak = max(peak, n * c * side * side * (4 * itemsize + 8))
    return peak


def _state_sizes(dec, z_shape, tiles: Sequence[Tuple[int, int, int, int]], halo: int) -> List[List[List[int]]]:
    """Elements of each live tensor a tile parks at each GroupNorm (``[tile][step][tensor]``), from
    the same window bookkeeping as ``_tile_program`` (``_conv_range``, x2 upsampling), no tensors."""
    n, _, H, W = z_shape

    def conv(a, size):
        return _conv_range(a[0], a[1], size, 1)[:2]

    def area(a, b):
        return (a[1] - a[0]) * (b[1] - b[0])

    out = []
    for (y0, y1, x0, x1) in tiles:
        wy, wx, Hs, Ws = (max(0, y0 - halo), min(H, y1 + halo)), (max(0, x0 - halo), min(W, x1 + halo)), H, W
        steps = []
        for block in dec.up_blocks:
            for r in block.resnets:
                steps.append([n * r.conv1.in_channels * area(wy, wx)])  # norm1: the block input
                hy, hx = conv(wy, Hs), conv(wx, Ws)
                c_res = r.conv2.out_channels if r.conv_shortcut is not None else r.conv1.in_channels
                # norm2: the residual (cropped to conv1's window) and conv1's output, parked in that order
                steps.append([n * c_res * area(hy, hx), n * r.conv2.out_channels * area(hy, hx)])
                wy, wx = conv(hy, Hs), conv(hx, Ws)
            for _ in getattr(block, "upsamplers", None) or []:
                Hs, Ws = 2 * Hs, 2 * Ws
                wy, wx = conv((2 * wy[0], 2 * wy[1]), Hs), conv((2 * wx[0], 2 * wx[1]), Ws)
        steps.append([n * dec.conv_norm_out.num_channels * area(wy, wx)])  # conv_norm_out
        out.append(steps)
    return out


def simulate_parking(dec, z_shape, tiles: Sequence[Tuple[int, int, int, int]], halo: int, itemsize: int,
                     device_bytes: Optional[int]) -> Tuple[int, int, int]:
    """(peak parked, peak in host memory, bytes moved to the host) of a decode, exactly as the driver
    and ``_Store`` do it: at each GroupNorm the tiles resume in order (a tile takes its state back,
    runs, parks its new state tensor by tensor), each tensor placed by the same :class:`_ParkLedger`."""
    sizes = _state_sizes(dec, z_shape, tiles, halo)
    ledger = _ParkLedger(device_bytes)
    held: List[List[Tuple[int, bool]]] = [[] for _ in sizes]  # per tile: (bytes, on host) of its parked tensors
    steps = len(sizes[0]) if sizes else 0
    for k in range(steps):
        for i, tile_steps in enumerate(sizes):
            for nb, host in held[i]:
                ledger.release(nb, host)
            held[i] = [(el * itemsize, ledger.park(el * itemsize)) for el in tile_steps[k]]
    return ledger.peak_parked, ledger.peak_host, ledger.offloaded


def _host_available() -> Optional[int]:
    """MemAvailable of /proc/meminfo in bytes (None where that file does not exist)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _warn_if_host_short(plan: "TilePlan", z_shape) -> bool:
    """Warn (and return True) when the state the plan parks in pinned host memory, with room for
    the caching host allocator's rounding, exceeds the host memory available now."""
    if plan.est_host <= 0:
        return False
    avail = _host_available()
    if avail is None or 1.25 * plan.est_host <= avail:
        return False
    warnings.warn(
        f"exact tiled decode of a {tuple(z_shape)} latent: {plan.est_host / 2**30:.1f} GiB of tile state will "
        f"be parked in pinned host memory at the worst GroupNorm (max_memory={plan.budget / 2**30:.1f} GiB keeps "
        f"{plan.state_budget / 2**30:.1f} GiB of it on the GPU), but only {avail / 2**30:.1f} GiB of host memory "
        f"is available: the process may be killed for memory. Give a larger max_memory, or free host memory.",
        ResourceWarning, stacklevel=3)
    return True


def estimate_fixed_bytes(dec, z_shape, itemsize: int, out_itemsize: Optional[int] = None,
                         resident: bool = False) -> int:
    """Peak bytes of the whole-latent phase: the weights, the mid-block (9 x its activation, covering
    its temporaries and attention workspace; measured on an H200, Flux bf16 at a 512^2 latent: 8.24 x
    with `measure_memory`, so 9 x keeps an ~8% margin) and the output image. ``resident=True``: what stays
    allocated through the tile phase instead, where the mid-block's temporaries are gone: the weights,
    its output (the tiles' first windows are views of it) and the output image."""
    n, _, h, w = z_shape
    params = sum(p.numel() * p.element_size() for p in dec.parameters())
    c_mid = dec.conv_in.out_channels
    mid = (1 if resident else 9) * n * c_mid * h * w * itemsize
    s = _scale(dec)
    out = n * dec.conv_out.out_channels * h * w * s * s * (out_itemsize or itemsize)
    return params + mid + out


def _partition(n: int, t: int) -> List[Tuple[int, int]]:
    return [(i, min(i + t, n)) for i in range(0, n, t)]


def plan_tiles(dec, z_shape, dtype, *, tile: Optional[int] = None, max_memory=None,
               halo: Optional[int] = None, device: Optional[torch.device] = None) -> TilePlan:
    """Choose the tile size (latent pixels) from ``max_memory`` (default 8 GiB; on CUDA at most the
    free memory) unless ``tile`` is given, and list the tiles."""
    n, _, h, w = z_shape
    need = required_halo(dec)
    if halo is None:
        halo = need
    check_int(halo, "halo", lo=need)
    itemsize = torch.empty((), dtype=dtype).element_size()
    budget = parse_memory(max_memory)
    if budget is None:
        budget = DEFAULT_MAX_MEMORY
        if device is not None and device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            budget = min(budget, int(free * 0.9) + torch.cuda.memory_allocated(device))
    fixed = estimate_fixed_bytes(dec, z_shape, itemsize)
    if tile is None:
        avail = budget - fixed
        side = max(h, w)
        tile = min(MIN_AUTO_TILE, side)  # smaller tiles would mostly recompute halos
        for cand in range(tile + 8, side + 8, 8):
            # half of what is left for one tile's working set, the rest for parked state
            if estimate_tile_bytes(dec, n, min(cand, side), halo, itemsize) <= avail / 2:
                tile = min(cand, side)
            else:
                break
        per_side = -(-side // tile)
        tile = -(-side // per_side)  # same number of tiles, balanced sizes (no thin last strip)
        if estimate_tile_bytes(dec, n, tile, halo, itemsize) > avail:
            warnings.warn(f"max_memory={budget} bytes is probably too small for an exact tiled decode of a "
                          f"{tuple(z_shape)} latent (estimated fixed {fixed} + tile "
                          f"{estimate_tile_bytes(dec, n, tile, halo, itemsize)} bytes); using tile={tile}")
        tile = min(tile, max(h, w))
    check_int(tile, "tile", lo=1)
    est_tile = estimate_tile_bytes(dec, n, tile, halo, itemsize)
    # parked state lives in the tile phase, next to what stays resident and one tile's working set; the
    # mid-block's temporaries (in est_fixed) are freed before it starts, so they do not count against it
    resident = estimate_fixed_bytes(dec, z_shape, itemsize, resident=True)
    state_budget = max(0, budget - resident - est_tile)
    tiles = [(y0, y1, x0, x1) for (y0, y1) in _partition(h, tile) for (x0, x1) in _partition(w, tile)]
    est_state, est_host, est_offload = simulate_parking(dec, z_shape, tiles, halo, itemsize, state_budget)
    return TilePlan(tile, halo, tiles, budget, fixed, est_tile, state_budget, est_state, est_host, est_offload,
                    resident)


def conv_macs(dec, z_shape, tile: Optional[int] = None, halo: Optional[int] = None) -> int:
    """Multiply-adds of the up path's convs (torch tail) for a tiled decode with ``tile`` (None:
    untiled), from the same window bookkeeping as the decoder: ``conv_macs(d, s, t) / conv_macs(d, s)``
    - 1 is the halo-recompute overhead."""
    n, _, h, w = z_shape
    halo = required_halo(dec) if halo is None else halo
    t = max(h, w) if tile is None else tile
    stride, part = _tail(dec)
    total = 0

    def conv(win, cin, cout, pb=1):
        y0, y1, x0, x1, H, W = win
        ly, hy = _conv_range(y0, y1, H, pb)[:2]
        lx, hx = _conv_range(x0, x1, W, pb)[:2]
        return (ly, hy, lx, hx, H, W), (hy - ly) * (hx - lx) * cin * cout * 9

    for (y0, y1) in _partition(h, t):
        for (x0, x1) in _partition(w, t):
            win = (max(0, y0 - halo), min(h, y1 + halo), max(0, x0 - halo), min(w, x1 + halo), h, w)
            for blk in dec.up_blocks:
                for r in blk.resnets:
                    cin, cout = r.conv1.in_channels, r.conv1.out_channels
                    win, m = conv(win, cin, cout)
                    total += m
                    if r.conv_shortcut is not None:
                        total += m // 9  # the 1x1 shortcut on the same window
                    win, m = conv(win, cout, cout)
                    total += m
                for u in getattr(blk, "upsamplers", None) or []:
                    c = _up_conv(u).in_channels
                    win = tuple(2 * v for v in win)
                    win, m = conv(win, c, c)
                    total += m
            c0, co = dec.conv_out.in_channels, dec.conv_out.out_channels
            if stride == 1:
                total += conv(win, c0, co)[1]
            else:  # the torch tail convolves the tile's whole 2x grid
                total += 4 * (win[1] - win[0]) * (win[3] - win[2]) * c0 * co * 9
    return n * total


# ----------------------------------------------------------------------------------------------
# the driver
# ----------------------------------------------------------------------------------------------

def _progress_bar(progress: Optional[bool], total: int):
    if progress is False or (progress is None and total <= 1):
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        return None
    # progress=None: tqdm shows the bar only on a terminal
    return tqdm(total=total, desc="d4k exact tiled decode", disable=None if progress is None else False,
                leave=False, unit="tile-step")


def _n_groupnorms(dec) -> int:
    return 2 * sum(len(b.resnets) for b in dec.up_blocks) + 1


class ExactTiledDecoder:
    """Exact tiled decode with a diffusers AutoencoderKL-family decoder (``vae.decoder``).

    ``post_quant_conv`` (optional) is applied to the whole latent first, as AutoencoderKL._decode does.
    ``tile``: core size in latent pixels (default: from ``max_memory``); ``halo``: context in
    latent pixels (default and minimum: the receptive field); ``max_memory``: bytes or "8GiB";
    ``progress``: tqdm bar (None = only on a terminal and for more than one tile);
    ``use_kernels``: the d4k GroupNorm / upconv kernels (None = when importable and on CUDA);
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
        check_decoder(decoder)
        if tile is not None:
            check_int(tile, "tile", lo=1)
        if halo is not None:
            check_int(halo, "halo", lo=required_halo(decoder))
        parse_memory(max_memory)
        self.decoder = decoder
        self.post_quant_conv = post_quant_conv
        self.tile, self.max_memory, self.halo = tile, max_memory, halo
        self.progress, self.use_kernels, self.offload = progress, use_kernels, offload
        self.last_plan: Optional[TilePlan] = None
        self.last_offloaded_bytes = 0  # bytes moved to the host over the whole decode
        self.last_peak_parked_bytes = 0  # the most tile state parked at once (device + host)
        self.last_peak_host_bytes = 0  # the most of it in host memory at once
        self.measure_memory = bool(measure_memory)
        self.last_fixed_peak_bytes: Optional[int] = None  # measured (CUDA, measure_memory): see above
        self.last_step_peak_bytes: Optional[int] = None

    def plan(self, z: torch.Tensor) -> TilePlan:
        return plan_tiles(self.decoder, tuple(z.shape), z.dtype, tile=self.tile, max_memory=self.max_memory,
                          halo=self.halo, device=z.device)

    @torch.no_grad()
    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        check_tensor(z, "z", ndim=4)
        dec = self.decoder
        if z.shape[1] != dec.conv_in.in_channels:
            raise ValueError(f"z has {z.shape[1]} channels but the decoder expects {dec.conv_in.in_channels}")
        plan = self.plan(z)
        self.last_plan = plan
        ops = get_ops(z.device, self.use_kernels)
        measure = self.measure_memory and z.device.type == "cuda"
        self.last_fixed_peak_bytes = self.last_step_peak_bytes = None

        def mark() -> int:  # allocated bytes now; the peak from here on is measured
            torch.cuda.reset_peak_memory_stats(z.device)
            return torch.cuda.memory_allocated(z.device)

        def since(a0: int) -> int:
            return torch.cuda.max_memory_allocated(z.device) - a0

        if measure:
            a0 = mark()
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        x = dec.conv_in(z)
        x = dec.mid_block(x, None)
        x = x.to(next(iter(dec.up_blocks.parameters())).dtype)
        if measure:
            self.last_fixed_peak_bytes = since(a0)
            step_peak = 0
        n, _, H, W = x.shape
        halo, s = plan.halo, _scale(dec)
        gens = []
        for (y0, y1, x0, x1) in plan.tiles:
            wy0, wy1, wx0, wx1 = max(0, y0 - halo), min(H, y1 + halo), max(0, x0 - halo), min(W, x1 + halo)
            t = _Tile(x[..., wy0:wy1, wx0:wx1], wy0, wy1, wx0, wx1, H, W, (y0, y1, x0, x1))
            gens.append(_tile_program(dec, ops, t))
        del x, t  # the tiles hold views of the mid-block output until their first GroupNorm
        store = _Store(z.device, None if self.offload is False else plan.state_budget)
        if store.stream is not None and self.offload is not False:
            _warn_if_host_short(plan, tuple(z.shape))
        steps = _n_groupnorms(dec) + 1
        bar = _progress_bar(self.progress, steps * len(gens))
        out = None
        # waiting[i]: (the tile's live _Tiles, their parked handles) while it waits at a GroupNorm
        waiting: List[Optional[Tuple[List[_Tile], List[_Parked]]]] = [None] * len(gens)
        stats = None
        try:
            for step in range(steps):
                total, count, norm = None, 0, None
                for i, g in enumerate(gens):
                    if i + 1 < len(gens) and waiting[i + 1] is not None:
                        for hd in waiting[i + 1][1]:
                            store.prefetch(hd)  # the next tile's state comes back while this one runs
                    if measure:
                        a0 = mark()
                    try:
                        if waiting[i] is None:
                            req = next(g)
                        else:
                            live, handles = waiting[i]
                            waiting[i] = None
                            for tl, hd in zip(live, handles):
                                tl.t = store.unpark(hd)
                            req = g.send(stats)
                    except StopIteration as stop:
                        res: _Tile = stop.value
                        if measure:
                            step_peak = max(step_peak, since(a0))
                        if out is None:
                            out = torch.empty((n, res.t.shape[1], H * s, W * s), dtype=res.t.dtype,
                                              device=res.t.device)
                        cy0, cy1, cx0, cx1 = res.core_box
                        out[..., cy0:cy1, cx0:cx1] = res.core()
                        if bar is not None:
                            bar.update(1)
                        continue
                    if measure:
                        step_peak = max(step_peak, since(a0))
                    if norm is None:
                        total, norm = req.stats, req.norm
                    elif req.norm is not norm:
                        raise AssertionError("tiles went out of step")
                    else:
                        total = total + req.stats
                    count += req.count
                    # park the tile's state until every tile has reached this GroupNorm
                    handles = [store.park(tl.t) for tl in req.live]
                    for tl in req.live:
                        tl.t = None
                    waiting[i] = (req.live, handles)
                    req = None
                    if bar is not None:
                        bar.update(1)
                if norm is None:
                    break
                stats = ops.finalize(total, count, norm.eps)
        finally:
            if bar is not None:
                bar.close()
        if measure:
            self.last_step_peak_bytes = step_peak
        led = store.ledger
        self.last_offloaded_bytes, self.last_peak_parked_bytes, self.last_peak_host_bytes = (
            led.offloaded, led.peak_parked, led.peak_host)
        if out is None:  # pragma: no cover
            raise AssertionError("tiled decode produced no output")
        return out


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
