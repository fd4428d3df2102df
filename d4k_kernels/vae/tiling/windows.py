"""Tile windows: which rows and columns of the whole tensor a tile holds, and how a conv moves them.

A tile is a *core* (the part of the whole tensor it owns; the cores of all tiles partition it) plus a
halo of context, clipped to the image. Every conv shrinks the part of the window it can compute
exactly by its reach on each side that is not the image border (at the border the conv's zero
padding is the real one); nearest x2 doubles every coordinate. :func:`conv_range` is that rule in
1-D, exact for any tensor and window size; :class:`Tile` carries a tensor with its window and core
through a tile program (vae/tiling/program.py), and the planner (vae/tiling/planner.py) walks the
same windows without tensors. Nothing here knows a decoder: an encoder's tiles (stride-2 convs,
asymmetric padding) use the same rules.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["Box", "Tile", "conv_range", "conv_tile", "crop_upconv", "halo_window", "partition"]

Box = Tuple[int, int, int, int]  # (y0, y1, x0, x1): rows [y0, y1) and columns [x0, x1)


def partition(n: int, t: int) -> List[Tuple[int, int]]:
    """[0, n) cut into runs of ``t`` (the last one shorter when t does not divide n)."""
    return [(i, min(i + t, n)) for i in range(0, n, t)]


def halo_window(core: Box, halo: int, H: int, W: int) -> Box:
    """The window of a tile: its core plus ``halo`` on every side, clipped to the (H, W) tensor."""
    y0, y1, x0, x1 = core
    return max(0, y0 - halo), min(H, y1 + halo), max(0, x0 - halo), min(W, x1 + halo)


def conv_range(a: int, b: int, n: int, pb: int = 1, k: int = 3, stride: int = 1, pa: Optional[int] = None):
    """1-D bookkeeping of a ``k``-tap conv with ``stride`` on the rows [a, b) of a length-n signal whose
    full-tensor conv is out[i] = sum_j w[j] u[stride * i + j - pb], with u = 0 outside [0, n) and ``pa``
    zero rows after it (default k - 1 - pb: for stride 1 the output has length n); the output has
    length m = (n + pb + pa - k) // stride + 1.

    Returns (lo, hi, src_lo, src_hi, pad_before, pad_after): the output rows [lo, hi) this window
    computes exactly, the input rows [src_lo, src_hi) to read and the zero rows to add around them."""
    if pa is None:
        pa = k - 1 - pb
    m = (n + pb + pa - k) // stride + 1
    lo = 0 if a == 0 else -(-(a + pb) // stride)
    hi = m if b == n else (b + pb - k) // stride + 1
    if hi <= lo:
        raise RuntimeError(f"tile window [{a}, {b}) of {n} is too small for its conv (halo too small)")
    s0, s1 = stride * lo - pb, stride * (hi - 1) + k - pb
    src_lo, src_hi = max(s0, a), min(s1, b)
    return lo, hi, src_lo, src_hi, src_lo - s0, s1 - src_hi


class Tile:
    """A tile tensor (N, C, h, w) that holds rows [y0, y1) and columns [x0, x1) of the full (H, W) tensor
    at the current resolution; its core [cy0, cy1) x [cx0, cx1) is the part it owns. ``t`` is None while
    the tile's state is parked (vae/tiling/parking.py)."""

    __slots__ = ("t", "y0", "y1", "x0", "x1", "H", "W", "cy0", "cy1", "cx0", "cx1")

    def __init__(self, t: Optional[torch.Tensor], y0: int, y1: int, x0: int, x1: int, H: int, W: int, core: Box):
        self.t, self.y0, self.y1, self.x0, self.x1, self.H, self.W = t, y0, y1, x0, x1, H, W
        self.cy0, self.cy1, self.cx0, self.cx1 = core
        if t is not None and tuple(t.shape[-2:]) != (y1 - y0, x1 - x0):
            raise AssertionError(f"tile tensor {tuple(t.shape)} does not match window {(y0, y1, x0, x1)}")
        if not (y0 <= self.cy0 and self.cy1 <= y1 and x0 <= self.cx0 and self.cx1 <= x1):
            raise RuntimeError(f"halo too small: window {(y0, y1, x0, x1)} does not cover core "
                               f"{(self.cy0, self.cy1, self.cx0, self.cx1)} (increase halo)")

    @classmethod
    def of(cls, whole: torch.Tensor, core: Box, halo: int) -> "Tile":
        """The tile of ``whole`` (N, C, H, W) with this core and halo: a view, no copy."""
        H, W = whole.shape[-2:]
        y0, y1, x0, x1 = halo_window(core, halo, H, W)
        return cls(whole[..., y0:y1, x0:x1], y0, y1, x0, x1, H, W, core)

    @property
    def core_box(self) -> Box:
        return (self.cy0, self.cy1, self.cx0, self.cx1)

    def core(self) -> torch.Tensor:
        return self.t[..., self.cy0 - self.y0:self.cy1 - self.y0, self.cx0 - self.x0:self.cx1 - self.x0]

    def new(self, t, y0, y1, x0, x1) -> "Tile":
        """Another tensor at the same resolution with the same core, over the window [y0, y1) x [x0, x1)."""
        return Tile(t, y0, y1, x0, x1, self.H, self.W, self.core_box)

    def same(self, t) -> "Tile":
        """Another tensor over this tile's window (an elementwise op's output)."""
        return self.new(t, self.y0, self.y1, self.x0, self.x1)

    def crop(self, y0, y1, x0, x1) -> "Tile":
        t = self.t[..., y0 - self.y0:y1 - self.y0, x0 - self.x0:x1 - self.x0]
        return self.new(t, y0, y1, x0, x1)

    def up2(self, t) -> "Tile":
        """``t`` is this tile upsampled x2 (nearest): every coordinate doubles."""
        return Tile(t, 2 * self.y0, 2 * self.y1, 2 * self.x0, 2 * self.x1, 2 * self.H, 2 * self.W,
                    tuple(2 * v for v in self.core_box))


def _scaled_core(v: int, n: int, m: int, stride: int) -> int:
    """A core edge at input row v of n, at the output (m rows) of a conv with ``stride``."""
    if stride == 1 or v == n:
        return m if v == n else v
    if v % stride:
        raise RuntimeError(f"tile core edge {v} is not a multiple of the conv stride {stride}")
    return v // stride


def conv_tile(x: Tile, conv: nn.Conv2d, pad: Optional[Tuple[int, int]] = None) -> Tile:
    """``conv`` on a tile, exactly as on the whole tensor with zero padding ``pad`` = (before, after)
    on both axes (default: the conv's own padding): the output holds the rows / columns whose inputs
    all lie inside the tile or truly outside the image."""
    k, s = conv.kernel_size[0], conv.stride[0]
    pb, pa = pad if pad is not None else (conv.padding[0], conv.padding[0])
    ly, hy, sy0, sy1, py0, py1 = conv_range(x.y0, x.y1, x.H, pb, k, s, pa)
    lx, hx, sx0, sx1, px0, px1 = conv_range(x.x0, x.x1, x.W, pb, k, s, pa)
    t = x.t[..., sy0 - x.y0:sy1 - x.y0, sx0 - x.x0:sx1 - x.x0]
    if (k, s, pb, pa) == (3, 1, 1, 1) and conv.padding == (1, 1):
        # the conv's own zero padding (no padded copy of the tile); the rows / columns it invents on a
        # side that is not the image border are cropped away
        out = F.conv2d(t, conv.weight, conv.bias, padding=1)
        out = out[..., 1 - py0:out.shape[-2] - 1 + py1, 1 - px0:out.shape[-1] - 1 + px1]
    else:
        if py0 or py1 or px0 or px1:
            t = F.pad(t, (px0, px1, py0, py1))
        out = F.conv2d(t, conv.weight, conv.bias, stride=s, padding=0)
    if s == 1:
        return x.new(out, ly, hy, lx, hx)
    H, W = (x.H + pb + pa - k) // s + 1, (x.W + pb + pa - k) // s + 1
    core = (_scaled_core(x.cy0, x.H, H, s), _scaled_core(x.cy1, x.H, H, s),
            _scaled_core(x.cx0, x.W, W, s), _scaled_core(x.cx1, x.W, W, s))
    return Tile(out, ly, hy, lx, hx, H, W, core)


def crop_upconv(x: Tile, out: torch.Tensor, pb: int) -> Tile:
    """``out`` is nearest x2 + a 3x3 conv with top / left padding ``pb`` computed over the 2x grid of the
    whole tile with the full-tensor zero padding; keep the rows / columns whose inputs were all inside
    the tile (or truly outside the image)."""
    ly, hy = conv_range(2 * x.y0, 2 * x.y1, 2 * x.H, pb)[:2]
    lx, hx = conv_range(2 * x.x0, 2 * x.x1, 2 * x.W, pb)[:2]
    oy, ox = 2 * x.y0, 2 * x.x0
    return Tile(out[..., ly - oy:hy - oy, lx - ox:hx - ox], ly, hy, lx, hx, 2 * x.H, 2 * x.W,
                tuple(2 * v for v in x.core_box))
