"""Multi-level 2-D Haar DWT / IDWT (SPEC.md section 1).

Public API
----------
``dwt2(x, levels=1, mode="zero") -> (yl, yh)``
    pytorch_wavelets layout: ``yl`` (..., H_J, W_J); ``yh`` a list, finest level first, each
    (..., 3, h, w) ordered LH, HL, HH. ``x`` has at least 2 dims (any leading dims).
``idwt2((yl, yh), mode="zero", output_size=None)``
    the inverse. Without ``output_size`` the result is even-sized (2 h_1, 2 w_1), like
    pytorch_wavelets' DWTInverse; ``output_size=(H, W)`` crops it to the size the forward saw.
``DWTForward`` / ``DWTInverse``: drop-in nn.Modules for pytorch_wavelets' classes (Haar only).
``to_pywt`` / ``from_pywt``: convert to and from pywt ``wavedec2`` lists.

Sizes and levels
----------------
Each level maps an axis of size n to ceil(n / 2) (pywt's output size in every mode, periodization
included). An odd axis is padded by one sample at its end: zero -> 0, symmetric and periodization
-> the last sample, reflect -> x[n - 2]. A level needs an input of at least 2 x 2, so ``levels``
runs from 1 to ``max_levels(H, W) = ceil(log2(min(H, W)))``. pywt computes the same values for
those levels (it warns beyond its ``dwt_max_level = floor(log2 n)``, but its results match ours).

Backends (d4k_kernels.backend.choose)
-------------------------------------
* "triton": one kernel launch computes a *group* of up to ``_FUSE_MAX`` (5) levels: a program
  takes a tile of 32 x 128 input pixels (at least 2^L x 2^L) of one plane, keeps every level in registers and
  writes each level's three detail bands plus the group's LL. The first level of a group may
  have an odd input (its padding is done by the load's index remap); the inputs of the other
  levels of the group must be even. Where a level's input is odd the plan starts a new group
  there, so even sizes divisible by 2^J (e.g. 512 with J <= 5) run in ONE launch, and odd sizes
  take one launch per odd level. ``_plan`` returns the groups. The inverse mirrors this.
  The input is read through its strides (no copy; leading dims are flattened with ``reshape``,
  which copies only if they cannot be merged). Coefficients given to the inverse are read
  contiguous (``.contiguous()``, a no-op for dwt2's outputs); the low-pass goes by strides.
  Offsets are int64, so tensors over 2^31 elements index correctly.
  fp32 / bf16 / fp16 accumulate in fp32; fp64 runs in fp64 (the kernels then match gradcheck).
* "cpu": vectorised torch on 2x2 blocks (``unflatten`` to (..., h, 2, w, 2)); runs on any device.

Autograd
--------
Both functions are torch.library custom ops (``d4k::haar_dwt2``, ``d4k::haar_idwt2``), so
``torch.compile(fullgraph=True)`` sees single ops. The backward of the DWT is its exact adjoint:
the inverse transform, with each padded row/column's gradient folded back onto the row/column it
copied (last one for symmetric / periodization, n - 2 for reflect, dropped for zero). The backward
of the IDWT (inverse + crops) is the zero-mode DWT. ``d4k::haar_idwt2`` takes a ``fold`` argument
("crop", "edge", "reflect") that selects which of these adjoints it computes.
"""
from __future__ import annotations

import functools
from typing import List, Optional, Sequence, Tuple

import torch

from .. import backend, settings
from .._checks import check_choice, check_int, check_tensor
from .._util import acc_dtype as _acc_dtype

__all__ = ["dwt2", "idwt2", "DWTForward", "DWTInverse", "to_pywt", "from_pywt", "max_levels", "MODES"]

MODES = ("zero", "symmetric", "reflect", "periodization")
_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
_FOLD_OF_MODE = {"zero": "crop", "symmetric": "edge", "periodization": "edge", "reflect": "reflect"}
_MODE_OF_FOLD = {"crop": "zero", "edge": "symmetric", "reflect": "reflect"}
_MODE_ID = {"zero": 0, "symmetric": 1, "periodization": 1, "reflect": 2}
_FOLDS = tuple(_MODE_OF_FOLD)
_FUSE_MAX = 5            # most levels one launch carries in registers



# ----------------------------------------------------------------------------------------------
# sizes and launch plan
# ----------------------------------------------------------------------------------------------
def _chain(n: int, levels: int) -> List[int]:
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


def _plan(hs: Sequence[int], ws: Sequence[int], lmax: int = _FUSE_MAX) -> List[Tuple[int, int]]:
    """Launch groups (start level s, number of levels L) for size chains hs, ws (n_0..n_J).

    A group's first level may have an odd input; the inputs of its later levels must be even."""
    j = len(hs) - 1
    groups, s = [], 0
    while s < j:
        n = 1
        while s + n < j and n < lmax and hs[s + n] % 2 == 0 and ws[s + n] % 2 == 0:
            n += 1
        groups.append((s, n))
        s += n
    return groups


def _fold(g: torch.Tensor, n_h: int, n_w: int, fold: str) -> torch.Tensor:
    """Adjoint of the one-sample padding: (..., 2h, 2w) -> (..., n_h, n_w). ``g`` is a fresh
    internal buffer and may be modified in place."""
    for dim, n in ((-2, n_h), (-1, n_w)):
        if g.shape[dim] > n:
            if fold != "crop":
                tgt = n - 1 if fold == "edge" else n - 2
                g.select(dim, tgt).add_(g.select(dim, n))
            g = g.narrow(dim, 0, n)
    return g


# ----------------------------------------------------------------------------------------------
# CPU path: vectorised torch (works on any device)
# ----------------------------------------------------------------------------------------------
def _pad_odd(x: torch.Tensor, mode: str) -> torch.Tensor:
    for dim in (-2, -1):
        n = x.shape[dim]
        if n % 2:
            if mode == "zero":
                extra = torch.zeros_like(x.narrow(dim, 0, 1))
            else:
                extra = x.narrow(dim, n - 1 if _MODE_ID[mode] == 1 else n - 2, 1)
            x = torch.cat([x, extra], dim=dim)
    return x


def _fwd_level_cpu(x: torch.Tensor, mode: str, out_dtype: torch.dtype):
    x = _pad_odd(x, mode)
    h, w = x.shape[-2] // 2, x.shape[-1] // 2
    x6 = x.unflatten(-1, (w, 2)).unflatten(-3, (h, 2))      # (..., h, 2, w, 2)
    top, bot = x6.select(-3, 0), x6.select(-3, 1)           # (..., h, w, 2)
    s = top + bot
    d = top - bot
    s0, s1 = s.select(-1, 0), s.select(-1, 1)
    d0, d1 = d.select(-1, 0), d.select(-1, 1)
    ll = (s0 + s1).mul_(0.5)
    yh = torch.empty(x.shape[:-2] + (3, h, w), dtype=out_dtype, device=x.device)
    if out_dtype == x.dtype:
        torch.add(d0, d1, out=yh.select(-3, 0))
        torch.sub(s0, s1, out=yh.select(-3, 1))
        torch.sub(d0, d1, out=yh.select(-3, 2))
        yh.mul_(0.5)
    else:
        yh.select(-3, 0).copy_((d0 + d1).mul_(0.5))
        yh.select(-3, 1).copy_((s0 - s1).mul_(0.5))
        yh.select(-3, 2).copy_((d0 - d1).mul_(0.5))
    return ll, yh


def _dwt_cpu(x: torch.Tensor, levels: int, mode: str, ext=None):
    """The CPU path: the compiled levels (csrc/haar.cpp) when ``ext`` is given, else vectorised torch."""
    acc = _acc_dtype(x.dtype)
    cur = x.to(acc)
    yh = []
    for _ in range(levels):
        if ext is not None:   # every level's input is >= 2x2 (dwt2 checks), as the C++ code needs
            cur, d = ext.dwt_level(cur.contiguous(), _MODE_ID[mode])
            d = d.to(x.dtype)
        else:
            cur, d = _fwd_level_cpu(cur, mode, x.dtype)
        yh.append(d)
    return cur.to(x.dtype), yh


def _inv_level_cpu(ll: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    lh, hl, hh = d.select(-3, 0), d.select(-3, 1), d.select(-3, 2)
    h, w = ll.shape[-2], ll.shape[-1]
    p, q = ll + lh, hl + hh
    r, t = ll - lh, hl - hh
    out = torch.empty(ll.shape[:-2] + (h, 2, w, 2), dtype=ll.dtype, device=ll.device)
    torch.add(p, q, out=out[..., :, 0, :, 0])                # the four polyphase components,
    torch.sub(p, q, out=out[..., :, 0, :, 1])                # written in place (no stack copies)
    torch.add(r, t, out=out[..., :, 1, :, 0])
    torch.sub(r, t, out=out[..., :, 1, :, 1])
    return out.mul_(0.5).view(ll.shape[:-2] + (2 * h, 2 * w))


def _idwt_cpu(yl: torch.Tensor, yh: Sequence[torch.Tensor], out_h: int, out_w: int, fold: str, ext=None):
    acc = _acc_dtype(yl.dtype)
    cur = yl.to(acc)
    for k in reversed(range(len(yh))):
        if ext is not None:
            cur = ext.idwt_level(cur.contiguous(), yh[k].to(acc).contiguous())
        else:
            cur = _inv_level_cpu(cur, yh[k].to(acc))
        n_h, n_w = (out_h, out_w) if k == 0 else yh[k - 1].shape[-2:]
        cur = _fold(cur, n_h, n_w, fold)
    return cur.to(yl.dtype).contiguous()   # custom-op outputs are contiguous (as the fake says)


# ----------------------------------------------------------------------------------------------
# Triton path
# ----------------------------------------------------------------------------------------------
if backend.HAS_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _offset3(plane, rows, cols, s_plane, s_row, s_col):
        """int64 element offsets of (plane, rows, cols): no int32 product can overflow."""
        return plane.to(tl.int64) * s_plane + rows.to(tl.int64) * s_row + cols.to(tl.int64) * s_col

    @triton.jit
    def _store_bands(ptr, plane, tr, tc, hk, wk, lh, hl, hh):
        """Store one level's three (R, C) detail tiles (tile (tr, tc)) into a contiguous
        (P, 3, hk, wk) tensor."""
        rows = tr * lh.shape[0] + tl.arange(0, lh.shape[0])
        cols = tc * lh.shape[1] + tl.arange(0, lh.shape[1])
        m = (rows < hk)[:, None] & (cols < wk)[None, :]
        p64 = plane.to(tl.int64)
        step = (p64 * 0 + hk) * wk                     # int64 band size
        off = p64 * 3 * step + rows.to(tl.int64)[:, None] * wk + cols.to(tl.int64)[None, :]
        ty = ptr.dtype.element_ty
        tl.store(ptr + off, lh.to(ty), mask=m)
        tl.store(ptr + off + step, hl.to(ty), mask=m)
        tl.store(ptr + off + 2 * step, hh.to(ty), mask=m)

    @triton.jit
    def _load_bands(ptr, plane, tr, tc, hk, wk, like):
        """Load one level's three detail tiles, shaped like ``like`` (R, C), in like's dtype."""
        rows = tr * like.shape[0] + tl.arange(0, like.shape[0])
        cols = tc * like.shape[1] + tl.arange(0, like.shape[1])
        m = (rows < hk)[:, None] & (cols < wk)[None, :]
        p64 = plane.to(tl.int64)
        step = (p64 * 0 + hk) * wk
        off = p64 * 3 * step + rows.to(tl.int64)[:, None] * wk + cols.to(tl.int64)[None, :]
        lh = tl.load(ptr + off, mask=m, other=0.0).to(like.dtype)
        hl = tl.load(ptr + off + step, mask=m, other=0.0).to(like.dtype)
        hh = tl.load(ptr + off + 2 * step, mask=m, other=0.0).to(like.dtype)
        return lh, hl, hh

    @triton.jit
    def _pairs(ll, sgn):
        """Row sums/differences of the 2x2 blocks of an (R, C) tile, split into even and odd
        columns: (a + c, b + d, a - c, b - d), each (R/2, C/2)."""
        R: tl.constexpr = ll.shape[0] // 2
        C: tl.constexpr = ll.shape[1]
        C2: tl.constexpr = ll.shape[1] // 2
        t = tl.reshape(ll, (R, 2, C))                      # row pairs
        rs = tl.sum(t, axis=1)
        rd = tl.sum(t * sgn[None, :, None], axis=1)
        se, so = tl.split(tl.reshape(rs, (R, C2, 2)))
        de, do_ = tl.split(tl.reshape(rd, (R, C2, 2)))
        return se, so, de, do_

    @triton.jit
    def _unpairs(ll, lh, hl, hh):
        """Inverse 2x2 butterflies of (R, C) tiles as the even and odd output rows, each (R, 2C)
        with the columns interleaved."""
        R: tl.constexpr = ll.shape[0]
        C2: tl.constexpr = 2 * ll.shape[1]
        p = ll + lh
        q = hl + hh
        r = ll - lh
        t = hl - hh
        top = tl.reshape(tl.join((p + q) * 0.5, (p - q) * 0.5), (R, C2))
        bot = tl.reshape(tl.join((r + t) * 0.5, (r - t) * 0.5), (R, C2))
        return top, bot

    @triton.jit
    def _unpairs_tile(ll, lh, hl, hh, sgn):
        """Inverse 2x2 butterflies of (R, C) tiles as one (2R, 2C) tile (for inner levels)."""
        R2: tl.constexpr = 2 * ll.shape[0]
        C2: tl.constexpr = 2 * ll.shape[1]
        sp = sgn[None, :, None, None]
        sq = sgn[None, None, None, :]
        x4 = (ll[:, None, :, None] + lh[:, None, :, None] * sp
              + hl[:, None, :, None] * sq + hh[:, None, :, None] * (sp * sq)) * 0.5   # (R, 2, C, 2)
        return tl.reshape(x4, (R2, C2))

    # Row counts and tile counters only feed row masks and div/mod: not specialising them on
    # divisibility keeps the number of compiled variants down (column sizes and strides stay
    # specialised: the 16-byte vector loads/stores depend on them).
    @triton.jit(do_not_specialize=["n_h", "hL", "tiles_w", "tiles_per_plane"])
    def _haar_fwd_kernel(
        x_ptr, sx_p, sx_h, sx_w, n_h, n_w,          # group input (P, n_h, n_w), any strides
        ll_ptr, hL, wL,                             # group low-pass output, contiguous (P, hL, wL)
        d1_ptr, d2_ptr, d3_ptr, d4_ptr, d5_ptr,     # detail outputs, finest first, (P, 3, hk, wk)
        tiles_w, tiles_per_plane,
        LEVELS: tl.constexpr, BR: tl.constexpr, BC: tl.constexpr,
        MODE: tl.constexpr, ACC: tl.constexpr,
    ):
        pid = tl.program_id(0)
        plane = pid // tiles_per_plane
        rem = pid % tiles_per_plane
        tr = rem // tiles_w
        tc = rem % tiles_w
        # Level 1 reads two row-tiles of the input, even rows 2i and odd rows 2i+1, each
        # (R1, 2*C1) and contiguous along the columns (so the loads vectorise), then splits the
        # columns into even/odd with reshape + split: a b / c d of every 2x2 block.
        R1: tl.constexpr = BR << (LEVELS - 1)
        C1: tl.constexpr = BC << (LEVELS - 1)
        C2: tl.constexpr = 2 * C1
        h1 = hL << (LEVELS - 1)
        i = tr * R1 + tl.arange(0, R1)
        cin = tc * C2 + tl.arange(0, C2)
        r0 = 2 * i
        r1 = 2 * i + 1
        m0 = r0 < n_h
        if MODE == 0:   # zero padding: the padded row reads as 0
            m1 = r1 < n_h
        else:           # symmetric / periodization -> row n - 1, reflect -> row n - 2
            m1 = r1 < 2 * h1
            r1 = tl.where(r1 < n_h, r1, n_h - MODE)
        mc = (cin < n_w)[None, :]          # a padded column reads as 0 and is fixed below
        top = tl.load(x_ptr + _offset3(plane, r0[:, None], cin[None, :], sx_p, sx_h, sx_w),
                      mask=m0[:, None] & mc, other=0.0).to(ACC)
        bot = tl.load(x_ptr + _offset3(plane, r1[:, None], cin[None, :], sx_p, sx_h, sx_w),
                      mask=m1[:, None] & mc, other=0.0).to(ACC)
        a, b = tl.split(tl.reshape(top, (R1, C1, 2)))
        c, d = tl.split(tl.reshape(bot, (R1, C1, 2)))
        if MODE != 0:
            j = tc * C1 + tl.arange(0, C1)
            padc = ((2 * j + 1) == n_w)[None, :]       # the odd column beyond an odd width
            if MODE == 1:       # repeat the last column (= the even column of this pair)
                b = tl.where(padc, a, b)
                d = tl.where(padc, c, d)
            else:               # reflect: column n - 2 (the odd column of the previous pair)
                e0 = tl.load(x_ptr + _offset3(plane, r0, n_w - 2, sx_p, sx_h, sx_w), mask=m0, other=0.0)
                e1 = tl.load(x_ptr + _offset3(plane, r1, n_w - 2, sx_p, sx_h, sx_w), mask=m1, other=0.0)
                b = tl.where(padc, e0.to(ACC)[:, None], b)
                d = tl.where(padc, e1.to(ACC)[:, None], d)
        se = a + c      # row sums / differences, even and odd columns
        so = b + d
        de = a - c
        do_ = b - d
        sgn = 1.0 - 2.0 * tl.arange(0, 2).to(ACC)                        # [+1, -1]
        for k in tl.static_range(LEVELS):
            if k > 0:   # next level: 2x2 blocks of the previous low-pass tile, in registers
                se, so, de, do_ = _pairs(ll, sgn)
            ll = (se + so) * 0.5
            lh = (de + do_) * 0.5
            hl = (se - so) * 0.5
            hh = (de - do_) * 0.5
            hk = hL << (LEVELS - 1 - k)
            wk = wL << (LEVELS - 1 - k)
            if k == 0:
                _store_bands(d1_ptr, plane, tr, tc, hk, wk, lh, hl, hh)
            elif k == 1:
                _store_bands(d2_ptr, plane, tr, tc, hk, wk, lh, hl, hh)
            elif k == 2:
                _store_bands(d3_ptr, plane, tr, tc, hk, wk, lh, hl, hh)
            elif k == 3:
                _store_bands(d4_ptr, plane, tr, tc, hk, wk, lh, hl, hh)
            else:
                _store_bands(d5_ptr, plane, tr, tc, hk, wk, lh, hl, hh)
        rows = tr * BR + tl.arange(0, BR)
        cols = tc * BC + tl.arange(0, BC)
        mo = (rows < hL)[:, None] & (cols < wL)[None, :]
        p64 = plane.to(tl.int64)
        off = (p64 * hL + rows.to(tl.int64)[:, None]) * wL + cols.to(tl.int64)[None, :]
        tl.store(ll_ptr + off, ll.to(ll_ptr.dtype.element_ty), mask=mo)

    @triton.jit(do_not_specialize=["hL", "o_h", "tiles_w", "tiles_per_plane"])
    def _haar_inv_kernel(
        ll_ptr, sl_p, sl_h, sl_w, hL, wL,           # group low-pass input (P, hL, wL), any strides
        d1_ptr, d2_ptr, d3_ptr, d4_ptr, d5_ptr,     # details, finest first, contiguous (P, 3, hk, wk)
        out_ptr, o_h, o_w,                          # output, contiguous (P, o_h, o_w), o <= 2 h1
        tiles_w, tiles_per_plane,
        LEVELS: tl.constexpr, BR: tl.constexpr, BC: tl.constexpr, ACC: tl.constexpr,
    ):
        pid = tl.program_id(0)
        plane = pid // tiles_per_plane
        rem = pid % tiles_per_plane
        tr = rem // tiles_w
        tc = rem % tiles_w
        rows = tr * BR + tl.arange(0, BR)
        cols = tc * BC + tl.arange(0, BC)
        m = (rows < hL)[:, None] & (cols < wL)[None, :]
        cur = tl.load(ll_ptr + _offset3(plane, rows[:, None], cols[None, :], sl_p, sl_h, sl_w),
                      mask=m, other=0.0).to(ACC)
        sgn = 1.0 - 2.0 * tl.arange(0, 2).to(ACC)                        # [+1, -1]
        for kk in tl.static_range(LEVELS):
            hk = hL << kk
            wk = wL << kk
            if kk == LEVELS - 1:
                lh, hl, hh = _load_bands(d1_ptr, plane, tr, tc, hk, wk, cur)
            elif kk == LEVELS - 2:
                lh, hl, hh = _load_bands(d2_ptr, plane, tr, tc, hk, wk, cur)
            elif kk == LEVELS - 3:
                lh, hl, hh = _load_bands(d3_ptr, plane, tr, tc, hk, wk, cur)
            elif kk == LEVELS - 4:
                lh, hl, hh = _load_bands(d4_ptr, plane, tr, tc, hk, wk, cur)
            else:
                lh, hl, hh = _load_bands(d5_ptr, plane, tr, tc, hk, wk, cur)
            if kk < LEVELS - 1:     # inner level: the (2R, 2C) low-pass tile of the next level
                cur = _unpairs_tile(cur, lh, hl, hh, sgn)
            else:                   # finest level: store even and odd rows, contiguous columns
                top, bot = _unpairs(cur, lh, hl, hh)
                i = tr * top.shape[0] + tl.arange(0, top.shape[0])
                cc = tc * top.shape[1] + tl.arange(0, top.shape[1])
                mc = (cc < o_w)[None, :]
                base = plane.to(tl.int64) * o_h
                off0 = (base + (2 * i).to(tl.int64)[:, None]) * o_w + cc.to(tl.int64)[None, :]
                ty = out_ptr.dtype.element_ty
                tl.store(out_ptr + off0, top.to(ty), mask=((2 * i) < o_h)[:, None] & mc)
                tl.store(out_ptr + off0 + o_w, bot.to(ty), mask=((2 * i + 1) < o_h)[:, None] & mc)


def _tiles(levels: int, tile: Tuple[int, int]) -> Tuple[int, int]:
    """Coarse-level block (BR, BC) of a program for a group of ``levels`` levels (``tile``: input
    pixels per program before the 2^L minimum, settings.haar_tile)."""
    th = max(tile[0], 1 << levels)
    tw = max(tile[1], 1 << levels)
    return th >> levels, tw >> levels


def _grid(planes: int, h: int, w: int, br: int, bc: int):
    tiles_h, tiles_w = -(-h // br), -(-w // bc)
    n = planes * tiles_h * tiles_w
    if n >= 2**31:
        raise ValueError(f"too many tiles ({n}) for one launch")
    return tiles_w, tiles_h * tiles_w, (n,)


def _tl_acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _flat3(x: torch.Tensor) -> torch.Tensor:
    return x.reshape((-1,) + tuple(x.shape[-2:]))


@functools.lru_cache(maxsize=512)
def _launches(P: int, hs: Tuple[int, ...], ws: Tuple[int, ...], tile: Tuple[int, int]):
    """Per launch group: (s, L, BR, BC, tiles_w, tiles_per_plane, grid). Cached: the host time of
    a call matters for small, launch-bound shapes."""
    out = []
    for s, n in _plan(hs, ws):
        br, bc = _tiles(n, tile)
        out.append((s, n, br, bc) + _grid(P, hs[s + n], ws[s + n], br, bc))
    return tuple(out)


def _dwt_triton(x: torch.Tensor, levels: int, mode: str):
    cfg = settings.current()
    lead, (H, W) = x.shape[:-2], x.shape[-2:]
    x3 = _flat3(x)
    P = x3.shape[0]
    hs, ws = tuple(_chain(H, levels)), tuple(_chain(W, levels))
    acc = _acc_dtype(x.dtype)
    tl_acc = _tl_acc(x.dtype)
    mode_id = _MODE_ID[mode]
    dev = x.device
    yh = [torch.empty((P, 3, hs[k + 1], ws[k + 1]), dtype=x.dtype, device=dev) for k in range(levels)]
    yl = torch.empty((P, hs[levels], ws[levels]), dtype=x.dtype, device=dev)
    cur = x3
    for s, n, br, bc, tiles_w, tpp, grid in _launches(P, hs, ws, cfg.haar_tile):
        ll = yl if s + n == levels else torch.empty((P, hs[s + n], ws[s + n]), dtype=acc, device=dev)
        ds = yh[s:s + n] + [yh[s]] * (_FUSE_MAX - n)
        _haar_fwd_kernel[grid](
            cur, cur.stride(0), cur.stride(1), cur.stride(2), hs[s], ws[s],
            ll, hs[s + n], ws[s + n], *ds, tiles_w, tpp,
            LEVELS=n, BR=br, BC=bc, MODE=mode_id, ACC=tl_acc, num_warps=cfg.haar_warps,
        )
        cur = ll
    return yl.view(lead + yl.shape[-2:]), [d.view(lead + d.shape[-3:]) for d in yh]


def _idwt_triton(yl: torch.Tensor, yh: Sequence[torch.Tensor], out_h: int, out_w: int, fold: str):
    cfg = settings.current()
    lead = yl.shape[:-2]
    cur = _flat3(yl)
    P = cur.shape[0]
    ds = [d.reshape((-1,) + tuple(d.shape[-3:])).contiguous() for d in yh]
    hs = tuple([out_h] + [d.shape[-2] for d in yh])
    ws = tuple([out_w] + [d.shape[-1] for d in yh])
    acc = _acc_dtype(yl.dtype)
    for s, n, br, bc, tiles_w, tpp, grid in reversed(_launches(P, hs, ws, cfg.haar_tile)):
        final = s == 0
        h1, w1 = hs[s + 1], ws[s + 1]
        if fold == "crop":
            o_h, o_w = hs[s], ws[s]      # the kernel crops by not storing the padded row/col
        else:
            o_h, o_w = 2 * h1, 2 * w1    # full size, folded below
        dt = yl.dtype if (final and (fold == "crop" or (o_h, o_w) == (hs[s], ws[s]))) else acc
        out = torch.empty((P, o_h, o_w), dtype=dt, device=yl.device)
        dl = ds[s:s + n] + [ds[s]] * (_FUSE_MAX - n)
        _haar_inv_kernel[grid](
            cur, cur.stride(0), cur.stride(1), cur.stride(2), hs[s + n], ws[s + n],
            *dl, out, o_h, o_w, tiles_w, tpp,
            LEVELS=n, BR=br, BC=bc, ACC=_tl_acc(yl.dtype), num_warps=cfg.haar_warps,
        )
        cur = out if fold == "crop" else _fold(out, hs[s], ws[s], fold)
    cur = cur.to(yl.dtype).contiguous()
    return cur.reshape(lead + cur.shape[-2:])


# ----------------------------------------------------------------------------------------------
# custom ops + autograd
# ----------------------------------------------------------------------------------------------
def _dwt2_impl(x: torch.Tensor, levels: int, mode: str) -> List[torch.Tensor]:
    impl = backend.choose("haar_dwt2", x)
    if impl == "triton":
        yl, yh = _dwt_triton(x, levels, mode)
    else:
        yl, yh = _dwt_cpu(x, levels, mode, backend.extension("haar") if impl == "cpp" else None)
    return [yl] + list(yh)


@torch.library.custom_op("d4k::haar_dwt2", mutates_args=())
def _dwt2_op(x: torch.Tensor, levels: int, mode: str) -> List[torch.Tensor]:
    """[yl, yh_1 (finest), ..., yh_J]."""
    return _dwt2_impl(x, levels, mode)


@_dwt2_op.register_fake
def _dwt2_fake(x, levels, mode):
    lead, (H, W) = x.shape[:-2], x.shape[-2:]
    hs, ws = _chain(H, levels), _chain(W, levels)
    out = [x.new_empty(tuple(lead) + (hs[levels], ws[levels]))]
    out += [x.new_empty(tuple(lead) + (3, hs[k + 1], ws[k + 1])) for k in range(levels)]
    return out


def _dwt2_setup(ctx, inputs, output):
    x, levels, mode = inputs
    ctx.hw = (x.shape[-2], x.shape[-1])
    ctx.mode = mode
    ctx.shapes = [o.shape for o in output]


def _dwt2_backward(ctx, grads):
    ref = next(g for g in grads if g is not None)
    grads = [g if g is not None else ref.new_zeros(shape) for g, shape in zip(grads, ctx.shapes)]
    gl, gh = grads[0], grads[1:]
    gx = _idwt2_op(gl, gh, ctx.hw[0], ctx.hw[1], _FOLD_OF_MODE[ctx.mode])
    return gx, None, None


_dwt2_op.register_autograd(_dwt2_backward, setup_context=_dwt2_setup)


@torch.library.custom_op("d4k::haar_idwt2", mutates_args=())
def _idwt2_op(yl: torch.Tensor, yh: List[torch.Tensor], out_h: int, out_w: int, fold: str) -> torch.Tensor:
    """Inverse (fold="crop"), or the adjoint of the symmetric/periodization ("edge") or reflect
    ("reflect") DWT. Sizes: yh[k] is (..., 3, n_{k+1}), n_0 = (out_h, out_w), n_{k+1} = ceil(n_k/2),
    yl matches yh[-1]."""
    return _idwt2_impl(yl, yh, out_h, out_w, fold)


def _idwt2_impl(yl, yh, out_h: int, out_w: int, fold: str) -> torch.Tensor:
    impl = backend.choose("haar_idwt2", yl)
    if impl == "triton":
        return _idwt_triton(yl, yh, out_h, out_w, fold)
    return _idwt_cpu(yl, yh, out_h, out_w, fold, backend.extension("haar") if impl == "cpp" else None)


@_idwt2_op.register_fake
def _idwt2_fake(yl, yh, out_h, out_w, fold):
    return yl.new_empty(tuple(yl.shape[:-2]) + (out_h, out_w))


def _idwt2_setup(ctx, inputs, output):
    yl, yh, out_h, out_w, fold = inputs
    ctx.levels = len(yh)
    ctx.fold = fold


def _idwt2_backward(ctx, g):
    out = _dwt2_op(g, ctx.levels, _MODE_OF_FOLD[ctx.fold])
    return out[0], list(out[1:]), None, None, None


_idwt2_op.register_autograd(_idwt2_backward, setup_context=_idwt2_setup)


# ----------------------------------------------------------------------------------------------
# public functions
# ----------------------------------------------------------------------------------------------
def _route(*tensors) -> str:
    """How a public call runs:

    * "op": through the custom ops (torch.compile / export, or autograd must track a tensor);
    * "composite": plain functional torch (the "cpu" path's math, differentiable op by op) under
      forward-mode AD or torch.func transforms (grad, jvp, vmap), which custom ops with only a
      backward formula do not support;
    * "direct": eager and no gradient: the implementation without the custom-op dispatch (it costs
      tens of microseconds of host time, the whole budget of a launch-bound call)."""
    if torch.compiler.is_compiling():
        return "op"
    if getattr(torch.autograd.forward_ad, "_current_level", -1) >= 0:
        return "composite"
    peek = getattr(getattr(torch._C, "_functorch", None), "peek_interpreter_stack", None)
    if peek is not None and peek() is not None:
        return "composite"
    grad = torch.is_grad_enabled()
    if all(t.device.type in ("cpu", "cuda") and not (grad and t.requires_grad) for t in tensors):
        return "direct"
    return "op"


def _dwt_composite(x: torch.Tensor, levels: int, mode: str) -> List[torch.Tensor]:
    cur = x.to(_acc_dtype(x.dtype))
    yh = []
    for _ in range(levels):
        cur = _pad_odd(cur, mode)
        h, w = cur.shape[-2] // 2, cur.shape[-1] // 2
        x6 = cur.unflatten(-1, (w, 2)).unflatten(-3, (h, 2))
        top, bot = x6.select(-3, 0), x6.select(-3, 1)
        s, d = top + bot, top - bot
        s0, s1, d0, d1 = s[..., 0], s[..., 1], d[..., 0], d[..., 1]
        yh.append((torch.stack([d0 + d1, s0 - s1, d0 - d1], dim=-3) * 0.5).to(x.dtype))
        cur = (s0 + s1) * 0.5
    return [cur.to(x.dtype)] + yh


def _idwt_composite(yl: torch.Tensor, yh: Sequence[torch.Tensor], out_h: int, out_w: int) -> torch.Tensor:
    acc = _acc_dtype(yl.dtype)
    cur = yl.to(acc)
    for k in reversed(range(len(yh))):
        lh, hl, hh = yh[k].to(acc).unbind(-3)
        p, q, r, t = cur + lh, hl + hh, cur - lh, hl - hh
        top = torch.stack((p + q, p - q), dim=-1)
        bot = torch.stack((r + t, r - t), dim=-1)
        cur = (torch.stack((top, bot), dim=-3) * 0.5).flatten(-2).flatten(-3, -2)
        n_h, n_w = (out_h, out_w) if k == 0 else yh[k - 1].shape[-2:]
        cur = cur[..., :n_h, :n_w]
    return cur.to(yl.dtype)


def dwt2(x: torch.Tensor, levels: int = 1, mode: str = "zero") -> Tuple[torch.Tensor, List[torch.Tensor]]:
    """J-level 2-D Haar DWT over the last two dims: ``(yl, yh)`` in pytorch_wavelets layout."""
    check_tensor(x, "x", dtypes=_DTYPES, min_dim=2)
    check_int(levels, "levels", lo=1)
    check_choice(mode, "mode", MODES)
    H, W = x.shape[-2], x.shape[-1]
    if x.numel() == 0:
        raise ValueError(f"x is empty (shape {tuple(x.shape)})")
    if H < 2 or W < 2:
        raise ValueError(f"x is too small for a Haar level: its last two dims are {H}x{W}, each must be >= 2")
    jmax = max_levels(H, W)
    if levels > jmax:
        raise ValueError(
            f"levels={levels} is more than a {H}x{W} input allows: at most {jmax} "
            "(each level halves the size rounding up and needs an input of at least 2x2)")
    route = _route(x)
    if route == "direct":
        out = _dwt2_impl(x, levels, mode)
    elif route == "composite":
        out = _dwt_composite(x, levels, mode)
    else:
        out = _dwt2_op(x, levels, mode)
    return out[0], list(out[1:])


def idwt2(coeffs, mode: str = "zero", output_size: Optional[Sequence[int]] = None) -> torch.Tensor:
    """Inverse of :func:`dwt2`. ``coeffs = (yl, yh)``; entries of ``yh`` may be None (zeros).

    Like pytorch_wavelets, each level crops the low-pass to the next detail size, and the result is
    even-sized; ``output_size=(H, W)`` crops it to the size the forward saw. For Haar the inverse
    is the same in every mode; ``mode`` is checked for symmetry with :func:`dwt2`."""
    check_choice(mode, "mode", MODES)
    if not isinstance(coeffs, (tuple, list)) or len(coeffs) != 2:
        raise TypeError("coeffs must be a pair (yl, yh)")
    yl, yh = coeffs
    check_tensor(yl, "yl", dtypes=_DTYPES, min_dim=2)
    if not isinstance(yh, (tuple, list)):
        raise TypeError(f"yh must be a list of tensors, got {type(yh).__name__}")
    yh = list(yh)
    if yl.numel() == 0:
        raise ValueError(f"yl is empty (shape {tuple(yl.shape)})")
    if not yh:
        return yl
    lead = tuple(yl.shape[:-2])
    cur_h, cur_w = yl.shape[-2], yl.shape[-1]   # size of the low-pass entering level k
    for k in reversed(range(len(yh))):
        d = yh[k]
        if d is None:
            hk, wk = cur_h, cur_w
            yh[k] = yl.new_zeros(lead + (3, hk, wk))
        else:
            check_tensor(d, f"yh[{k}]", min_dim=3)
            if d.dtype != yl.dtype:
                raise TypeError(f"yh[{k}] has dtype {d.dtype} but yl has dtype {yl.dtype}")
            if d.device != yl.device:
                raise ValueError(f"yh[{k}] is on {d.device} but yl is on {yl.device}")
            if tuple(d.shape[:-3]) != lead or d.shape[-3] != 3:
                raise ValueError(f"yh[{k}] has shape {tuple(d.shape)}; expected {lead + (3, 'h', 'w')}")
            hk, wk = d.shape[-2], d.shape[-1]
        if cur_h not in (hk, hk + 1) or cur_w not in (wk, wk + 1):
            what = "yl" if k == len(yh) - 1 else f"the level-{k + 2} reconstruction"
            raise ValueError(f"{what} is {cur_h}x{cur_w} but yh[{k}] is {hk}x{wk}: sizes must "
                             "match or be one larger (sizes halve rounding up)")
        if k == len(yh) - 1 and (cur_h, cur_w) != (hk, wk):
            yl = yl[..., :hk, :wk]
        cur_h, cur_w = 2 * hk, 2 * wk
    if output_size is None:
        out_h, out_w = cur_h, cur_w
    else:
        out_h, out_w = (int(v) for v in output_size)
        if out_h not in (cur_h, cur_h - 1) or out_w not in (cur_w, cur_w - 1):
            raise ValueError(f"output_size={tuple(output_size)} does not fit coefficients whose finest "
                             f"level reconstructs {cur_h}x{cur_w}: expected H in ({cur_h - 1}, {cur_h}), "
                             f"W in ({cur_w - 1}, {cur_w})")
    route = _route(yl, *yh)
    if route == "direct":
        return _idwt2_impl(yl, yh, out_h, out_w, "crop")
    if route == "composite":
        return _idwt_composite(yl, yh, out_h, out_w)
    return _idwt2_op(yl, yh, out_h, out_w, "crop")


# ----------------------------------------------------------------------------------------------
# drop-in modules and pywt conversion
# ----------------------------------------------------------------------------------------------
_SUPPORTED_WAVES = ("haar", "db1")


def _check_wave(wave) -> None:
    name = getattr(wave, "name", wave)
    if isinstance(name, str) and name.lower() in _SUPPORTED_WAVES:
        return
    raise NotImplementedError(
        f"wave={wave!r} is not supported: d4k_kernels implements only the Haar wavelet "
        f"(wave='haar' or 'db1', or pywt.Wavelet('haar'))")


class DWTForward(torch.nn.Module):
    """Drop-in for ``pytorch_wavelets.DWTForward`` (Haar only): ``forward(x) -> (yl, yh)``."""

    def __init__(self, J: int = 1, wave="haar", mode: str = "zero"):
        super().__init__()
        _check_wave(wave)
        self.J = check_int(J, "J", lo=1)
        self.mode = check_choice(mode, "mode", MODES)

    def forward(self, x: torch.Tensor):
        return dwt2(x, levels=self.J, mode=self.mode)


class DWTInverse(torch.nn.Module):
    """Drop-in for ``pytorch_wavelets.DWTInverse`` (Haar only): ``forward((yl, yh)) -> x``."""

    def __init__(self, wave="haar", mode: str = "zero"):
        super().__init__()
        _check_wave(wave)
        self.mode = check_choice(mode, "mode", MODES)

    def forward(self, coeffs):
        return idwt2(coeffs, mode=self.mode)


def to_pywt(yl: torch.Tensor, yh: Sequence[torch.Tensor]) -> list:
    """pywt ``wavedec2`` list ``[cA_J, (cH_J, cV_J, cD_J), ..., (cH_1, cV_1, cD_1)]`` (tensors;
    ``.numpy()`` them for pywt). LH = cH, HL = cV, HH = cD."""
    return [yl] + [(d[..., 0, :, :], d[..., 1, :, :], d[..., 2, :, :]) for d in reversed(list(yh))]


def from_pywt(coeffs) -> Tuple[torch.Tensor, List[torch.Tensor]]:
    """``(yl, yh)`` from a pywt ``wavedec2`` list (numpy arrays or tensors)."""
    if not isinstance(coeffs, (list, tuple)) or len(coeffs) < 1:
        raise TypeError("coeffs must be a pywt wavedec2 list [cA, (cH, cV, cD), ...]")
    yl = torch.as_tensor(coeffs[0])
    yh = []
    for k, det in enumerate(reversed(list(coeffs[1:]))):
        if not isinstance(det, (list, tuple)) or len(det) != 3:
            raise ValueError(f"detail entry {len(coeffs) - 1 - k} must be a (cH, cV, cD) tuple")
        yh.append(torch.stack([torch.as_tensor(t, device=yl.device) for t in det], dim=-3))
    return yl, yh
