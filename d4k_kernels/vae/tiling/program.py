"""The per-tile program of the exact tiled decoder: a generator that stops at every GroupNorm.

``decoder_program(dec, ops, tile)`` runs the decoder's up path and tail on one tile. At each GroupNorm
it yields a :class:`NormRequest` (its partial sums over its CORE and its live state) and waits for the
(mean, rstd) of the WHOLE tensor, which the driver (vae/tiling/driver.py) sends back once every tile
has reached that GroupNorm; it returns the output tile. While it waits, the driver may park the live
tensors (vae/tiling/parking.py): no other device tensor may stay in the generator's frame across a
yield. The program is the pluggable part of the tiler: an encoder's program follows the same protocol.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Generator, List, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .structure import up_conv, upsamplers
from .windows import Tile, conv_tile, crop_upconv

__all__ = ["NormRequest", "norm_request", "decoder_program"]

Stats = Tuple[torch.Tensor, torch.Tensor]  # (mean, rstd), each (N, G) float32


@dataclass
class NormRequest:
    """What a tile hands to the driver at a GroupNorm."""

    stats: torch.Tensor      # (N, G, 2) float64 partial sums over the tile's core
    count: int               # elements per group in the core
    norm: nn.GroupNorm
    live: List[Tile]         # the tile's state while it waits (the driver may park it)


def norm_request(ops, x: Tile, norm: nn.GroupNorm, live: List[Tile]) -> NormRequest:
    core = x.core()
    G = norm.num_groups
    return NormRequest(ops.stats(core, G), (core.shape[1] // G) * core.shape[-2] * core.shape[-1], norm, live)


def _norm_act(ops, x: Tile, norm: nn.GroupNorm, act, stats: Stats) -> Tile:
    mean, rstd = stats
    return x.same(ops.apply(x.t, mean, rstd, norm.weight, norm.bias, norm.num_groups, act=act))


def decoder_program(dec: nn.Module, ops, x: Tile) -> Generator[NormRequest, Stats, Tile]:
    """The up path + tail of ``dec`` on the tile ``x`` (a window of the mid-block output)."""
    for block in dec.up_blocks:
        for r in block.resnets:
            live = [x]
            stats = yield norm_request(ops, x, r.norm1, live)
            x = live[0]
            h = conv_tile(_norm_act(ops, x, r.norm1, r.nonlinearity, stats), r.conv1)
            # the residual branch, cropped to what conv2 can still produce
            res = x.crop(h.y0, h.y1, h.x0, h.x1)
            if r.conv_shortcut is not None:
                res = res.same(r.conv_shortcut(res.t))
            live = [res, h]
            x = None
            stats = yield norm_request(ops, h, r.norm2, live)
            res, h = live
            h = _norm_act(ops, h, r.norm2, r.nonlinearity, stats)
            h = conv_tile(h.same(r.dropout(h.t)), r.conv2)
            res = res.crop(h.y0, h.y1, h.x0, h.x1)
            out = res.t + h.t
            if r.output_scale_factor != 1:
                out = out / r.output_scale_factor
            x = h.same(out)
            res = h = out = None
        for u in upsamplers(block):
            t = F.interpolate(x.t, scale_factor=2.0, mode="nearest")
            x = conv_tile(x.up2(t), up_conv(u))
            t = None
    norm = dec.conv_norm_out
    live = [x]
    stats = yield norm_request(ops, x, norm, live)
    x = live[0]
    if getattr(dec, "stride", 1) == 1:
        return conv_tile(_norm_act(ops, x, norm, dec.conv_act, stats), dec.conv_out)
    part = bool(getattr(dec, "partitioned", True))
    mean, rstd = stats
    out = ops.upconv_tail(x.t, mean, rstd, norm.weight, norm.bias, dec.conv_out.weight, dec.conv_out.bias,
                          norm.num_groups, act=dec.conv_act, partitioned=part)
    return crop_upconv(x, out, 2 if part else 1)
