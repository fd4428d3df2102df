"""Triton kernels of the wavelet flow-matching loss (ops/wavelet_loss.py) and their launchers.

Grid (N*C planes, row tiles, column tiles); a tile is 2*BH x 2*BW pixels (on a GPU fixed by
settings.wlf_tile, so that one compiled kernel per (levels, flags, dtypes) serves every size; smaller
under the interpreter). A program loads model_pred, x_t and x0 once (16-byte vector loads when the
column stride is 1: ``UNIT_W``), forms ``d = x_t - sigma * pred - x0`` in fp32 registers and runs
``levels`` zero-mode Haar levels in registers with the butterfly helpers of ops/_haar_triton.py:

* ``_wl_fwd_kernel``: one weighted sum of squared coefficients per tile;
* ``_wl_bwd_kernel``: the gradient (band-weighted coefficients through the inverse levels, in
  registers) of pred / x_t / x0 and sigma's per-tile partials, plus the forward's energy partials
  (so that forward and gradient can run as one pass);
* ``_wl_finish_kernel``: one program sums each sample's partials in a fixed order (deterministic,
  no float atomics) and applies the weighting and the reduction;
* ``_wl_rescale_kernel``: gradients times the upstream gradient, in place; every access is masked
  off when that is 1.

The launchers have the same names and arguments as those of the torch path (ops/_wlf_torch.py).
docs/ops.md, Wavelet flow-matching loss.
"""
from __future__ import annotations

import functools
from typing import Optional, Sequence, Tuple

import torch
import triton
import triton.language as tl

from .. import settings
from .._util import acc_dtype, next_pow2
from ._haar_triton import pair_sums, unblock

__all__ = ["MAX_LEVELS", "tiles", "energy", "loss", "energy_grads", "loss_and_grads", "rescale_"]

MAX_LEVELS = 5


@triton.jit
def _load_diff(pred_ptr, xt_ptr, x0_ptr, sigma, n, c, row, col, mask,
               sp_n, sp_c, sp_h, sp_w, st_n, st_c, st_h, st_w, s0_n, s0_c, s0_h, s0_w,
               HAS_XT: tl.constexpr, UNIT_W: tl.constexpr, ACC: tl.constexpr):
    """d = x_t - sigma * pred - x0 over a [2BH, 2BW] tile (zero outside the image), and pred."""
    r = row.to(tl.int64)
    q = col.to(tl.int64)
    if UNIT_W:  # unit column stride for all inputs: contiguous rows, vector loads
        p = tl.load(pred_ptr + (n * sp_n + c * sp_c) + r * sp_h + q, mask=mask, other=0.0).to(ACC)
        x0 = tl.load(x0_ptr + (n * s0_n + c * s0_c) + r * s0_h + q, mask=mask, other=0.0).to(ACC)
    else:
        p = tl.load(pred_ptr + (n * sp_n + c * sp_c) + r * sp_h + q * sp_w, mask=mask, other=0.0).to(ACC)
        x0 = tl.load(x0_ptr + (n * s0_n + c * s0_c) + r * s0_h + q * s0_w, mask=mask, other=0.0).to(ACC)
    d = -(sigma * p) - x0
    if HAS_XT:
        if UNIT_W:
            xt = tl.load(xt_ptr + (n * st_n + c * st_c) + r * st_h + q, mask=mask, other=0.0).to(ACC)
        else:
            xt = tl.load(xt_ptr + (n * st_n + c * st_c) + r * st_h + q * st_w, mask=mask, other=0.0).to(ACC)
        d = d + xt
    return d, p


@triton.jit
def _sgn4(ACC: tl.constexpr):
    s = (1 - 2 * tl.arange(0, 2)).to(ACC)
    return s[None, :, None, None], s[None, None, None, :]


@triton.jit
def _haar(x, ACC: tl.constexpr):
    """One Haar level of x [h, 2, w, 2] (rows i*2+p, cols j*2+q) -> LL, LH, HL, HH [h, w]."""
    sp, sq = _sgn4(ACC)
    s, t = pair_sums(x, sq, 3)            # [h, 2, w]: left + right, left - right
    spp = tl.sum(sp, axis=3)              # [1, 2, 1]
    ll, lh = pair_sums(s, spp, 1)         # then top + bottom, top - bottom
    hl, hh = pair_sums(t, spp, 1)
    return ll * 0.5, lh * 0.5, hl * 0.5, hh * 0.5


@triton.jit
def _ihaar(ll, lh, hl, hh, ACC: tl.constexpr):
    """Adjoint (= inverse) of _haar: [h, w] x 4 -> [h, 2, w, 2]."""
    sp, sq = _sgn4(ACC)
    return unblock(ll, lh, hl, hh, sp, sq)


@triton.jit
def _ssq(x):
    return tl.sum(tl.sum(x * x, axis=1), axis=0)


@triton.jit
def _w(bw_ptr, k):
    return tl.load(bw_ptr + k)


@triton.jit
def _band_ssq(bw_ptr, j, lh, hl, hh):
    """Weighted energy of level j + 1's detail bands (weights 3j+1, 3j+2, 3j+3 of bw_ptr)."""
    return _w(bw_ptr, 3 * j + 1) * _ssq(lh) + _w(bw_ptr, 3 * j + 2) * _ssq(hl) + _w(bw_ptr, 3 * j + 3) * _ssq(hh)


@triton.jit
def _up(g, ll, lh, hl, hh, wll, bw_ptr, J: tl.constexpr, LEVELS: tl.constexpr, ACC: tl.constexpr):
    """One inverse level of the gradient: from g (w.r.t. level J + 1's LL; at the coarsest level,
    J + 1 == LEVELS, the weighted LL itself) and the weighted details to the gradient w.r.t. that
    level's input, a (2h, 2w) tile."""
    if J + 1 == LEVELS:
        g = ll * wll
    x4 = _ihaar(g, lh * _w(bw_ptr, 3 * J + 1), hl * _w(bw_ptr, 3 * J + 2), hh * _w(bw_ptr, 3 * J + 3), ACC)
    return tl.reshape(x4, (2 * ll.shape[0], 2 * ll.shape[1]))


@triton.jit
def _grid(BH: tl.constexpr, BW: tl.constexpr, H, W):
    """Rows [2BH, 1] and columns [1, 2BW] of this program's tile, and the in-image mask."""
    row = tl.program_id(1) * (2 * BH) + tl.arange(0, 2 * BH)[:, None]
    col = tl.program_id(2) * (2 * BW) + tl.arange(0, 2 * BW)[None, :]
    mask = (row < H) & (col < W)
    return row, col, mask


@triton.jit
def _tile_inputs(pred_ptr, xt_ptr, x0_ptr, sigma_ptr, C, H, W,
                 sp_n, sp_c, sp_h, sp_w, st_n, st_c, st_h, st_w, s0_n, s0_c, s0_h, s0_w,
                 HAS_XT: tl.constexpr, UNIT_W: tl.constexpr, ACC: tl.constexpr, BH: tl.constexpr, BW: tl.constexpr):
    """This program's plane (n, c), sigma_n, its tile's rows / columns / in-image mask, and d and
    pred over the tile."""
    plane = tl.program_id(0)
    n = (plane // C).to(tl.int64)
    c = (plane % C).to(tl.int64)
    sigma = tl.load(sigma_ptr + n).to(ACC)
    row, col, mask = _grid(BH, BW, H, W)
    d, p = _load_diff(pred_ptr, xt_ptr, x0_ptr, sigma, n, c, row, col, mask,
                      sp_n, sp_c, sp_h, sp_w, st_n, st_c, st_h, st_w, s0_n, s0_c, s0_h, s0_w,
                      HAS_XT, UNIT_W, ACC)
    return plane, n, c, sigma, row, col, mask, d, p


@triton.jit(do_not_specialize=["C", "n_tiles"])
def _wl_fwd_kernel(pred_ptr, xt_ptr, x0_ptr, sigma_ptr, bw_ptr, part_ptr,
                   C, H, W, n_tiles,
                   sp_n, sp_c, sp_h, sp_w, st_n, st_c, st_h, st_w, s0_n, s0_c, s0_h, s0_w,
                   HAS_XT: tl.constexpr, LEVELS: tl.constexpr, BH: tl.constexpr, BW: tl.constexpr,
                   ACC: tl.constexpr, UNIT_W: tl.constexpr):
    plane, n, c, sigma, row, col, mask, d, p = _tile_inputs(
        pred_ptr, xt_ptr, x0_ptr, sigma_ptr, C, H, W, sp_n, sp_c, sp_h, sp_w, st_n, st_c, st_h, st_w,
        s0_n, s0_c, s0_h, s0_w, HAS_XT, UNIT_W, ACC, BH, BW)
    ll, lh, hl, hh = _haar(tl.reshape(d, (BH, 2, BW, 2)), ACC)
    acc = _band_ssq(bw_ptr, 0, lh, hl, hh)
    for j in tl.static_range(1, LEVELS):    # unrolled at compile time: level j + 1 on the LL tile
        ll, lh, hl, hh = _haar(tl.reshape(ll, (BH >> j, 2, BW >> j, 2)), ACC)
        acc += _band_ssq(bw_ptr, j, lh, hl, hh)
    acc += _w(bw_ptr, 0) * _ssq(ll)
    tile = tl.program_id(1) * tl.num_programs(2) + tl.program_id(2)
    tl.store(part_ptr + plane.to(tl.int64) * n_tiles + tile, acc)


@triton.jit(do_not_specialize=["go_stride", "n_div", "C", "n_tiles"])
def _wl_bwd_kernel(pred_ptr, xt_ptr, x0_ptr, sigma_ptr, bw_ptr, go_ptr, go_stride, w_ptr, n_div,
                   gp_ptr, gt_ptr, g0_ptr, part_ptr, epart_ptr,
                   C, H, W, n_tiles,
                   sp_n, sp_c, sp_h, sp_w, st_n, st_c, st_h, st_w, s0_n, s0_c, s0_h, s0_w,
                   HAS_XT: tl.constexpr, LEVELS: tl.constexpr, BH: tl.constexpr, BW: tl.constexpr,
                   ACC: tl.constexpr, UNIT_W: tl.constexpr, W_PRED: tl.constexpr, W_XT: tl.constexpr,
                   W_X0: tl.constexpr, W_SIGMA: tl.constexpr):
    """g = 2 * dL/dE_n * W^T diag(w) W d; grad pred = -sigma g, grad x_t = g, grad x0 = -g,
    per-tile partials of grad sigma = sum(-pred * g). Gradients are written contiguous.
    dL/dE_n = go[n * go_stride] * w[n] / n_div (runtime values, not constexprs, to keep the number
    of compiled variants small: a ones tensor stands for "no weighting" / "upstream gradient 1").
    Also writes the forward's per-tile energy partials (used when forward and gradient run as one
    pass; cheap enough to write always, which halves the compiled variants)."""
    plane, n, c, sigma, row, col, mask, d, p = _tile_inputs(
        pred_ptr, xt_ptr, x0_ptr, sigma_ptr, C, H, W, sp_n, sp_c, sp_h, sp_w, st_n, st_c, st_h, st_w,
        s0_n, s0_c, s0_h, s0_w, HAS_XT, UNIT_W, ACC, BH, BW)
    ll1, lh1, hl1, hh1 = _haar(tl.reshape(d, (BH, 2, BW, 2)), ACC)
    if LEVELS >= 2:
        ll2, lh2, hl2, hh2 = _haar(tl.reshape(ll1, (BH // 2, 2, BW // 2, 2)), ACC)
    if LEVELS >= 3:
        ll3, lh3, hl3, hh3 = _haar(tl.reshape(ll2, (BH // 4, 2, BW // 4, 2)), ACC)
    if LEVELS >= 4:
        ll4, lh4, hl4, hh4 = _haar(tl.reshape(ll3, (BH // 8, 2, BW // 8, 2)), ACC)
    if LEVELS >= 5:
        ll5, lh5, hl5, hh5 = _haar(tl.reshape(ll4, (BH // 16, 2, BW // 16, 2)), ACC)
    wll = _w(bw_ptr, 0)
    # inverse, coarsest level first; g is the gradient w.r.t. the LL of the level below
    g = ll1     # a placeholder: the coarsest level's _up starts from its own LL
    if LEVELS >= 5:
        g = _up(g, ll5, lh5, hl5, hh5, wll, bw_ptr, 4, LEVELS, ACC)
    if LEVELS >= 4:
        g = _up(g, ll4, lh4, hl4, hh4, wll, bw_ptr, 3, LEVELS, ACC)
    if LEVELS >= 3:
        g = _up(g, ll3, lh3, hl3, hh3, wll, bw_ptr, 2, LEVELS, ACC)
    if LEVELS >= 2:
        g = _up(g, ll2, lh2, hl2, hh2, wll, bw_ptr, 1, LEVELS, ACC)
    g4 = _up(g, ll1, lh1, hl1, hh1, wll, bw_ptr, 0, LEVELS, ACC)      # (2BH, 2BW)
    # energy partials of the forward (see the docstring)
    en = _band_ssq(bw_ptr, 0, lh1, hl1, hh1)
    if LEVELS >= 2:
        en += _band_ssq(bw_ptr, 1, lh2, hl2, hh2)
    if LEVELS >= 3:
        en += _band_ssq(bw_ptr, 2, lh3, hl3, hh3)
    if LEVELS >= 4:
        en += _band_ssq(bw_ptr, 3, lh4, hl4, hh4)
    if LEVELS >= 5:
        en += _band_ssq(bw_ptr, 4, lh5, hl5, hh5)
    if LEVELS == 1:
        en += wll * _ssq(ll1)
    if LEVELS == 2:
        en += wll * _ssq(ll2)
    if LEVELS == 3:
        en += wll * _ssq(ll3)
    if LEVELS == 4:
        en += wll * _ssq(ll4)
    if LEVELS == 5:
        en += wll * _ssq(ll5)
    etile = tl.program_id(1) * tl.num_programs(2) + tl.program_id(2)
    tl.store(epart_ptr + plane.to(tl.int64) * n_tiles + etile, en)
    ge = tl.load(go_ptr + n * go_stride).to(ACC) * tl.load(w_ptr + n).to(ACC) / n_div
    g4 = g4 * (2.0 * ge)
    # contiguous outputs (N, C, H, W)
    off = (n * C + c) * H * W + row.to(tl.int64) * W + col.to(tl.int64)
    if W_PRED:
        tl.store(gp_ptr + off, (-sigma * g4).to(gp_ptr.dtype.element_ty), mask=mask)
    if W_XT:
        tl.store(gt_ptr + off, g4.to(gt_ptr.dtype.element_ty), mask=mask)
    if W_X0:
        tl.store(g0_ptr + off, (-g4).to(g0_ptr.dtype.element_ty), mask=mask)
    if W_SIGMA:
        part = tl.sum(tl.sum(-p * g4, axis=1), axis=0)
        tile = tl.program_id(1) * tl.num_programs(2) + tl.program_id(2)
        tl.store(part_ptr + plane.to(tl.int64) * n_tiles + tile, part)


@triton.jit(do_not_specialize=["N", "P", "n_div"])
def _wl_finish_kernel(part_ptr, w_ptr, e_ptr, out_ptr, N, P, n_div,
                      PER_SAMPLE: tl.constexpr, BLOCK: tl.constexpr, ACC: tl.constexpr):
    """One program: e[n] = sum of sample n's tile partials (fixed order), loss_n = w[n] * e[n];
    out = loss_n (PER_SAMPLE) or sum_n loss_n / n_div."""
    offs = tl.arange(0, BLOCK)
    total = tl.sum(tl.zeros([BLOCK], ACC), axis=0)
    for n in range(0, N):
        acc = tl.zeros([BLOCK], ACC)
        base = part_ptr + n * P  # N * P (tile partials) is far below 2^31
        for start in range(0, P, BLOCK):
            idx = start + offs
            acc += tl.load(base + idx, mask=idx < P, other=0.0)
        e = tl.sum(acc, axis=0)
        tl.store(e_ptr + n, e)
        e = e * tl.load(w_ptr + n).to(ACC)
        if PER_SAMPLE:
            tl.store(out_ptr + n, e)
        else:
            total += e
    if not PER_SAMPLE:
        tl.store(out_ptr, total / n_div)


@triton.jit(do_not_specialize=["go_stride"])
def _wl_rescale_kernel(g_ptr, go_ptr, go_stride, per_sample, BLOCK: tl.constexpr, ACC: tl.constexpr):
    """g[n] *= go (go[n] per sample) in place; when go == 1 every access is masked off, so the
    usual backward (upstream gradient 1) moves no data."""
    n = tl.program_id(1)
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    zero = tl.zeros([BLOCK], dtype=tl.int32)  # go as a (broadcast) vector: same address per lane
    go = tl.load(go_ptr + n * go_stride + zero).to(ACC)
    m = (offs < per_sample) & (go != 1.0)
    ptr = g_ptr + n.to(tl.int64) * per_sample + offs
    x = tl.load(ptr, mask=m, other=0.0).to(ACC)
    tl.store(ptr, (x * go).to(g_ptr.dtype.element_ty), mask=m)

def tiles(H: int, W: int, levels: int, fixed: bool = True) -> Tuple[int, int, int, int]:
    """(BH, BW, tiles_h, tiles_w): level-1 blocks per tile (powers of two, multiples of 2^(J-1)).
    On a GPU the tile is fixed (16 x 128 pixels, taller for J = 5) so that one compiled kernel per
    (levels, flags, dtypes) serves every size; under the interpreter it shrinks to small images."""
    need = 1 << (levels - 1)
    if fixed:
        tile = settings.current().wlf_tile  # level-1 blocks (BH, BW); an H200 sweep found 8x64 best or tied
        bh, bw = max(tile[0], need), max(tile[1], need)
    else:
        bw = max(need, min(64, next_pow2((W + 1) // 2)))
        bh = max(need, min(max(8, 2048 // (4 * bw)), next_pow2((H + 1) // 2)))
    return bh, bw, -(-H // (2 * bh)), -(-W // (2 * bw))


def _tl_acc(dt: torch.dtype):
    return tl.float64 if dt == torch.float64 else tl.float32


def _unit_w(*ts) -> bool:
    return all(t is None or t.stride(3) == 1 or t.shape[3] == 1 for t in ts)


def _strides(t: Optional[torch.Tensor]):
    return tuple(t.stride()) if t is not None else (0, 0, 0, 0)


@functools.lru_cache(maxsize=64)
def _ones_cached(n: int, device: str, dtype: torch.dtype) -> torch.Tensor:
    return torch.ones(n, dtype=dtype, device=device)


def _ones(n: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A cached ones vector (stands for "no weighting" / "upstream gradient 1" in the kernels)."""
    return _ones_cached(int(n), str(device), dtype)


@functools.lru_cache(maxsize=64)
def _bw_tensor_cached(weights: Tuple[float, ...], device: str, dtype: torch.dtype) -> torch.Tensor:
    w = list(weights) + [0.0] * (1 + 3 * MAX_LEVELS - len(weights))
    return torch.tensor(w, dtype=dtype, device=device)


def _bw_tensor(weights: Sequence[float], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The band weights as a cached device vector of 1 + 3 * MAX_LEVELS values (zero-padded)."""
    return _bw_tensor_cached(tuple(float(v) for v in weights), str(device), dtype)


def _partials(pred, x_t, x0, sigma, weights, levels) -> torch.Tensor:
    """(N, C * tiles) weighted energy partials of the forward kernel."""
    N, C, H, W = pred.shape
    acc = acc_dtype(pred, x_t, x0)
    bh, bw, th, tw = tiles(H, W, levels, fixed=pred.device.type != "cpu")
    part = torch.empty((N * C, th * tw), dtype=acc, device=pred.device)
    bwt = _bw_tensor(weights, pred.device, acc)
    xt = x_t if x_t is not None else pred
    _wl_fwd_kernel[(N * C, th, tw)](
        pred, xt, x0, sigma, bwt, part, C, H, W, th * tw,
        *pred.stride(), *_strides(x_t), *x0.stride(),
        HAS_XT=x_t is not None, LEVELS=levels, BH=bh, BW=bw, ACC=_tl_acc(acc), UNIT_W=_unit_w(pred, x_t, x0),
        num_warps=settings.current().wlf_warps,
    )
    return part.view(N, C * th * tw)


def _finish(part, weighting, reduction):
    """(loss, E) from (N, P) tile partials: one program, fixed order."""
    N, P = part.shape
    e = torch.empty((N,), dtype=part.dtype, device=part.device)
    per_sample = reduction == "none"
    out = torch.empty((N,) if per_sample else (), dtype=part.dtype, device=part.device)
    _wl_finish_kernel[(1,)](
        part, weighting if weighting is not None else _ones(N, part.device, part.dtype), e, out, N, P,
        N if reduction == "mean" else 1,
        PER_SAMPLE=per_sample, BLOCK=1024, ACC=_tl_acc(part.dtype), num_warps=4,
    )
    return out, e


def _grads_pass(go, pred, x_t, x0, sigma, weights, levels, need, weighting, n_div):
    """One ``_wl_bwd_kernel`` launch: the gradients (pred, x_t, x0, sigma; None where ``need`` says
    no) for dL/dE_n = go * weighting_n / n_div, and the (N, C * tiles) energy partials."""
    N, C, H, W = pred.shape
    acc = acc_dtype(pred, x_t, x0)
    bh, bw, th, tw = tiles(H, W, levels, fixed=pred.device.type != "cpu")
    bwt = _bw_tensor(weights, pred.device, acc)
    xt = x_t if x_t is not None else pred
    gp = torch.empty(pred.shape, dtype=pred.dtype, device=pred.device) if need[0] else None
    gt = torch.empty(xt.shape, dtype=xt.dtype, device=pred.device) if need[1] and x_t is not None else None
    g0 = torch.empty(x0.shape, dtype=x0.dtype, device=pred.device) if need[2] else None
    part = torch.empty((N * C, th * tw), dtype=acc, device=pred.device) if need[3] else None
    epart = torch.empty((N * C, th * tw), dtype=acc, device=pred.device)
    dummy = pred
    if go is None:
        go, go_stride = _ones(1, pred.device, acc), 0
    else:
        go, go_stride = go.to(acc).contiguous(), (1 if go.dim() == 1 else 0)
    _wl_bwd_kernel[(N * C, th, tw)](
        pred, xt, x0, sigma, bwt, go, go_stride,
        weighting if weighting is not None else _ones(N, pred.device, acc), n_div,
        gp if gp is not None else dummy, gt if gt is not None else dummy, g0 if g0 is not None else dummy,
        part if part is not None else bwt, epart,
        C, H, W, th * tw,
        *pred.stride(), *_strides(x_t), *x0.stride(),
        HAS_XT=x_t is not None, LEVELS=levels, BH=bh, BW=bw, ACC=_tl_acc(acc), UNIT_W=_unit_w(pred, x_t, x0),
        W_PRED=gp is not None, W_XT=gt is not None, W_X0=g0 is not None, W_SIGMA=part is not None,
        num_warps=settings.current().wlf_warps,
    )
    gs = part.view(N, C * th * tw).sum(dim=1) if part is not None else None
    return (gp, gt, g0, gs), epart.view(N, C * th * tw)


# ----------------------------------------------------------------------------------------------
# the launchers (the same names and arguments as ops/_wlf_torch.py)
# ----------------------------------------------------------------------------------------------
def energy(pred, x_t, x0, sigma, weights, levels) -> torch.Tensor:
    """Per-sample weighted energy E (N,)."""
    return _partials(pred, x_t, x0, sigma, weights, levels).sum(dim=1)


def loss(pred, x_t, x0, sigma, weighting, weights, levels, reduction):
    """(loss, E): forward kernel + one finishing kernel (per-sample sums, weighting, reduction)."""
    return _finish(_partials(pred, x_t, x0, sigma, weights, levels), weighting, reduction)


def energy_grads(go, pred, x_t, x0, sigma, weights, levels, need, weighting=None, n_div: int = 1):
    """Gradients (pred, x_t, x0, sigma) for dL/dE_n = go * weighting_n / n_div (go: () or (N,)),
    recomputed from the inputs in one pass; None where ``need`` says no."""
    return _grads_pass(go, pred, x_t, x0, sigma, weights, levels, need, weighting, n_div)[0]


def loss_and_grads(pred, x_t, x0, sigma, weighting, weights, levels, reduction, need):
    """Forward and gradient in one pass (gradients for an upstream gradient of 1): (loss, E, grads)."""
    (gp, gt, g0, _), epart = _grads_pass(None, pred, x_t, x0, sigma, weights, levels, need, weighting,
                                         pred.shape[0] if reduction == "mean" else 1)
    out, e = _finish(epart, weighting, reduction)
    return out, e, (gp, gt, g0)


def rescale_(g: torch.Tensor, go: torch.Tensor) -> torch.Tensor:
    """g *= go in place (go: () or (N,)); no data moves when go == 1."""
    N = g.shape[0]
    per = g.numel() // N
    block = 4096
    acc = torch.float64 if g.dtype == torch.float64 else torch.float32
    _wl_rescale_kernel[(-(-per // block), N)](g, go.to(acc).contiguous(), 1 if go.dim() == 1 else 0, per,
                                              BLOCK=block, ACC=_tl_acc(acc), num_warps=4)
    return g
