"""The 2-D Haar transform in plain torch: sizes per level, one level forward and back, the padding of
odd sizes and its adjoint, and the multi-level loops of the CPU path.

This is the one torch statement of the Haar math, shared by every path that is not a Triton kernel:
the CPU implementation of ops/haar.py (each level in torch, or in the compiled C++ of csrc/haar.cpp
when it loads), its composite route (forward-mode AD, torch.func) and the CPU path of the wavelet
loss (ops/_wlf_torch.py). The Triton kernels state the same butterfly in ops/_haar_triton.py.
Definitions and layouts: docs/ops.md, Haar DWT / IDWT.

The butterfly of a 2x2 block [[a, b], [c, d]] is
``LL = (a+b+c+d)/2, LH = (a+b-c-d)/2, HL = (a-b+c-d)/2, HH = (a-b-c+d)/2``: one 1-D step
(:func:`pair_sums`) on the two rows, then one on the columns of each result, then the scale 1/2.
Its matrix is symmetric and orthogonal, so the inverse is the same butterfly.

Each level function comes in two forms that compute the same values: ``functional=False`` writes
the results into fresh buffers with ``out=`` (no stack copies; no autograd), ``functional=True``
builds them with differentiable ops (autograd, forward AD, torch.func).
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch

from .._util import acc_dtype

__all__ = ["MODES", "MODE_ID", "FOLD_OF_MODE", "MODE_OF_FOLD", "chain", "max_levels", "pad_odd", "fold",
           "pair_sums", "dwt_level", "idwt_level", "dwt", "idwt"]

MODES = ("zero", "symmetric", "reflect", "periodization")
MODE_ID = {"zero": 0, "symmetric": 1, "periodization": 1, "reflect": 2}   # the kernels' padding codes
FOLD_OF_MODE = {"zero": "crop", "symmetric": "edge", "periodization": "edge", "reflect": "reflect"}
MODE_OF_FOLD = {"crop": "zero", "edge": "symmetric", "reflect": "reflect"}


# ----------------------------------------------------------------------------------------------
# sizes
# ----------------------------------------------------------------------------------------------
def chain(n: int, levels: int) -> List[int]:
    """Sizes of one axis at levels 0..J: n_0 = n, n_k = ceil(n_{k-1} / 2)."""
    out = [n]
    for _ in range(levels):
        out.append((out[-1] + 1) // 2)
    return out


def max_levels(h: int, w: int) -> int:
    """Most levels an (h, w) input allows: every level's input must be at least 2 x 2."""
    n, j = min(h, w), 0
    while n >= 2:
        n = (n + 1) // 2
        j += 1
    return j


# ----------------------------------------------------------------------------------------------
# odd sizes: the one-sample padding and its adjoint
# ----------------------------------------------------------------------------------------------
def pad_odd(x: torch.Tensor, mode: str) -> torch.Tensor:
    """Pad an odd last or second-to-last axis by one sample at its end: 0 (zero), the last sample
    (symmetric, periodization) or sample n - 2 (reflect)."""
    for dim in (-2, -1):
        n = x.shape[dim]
        if n % 2:
            if mode == "zero":
                extra = torch.zeros_like(x.narrow(dim, 0, 1))
            else:
                extra = x.narrow(dim, n - 1 if MODE_ID[mode] == 1 else n - 2, 1)
            x = torch.cat([x, extra], dim=dim)
    return x


def fold(g: torch.Tensor, n_h: int, n_w: int, how: str) -> torch.Tensor:
    """Adjoint of :func:`pad_odd`: (..., 2h, 2w) -> (..., n_h, n_w). ``how`` is "crop" (zero mode:
    the padded sample is dropped), "edge" (its gradient goes to sample n - 1) or "reflect" (to
    n - 2). ``g`` is a fresh internal buffer and may be modified in place."""
    for dim, n in ((-2, n_h), (-1, n_w)):
        if g.shape[dim] > n:
            if how != "crop":
                tgt = n - 1 if how == "edge" else n - 2
                g.select(dim, tgt).add_(g.select(dim, n))
            g = g.narrow(dim, 0, n)
    return g


# ----------------------------------------------------------------------------------------------
# one level
# ----------------------------------------------------------------------------------------------
def pair_sums(x: torch.Tensor, y: torch.Tensor, out: Optional[Tuple[torch.Tensor, torch.Tensor]] = None):
    """One 1-D Haar step before its scale: ``(x + y, x - y)``, written into ``out`` when given."""
    if out is None:
        return x + y, x - y
    return torch.add(x, y, out=out[0]), torch.sub(x, y, out=out[1])


def dwt_level(x: torch.Tensor, mode: str = "zero", functional: bool = False,
              out_dtype: Optional[torch.dtype] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """One level: x (..., n_h, n_w) -> (LL (..., h, w) in x's dtype, details (..., 3, h, w) = LH, HL,
    HH in ``out_dtype`` (default x's)), h = ceil(n_h / 2), w = ceil(n_w / 2); an odd axis is padded
    first (:func:`pad_odd`). The details are computed in x's dtype and rounded once."""
    out_dtype = out_dtype or x.dtype
    x = pad_odd(x, mode)
    lead, h, w = x.shape[:-2], x.shape[-2] // 2, x.shape[-1] // 2
    x6 = x.unflatten(-1, (w, 2)).unflatten(-3, (h, 2))       # (..., h, 2, w, 2)
    s, d = pair_sums(x6.select(-3, 0), x6.select(-3, 1))     # rows: both columns of each pair in one op
    (s0, s1), (d0, d1) = s.unbind(-1), d.unbind(-1)          # then the columns
    if functional:
        ll, hl = pair_sums(s0, s1)
        lh, hh = pair_sums(d0, d1)
        return ll * 0.5, (torch.stack((lh, hl, hh), dim=-3) * 0.5).to(out_dtype)
    yh = torch.empty(lead + (3, h, w), dtype=out_dtype, device=x.device)
    o_lh, o_hl, o_hh = yh.unbind(-3)
    if out_dtype != x.dtype:   # each band in x's dtype, rounded into the output as soon as it exists
        o_lh.copy_((d0 + d1).mul_(0.5))
        o_hl.copy_((s0 - s1).mul_(0.5))
        o_hh.copy_((d0 - d1).mul_(0.5))
        return (s0 + s1).mul_(0.5), yh
    ll = torch.empty(lead + (h, w), dtype=x.dtype, device=x.device)
    pair_sums(s0, s1, out=(ll, o_hl))                        # straight into the output buffers
    pair_sums(d0, d1, out=(o_lh, o_hh))
    return ll.mul_(0.5), yh.mul_(0.5)


def idwt_level(ll: torch.Tensor, yh: torch.Tensor, functional: bool = False) -> torch.Tensor:
    """The inverse of an even-size level: LL (..., h, w) and details (..., 3, h, w) -> (..., 2h, 2w)."""
    lh, hl, hh = yh.unbind(-3)
    p, r = pair_sums(ll, lh)                                 # a + b, c + d
    q, t = pair_sums(hl, hh)                                 # a - b, c - d
    lead, h, w = ll.shape[:-2], ll.shape[-2], ll.shape[-1]
    if functional:
        top = torch.stack(pair_sums(p, q), dim=-1)
        bot = torch.stack(pair_sums(r, t), dim=-1)
        out = torch.stack((top, bot), dim=-3) * 0.5          # (..., h, 2, w, 2)
    else:
        out = torch.empty(lead + (h, 2, w, 2), dtype=ll.dtype, device=ll.device)
        top, bot = out.unbind(-3)
        pair_sums(p, q, out=top.unbind(-1))                  # the four polyphase components,
        pair_sums(r, t, out=bot.unbind(-1))                  # written in place
        out.mul_(0.5)
    return out.reshape(lead + (2 * h, 2 * w))


# ----------------------------------------------------------------------------------------------
# all levels (the CPU path of ops/haar.py; also the composite route and the wavelet loss's CPU path)
# ----------------------------------------------------------------------------------------------
def dwt(x: torch.Tensor, levels: int, mode: str, ext=None, functional: bool = False) -> List[torch.Tensor]:
    """[yl, yh_1 (finest), ..., yh_J] in x's dtype, computed in its accumulation dtype. ``ext``: the
    compiled levels (csrc/haar.cpp) to run instead of the torch level; every level's input must be
    at least 2 x 2 (the callers check)."""
    cur = x.to(acc_dtype(x.dtype))
    yh = []
    for _ in range(levels):
        if ext is not None:
            cur, d = ext.dwt_level(cur.contiguous(), MODE_ID[mode])
            d = d.to(x.dtype)
        else:
            cur, d = dwt_level(cur, mode, functional, x.dtype)
        yh.append(d)
    return [cur.to(x.dtype)] + yh


def idwt(yl: torch.Tensor, yh: Sequence[torch.Tensor], out_h: int, out_w: int, how: str, ext=None,
         functional: bool = False) -> torch.Tensor:
    """Inverse (``how="crop"``) or the adjoint of the symmetric / periodization ("edge") or reflect
    DWT (:func:`fold`) of coefficients whose finest level came from an (out_h, out_w) input; in
    yl's dtype, contiguous."""
    acc = acc_dtype(yl.dtype)
    cur = yl.to(acc)
    for k in reversed(range(len(yh))):
        if ext is not None:
            cur = ext.idwt_level(cur.contiguous(), yh[k].to(acc).contiguous())
        else:
            cur = idwt_level(cur, yh[k].to(acc), functional)
        n_h, n_w = (out_h, out_w) if k == 0 else yh[k - 1].shape[-2:]
        cur = fold(cur, n_h, n_w, how)
    return cur.to(yl.dtype).contiguous()   # custom-op outputs are contiguous (as the fake says)
