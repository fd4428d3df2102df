"""Triton kernels of the Haar DWT / IDWT (ops/haar.py) and their launchers, plus the ``@triton.jit``
butterfly helpers that the wavelet-loss kernels (ops/_wlf_triton.py) share.

Forward (``_haar_fwd_kernel``): one launch computes a *group* of up to ``FUSE_MAX`` (5) levels. A
program takes a tile of settings.haar_tile input pixels (32 x 128 by default, at least 2^L x 2^L) of
one plane, keeps every level in registers and writes each level's three detail bands plus the
group's LL. The first level of a group may have an odd input (its padding is done by the load's
index remap); the inputs of the group's other levels must be even, so :func:`plan` starts a new
group at every odd level: even sizes divisible by 2^J (e.g. 512 with J <= 5) run in ONE launch, odd
sizes take one launch per odd level. The inverse (``_haar_inv_kernel``) mirrors this.

The input is read through its strides (no copy; leading dims are flattened with ``reshape``, which
copies only if they cannot be merged). Coefficients given to the inverse are read contiguous
(``.contiguous()``, a no-op for dwt2's outputs); the low-pass goes by strides. Offsets are int64, so
tensors over 2^31 elements index correctly. fp32 / bf16 / fp16 accumulate in fp32; fp64 runs in fp64.
The level math is the butterfly of ops/_haar_torch.py; docs/ops.md, Haar DWT / IDWT.
"""
from __future__ import annotations

import functools
from typing import List, Sequence, Tuple

import torch
import triton
import triton.language as tl

from .. import settings
from .._util import acc_dtype
from ._haar_torch import MODE_ID, chain, fold

__all__ = ["FUSE_MAX", "plan", "dwt", "idwt", "butterfly", "pair_sums", "unblock"]

FUSE_MAX = 5            # most levels one launch carries in registers


def plan(hs: Sequence[int], ws: Sequence[int], lmax: int = FUSE_MAX) -> List[Tuple[int, int]]:
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

# ----------------------------------------------------------------------------------------------
# the butterfly on register tiles (jit helpers inline); the wavelet-loss kernels share these
# ----------------------------------------------------------------------------------------------
@triton.jit
def butterfly(p0, p1, p2, p3):
    """The 2x2 Haar butterfly of ops/_haar_torch.py on tiles: the blocks [[p0, p1], [p2, p3]] ->
    (LL, LH, HL, HH), rows first. It is its own inverse: applied to the transposed coefficient
    block [[LL, HL], [LH, HH]] it gives the transposed pixel block (a, c, b, d)."""
    return _columns(p0 + p2, p1 + p3, p0 - p2, p1 - p3)


@triton.jit
def _columns(s0, s1, d0, d1):
    """The butterfly's column step and scale, from the row sums (s0, s1) and differences (d0, d1)
    of the even and odd columns."""
    return (s0 + s1) * 0.5, (d0 + d1) * 0.5, (s0 - s1) * 0.5, (d0 - d1) * 0.5


@triton.jit
def pair_sums(x, sign, AXIS: tl.constexpr):
    """One 1-D Haar step over an axis of size 2, before its scale: (sum, signed sum) over ``AXIS``;
    ``sign`` is [+1, -1] broadcast along that axis."""
    return tl.sum(x, axis=AXIS), tl.sum(x * sign, axis=AXIS)


@triton.jit
def unblock(ll, lh, hl, hh, sp, sq):
    """The inverse butterfly by sign broadcasting: (h, w) tiles -> the (h, 2, w, 2) pixel blocks
    ((LL + LH sp) + (HL + HH sp) sq) / 2; ``sp`` / ``sq`` are [+1, -1] along the row / column axis."""
    a = ll[:, None, :, None]
    b = lh[:, None, :, None]
    c = hl[:, None, :, None]
    d = hh[:, None, :, None]
    return ((a + b * sp) + (c + d * sp) * sq) * 0.5


@triton.jit
def _next_level(ll, sgn):
    """The four bands, each (R/2, C/2), of the 2x2 blocks of an (R, C) tile: row sums and
    differences by a reduction over the row pairs, then even / odd columns by a split."""
    R: tl.constexpr = ll.shape[0] // 2
    C: tl.constexpr = ll.shape[1]
    C2: tl.constexpr = ll.shape[1] // 2
    rs, rd = pair_sums(tl.reshape(ll, (R, 2, C)), sgn[None, :, None], 1)
    se, so = tl.split(tl.reshape(rs, (R, C2, 2)))
    de, do_ = tl.split(tl.reshape(rd, (R, C2, 2)))
    return _columns(se, so, de, do_)


@triton.jit
def _unpairs(ll, lh, hl, hh):
    """Inverse 2x2 butterflies of (R, C) tiles as the even and odd output rows, each (R, 2C)
    with the columns interleaved."""
    R: tl.constexpr = ll.shape[0]
    C2: tl.constexpr = 2 * ll.shape[1]
    a, c, b, d = butterfly(ll, hl, lh, hh)
    return tl.reshape(tl.join(a, b), (R, C2)), tl.reshape(tl.join(c, d), (R, C2))


@triton.jit
def _unpairs_tile(ll, lh, hl, hh, sgn):
    """Inverse 2x2 butterflies of (R, C) tiles as one (2R, 2C) tile (for inner levels)."""
    x4 = unblock(ll, lh, hl, hh, sgn[None, :, None, None], sgn[None, None, None, :])   # (R, 2, C, 2)
    return tl.reshape(x4, (2 * ll.shape[0], 2 * ll.shape[1]))


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
    sgn = 1.0 - 2.0 * tl.arange(0, 2).to(ACC)                        # [+1, -1]
    for k in tl.static_range(LEVELS):
        if k == 0:
            ll, lh, hl, hh = butterfly(a, b, c, d)
        else:       # next level: 2x2 blocks of the previous low-pass tile, in registers
            ll, lh, hl, hh = _next_level(ll, sgn)
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
    for s, n in plan(hs, ws):
        br, bc = _tiles(n, tile)
        out.append((s, n, br, bc) + _grid(P, hs[s + n], ws[s + n], br, bc))
    return tuple(out)


def dwt(x: torch.Tensor, levels: int, mode: str) -> List[torch.Tensor]:
    """[yl, yh_1 (finest), ..., yh_J] of x (..., H, W), in x's dtype: one launch per group of :func:`plan`."""
    cfg = settings.current()
    lead, (H, W) = x.shape[:-2], x.shape[-2:]
    x3 = _flat3(x)
    P = x3.shape[0]
    hs, ws = tuple(chain(H, levels)), tuple(chain(W, levels))
    acc = acc_dtype(x.dtype)
    tl_acc = _tl_acc(x.dtype)
    mode_id = MODE_ID[mode]
    dev = x.device
    yh = [torch.empty((P, 3, hs[k + 1], ws[k + 1]), dtype=x.dtype, device=dev) for k in range(levels)]
    yl = torch.empty((P, hs[levels], ws[levels]), dtype=x.dtype, device=dev)
    cur = x3
    for s, n, br, bc, tiles_w, tpp, grid in _launches(P, hs, ws, cfg.haar_tile):
        ll = yl if s + n == levels else torch.empty((P, hs[s + n], ws[s + n]), dtype=acc, device=dev)
        ds = yh[s:s + n] + [yh[s]] * (FUSE_MAX - n)
        _haar_fwd_kernel[grid](
            cur, cur.stride(0), cur.stride(1), cur.stride(2), hs[s], ws[s],
            ll, hs[s + n], ws[s + n], *ds, tiles_w, tpp,
            LEVELS=n, BR=br, BC=bc, MODE=mode_id, ACC=tl_acc, num_warps=cfg.haar_warps,
        )
        cur = ll
    return [yl.view(lead + yl.shape[-2:])] + [d.view(lead + d.shape[-3:]) for d in yh]


def idwt(yl: torch.Tensor, yh: Sequence[torch.Tensor], out_h: int, out_w: int, how: str) -> torch.Tensor:
    """The inverse (``how="crop"``) or an adjoint of the DWT (ops/_haar_torch.fold), in yl's dtype."""
    cfg = settings.current()
    lead = yl.shape[:-2]
    cur = _flat3(yl)
    P = cur.shape[0]
    ds = [d.reshape((-1,) + tuple(d.shape[-3:])).contiguous() for d in yh]
    hs = tuple([out_h] + [d.shape[-2] for d in yh])
    ws = tuple([out_w] + [d.shape[-1] for d in yh])
    acc = acc_dtype(yl.dtype)
    for s, n, br, bc, tiles_w, tpp, grid in reversed(_launches(P, hs, ws, cfg.haar_tile)):
        final = s == 0
        h1, w1 = hs[s + 1], ws[s + 1]
        if how == "crop":
            o_h, o_w = hs[s], ws[s]      # the kernel crops by not storing the padded row/col
        else:
            o_h, o_w = 2 * h1, 2 * w1    # full size, folded below
        dt = yl.dtype if (final and (how == "crop" or (o_h, o_w) == (hs[s], ws[s]))) else acc
        out = torch.empty((P, o_h, o_w), dtype=dt, device=yl.device)
        dl = ds[s:s + n] + [ds[s]] * (FUSE_MAX - n)
        _haar_inv_kernel[grid](
            cur, cur.stride(0), cur.stride(1), cur.stride(2), hs[s + n], ws[s + n],
            *dl, out, o_h, o_w, tiles_w, tpp,
            LEVELS=n, BR=br, BC=bc, ACC=_tl_acc(yl.dtype), num_warps=cfg.haar_warps,
        )
        cur = out if how == "crop" else fold(out, hs[s], ws[s], how)
    cur = cur.to(yl.dtype).contiguous()
    return cur.reshape(lead + cur.shape[-2:])

