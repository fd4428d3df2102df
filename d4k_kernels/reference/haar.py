"""Plain float64 torch reference for the multi-level 2-D Haar DWT / IDWT.

Written for clarity, not speed, and independently of d4k_kernels/ops/haar.py: it pads each odd
axis explicitly, takes the four polyphase components with strided slicing and applies the 2x2
formulas below (docs/ops.md, Haar DWT / IDWT), one level at a time, in float64.

    LL = (a + b + c + d) / 2      LH = (a + b - c - d) / 2
    HL = (a - b + c - d) / 2      HH = (a - b - c + d) / 2

for a block [[a, b], [c, d]]. Padding of an odd axis (one sample at the end):
zero -> 0, symmetric and periodization -> the last sample, reflect -> the sample before the last.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch

MODES = ("zero", "symmetric", "reflect", "periodization")


def _pad_axis(x: torch.Tensor, dim: int, mode: str) -> torch.Tensor:
    n = x.shape[dim]
    if n % 2 == 0:
        return x
    if mode == "zero":
        extra = torch.zeros_like(x.narrow(dim, n - 1, 1))
    elif mode in ("symmetric", "periodization"):
        extra = x.narrow(dim, n - 1, 1)
    elif mode == "reflect":
        extra = x.narrow(dim, n - 2, 1)
    else:
        raise ValueError(f"unknown mode {mode!r}")
    return torch.cat([x, extra], dim=dim)


def dwt2_level_ref(x: torch.Tensor, mode: str = "zero") -> Tuple[torch.Tensor, torch.Tensor]:
    """One level: x (..., H, W) -> (LL (..., h, w), details (..., 3, h, w) as LH, HL, HH), float64."""
    x = x.to(torch.float64)
    x = _pad_axis(_pad_axis(x, -2, mode), -1, mode)
    a = x[..., 0::2, 0::2]
    b = x[..., 0::2, 1::2]
    c = x[..., 1::2, 0::2]
    d = x[..., 1::2, 1::2]
    ll = (a + b + c + d) / 2
    lh = (a + b - c - d) / 2
    hl = (a - b + c - d) / 2
    hh = (a - b - c + d) / 2
    return ll, torch.stack([lh, hl, hh], dim=-3)


def dwt2_ref(x: torch.Tensor, levels: int = 1, mode: str = "zero") -> Tuple[torch.Tensor, List[torch.Tensor]]:
    """J levels in pytorch_wavelets layout: (yl, [yh finest first]), float64."""
    yh = []
    ll = x
    for _ in range(levels):
        ll, d = dwt2_level_ref(ll, mode)
        yh.append(d)
    return ll, yh


def idwt2_level_ref(ll: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """Inverse of one level (no cropping): (..., h, w), (..., 3, h, w) -> (..., 2h, 2w), float64."""
    ll = ll.to(torch.float64)
    d = d.to(torch.float64)
    lh, hl, hh = d[..., 0, :, :], d[..., 1, :, :], d[..., 2, :, :]
    h, w = ll.shape[-2:]
    out = ll.new_zeros(ll.shape[:-2] + (2 * h, 2 * w))
    out[..., 0::2, 0::2] = (ll + lh + hl + hh) / 2
    out[..., 0::2, 1::2] = (ll + lh - hl - hh) / 2
    out[..., 1::2, 0::2] = (ll - lh + hl - hh) / 2
    out[..., 1::2, 1::2] = (ll - lh - hl + hh) / 2
    return out


def idwt2_ref(yl: torch.Tensor, yh: Sequence[torch.Tensor], output_size=None) -> torch.Tensor:
    """Inverse in pytorch_wavelets' way: each level crops the low-pass to the next detail size;
    the result is even-sized unless ``output_size`` (H, W) asks for a crop."""
    ll = yl.to(torch.float64)
    for d in reversed(list(yh)):
        ll = ll[..., : d.shape[-2], : d.shape[-1]]
        ll = idwt2_level_ref(ll, d)
    if output_size is not None:
        ll = ll[..., : output_size[0], : output_size[1]]
    return ll
