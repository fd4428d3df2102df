"""Fused wavelet flow-matching loss (WLF) of Diffusion-4K: loss and gradient in one pass over the inputs.

The Flux / SD3 training scripts of Diffusion-4K compute, per step (SPEC.md §2)::

    x0_pred = model_pred * (-sigma) + x_t
    P = cat([LL, LH, HL, HH] of haar_dwt_J1_zero(x0_pred)); T = the same for x0
    loss = mean_n(mean_{c,h,w}(weighting_n * (P - T) ** 2))

The Haar DWT is linear, so P - T = DWT(d) with ``d = x_t - sigma * model_pred - x0``. The kernels here
read ``model_pred``, ``x_t`` and ``x0`` once, form ``d`` in fp32 registers, run ``levels`` Haar levels
(zero mode) in registers and write one weighted sum of squared coefficients per tile; a one-program
finishing kernel sums each sample's partials in a fixed order (deterministic, no float atomics).
The gradient (band-weighted coefficients through the inverse transform, in registers) is written
in the same pass when a gradient will be wanted: the loss is quadratic, so the gradient for an
upstream gradient of 1 does not depend on the loss value, and the backward only rescales it in
place (moving no data when the upstream gradient is 1). Otherwise (sigma requires grad,
torch.compile, a second backward) the backward recomputes from the inputs in one pass.

Loss definition (what is averaged)
----------------------------------
``levels = J`` Haar levels in zero mode: level ``j`` maps the previous LL (``h_{j-1} x w_{j-1}``,
``h_0 = H``) to four subbands of ``h_j x w_j = ceil(h_{j-1}/2) x ceil(w_{j-1}/2)``. The coefficient set is
the pyramid LL_J plus (LH_j, HL_j, HH_j) for j = 1..J, i.e. exactly what pytorch_wavelets'
``DWTForward(J, mode="zero", wave="haar")`` returns as (yl, yh). Per sample::

    E_n     = sum over the pyramid of band_weight(band) * coefficient ** 2      (all C channels)
    count   = C * (h_J * w_J + 3 * sum_j h_j * w_j)                            (number of coefficients)
    loss_n  = weighting_n * E_n / count

``count`` is the number of coefficients, not ``C*H*W``: for J = 1 it is ``C * 4 * ceil(H/2) * ceil(W/2)``,
the size of the script's ``cat`` of the four ceil-sized subbands, so the defaults reproduce the
script exactly, including odd sizes (where the loss is ``H*W / (4*ceil(H/2)*ceil(W/2))`` times the
x0-MSE). ``reduction``: "mean" -> mean over n, "sum" -> sum over n, "none" -> the (N,) vector.
The loss is returned in float32 (float64 for float64 inputs), as the script's ``.float()`` does.

band_weights
------------
* ``None``: all 1 (the script).
* 4 values ``(LL, LH, HL, HH)``: LL weights the coarsest LL_J, the three detail weights apply at
  every level.
* ``1 + 3*J`` values ``(LL_J, LH_1, HL_1, HH_1, LH_2, HL_2, HH_2, ..., LH_J, HL_J, HH_J)``: the
  coarsest LL, then the detail weights per level, finest level first (pytorch_wavelets' yh order).
  For J = 1 both forms are the same 4 values.
Band weights are constants (a list of floats, or a tensor that does not require grad).

Backends
--------
CUDA tensors run the Triton kernels (the DWT and its inverse in registers, any weights). CPU
tensors run a vectorised torch path; when all band weights are equal it uses that the zero-mode
Haar pyramid is orthonormal (sum of squared coefficients = sum of d**2, gradient = 2*w*d) and skips
the transform, which gives the same loss up to float rounding.
"""
from __future__ import annotations

import functools
import math
from typing import List, Optional, Sequence, Tuple

import torch

from .. import backend, settings
from .._checks import check_choice, check_int, check_same, check_tensor
from .._util import acc_dtype as _acc_dtype, next_pow2 as _next_pow2

__all__ = ["wavelet_loss", "wavelet_loss_and_grad", "wavelet_mse", "wavelet_energy", "coefficient_count",
           "MAX_LEVELS"]

MAX_LEVELS = 5
_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
_REDUCTIONS = ("mean", "sum", "none")

# --------------------------------------------------------------------------------------------
# Triton kernels
# --------------------------------------------------------------------------------------------
if backend.HAS_TRITON:
    import triton
    import triton.language as tl

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
        s = tl.sum(x, axis=3)                 # [h, 2, w]: row pair sums over the 2 columns
        t = tl.sum(x * sq, axis=3)            # left - right
        spp = tl.sum(sp, axis=3)              # [1, 2, 1]
        ll = tl.sum(s, axis=1) * 0.5
        lh = tl.sum(s * spp, axis=1) * 0.5    # top - bottom
        hl = tl.sum(t, axis=1) * 0.5
        hh = tl.sum(t * spp, axis=1) * 0.5
        return ll, lh, hl, hh

    @triton.jit
    def _ihaar(ll, lh, hl, hh, ACC: tl.constexpr):
        """Adjoint (= inverse) of _haar: [h, w] x 4 -> [h, 2, w, 2]."""
        sp, sq = _sgn4(ACC)
        a = ll[:, None, :, None]
        b = lh[:, None, :, None]
        c = hl[:, None, :, None]
        d = hh[:, None, :, None]
        return ((a + b * sp) + (c + d * sp) * sq) * 0.5

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
    def _grid(BH: tl.constexpr, BW: tl.constexpr, H, W):
        """Rows [2BH, 1] and columns [1, 2BW] of this program's tile, and the in-image mask."""
        row = tl.program_id(1) * (2 * BH) + tl.arange(0, 2 * BH)[:, None]
        col = tl.program_id(2) * (2 * BW) + tl.arange(0, 2 * BW)[None, :]
        mask = (row < H) & (col < W)
        return row, col, mask

    @triton.jit(do_not_specialize=["C", "n_tiles"])
    def _wl_fwd_kernel(pred_ptr, xt_ptr, x0_ptr, sigma_ptr, bw_ptr, part_ptr,
                       C, H, W, n_tiles,
                       sp_n, sp_c, sp_h, sp_w, st_n, st_c, st_h, st_w, s0_n, s0_c, s0_h, s0_w,
                       HAS_XT: tl.constexpr, LEVELS: tl.constexpr, BH: tl.constexpr, BW: tl.constexpr,
                       ACC: tl.constexpr, UNIT_W: tl.constexpr):
        plane = tl.program_id(0)
        n = (plane // C).to(tl.int64)
        c = (plane % C).to(tl.int64)
        sigma = tl.load(sigma_ptr + n).to(ACC)
        row, col, mask = _grid(BH, BW, H, W)
        d, _p = _load_diff(pred_ptr, xt_ptr, x0_ptr, sigma, n, c, row, col, mask,
                           sp_n, sp_c, sp_h, sp_w, st_n, st_c, st_h, st_w, s0_n, s0_c, s0_h, s0_w,
                           HAS_XT, UNIT_W, ACC)
        ll, lh, hl, hh = _haar(tl.reshape(d, (BH, 2, BW, 2)), ACC)
        acc = _band_ssq(bw_ptr, 0, lh, hl, hh)
        if LEVELS >= 2:
            ll, lh, hl, hh = _haar(tl.reshape(ll, (BH // 2, 2, BW // 2, 2)), ACC)
            acc += _band_ssq(bw_ptr, 1, lh, hl, hh)
        if LEVELS >= 3:
            ll, lh, hl, hh = _haar(tl.reshape(ll, (BH // 4, 2, BW // 4, 2)), ACC)
            acc += _band_ssq(bw_ptr, 2, lh, hl, hh)
        if LEVELS >= 4:
            ll, lh, hl, hh = _haar(tl.reshape(ll, (BH // 8, 2, BW // 8, 2)), ACC)
            acc += _band_ssq(bw_ptr, 3, lh, hl, hh)
        if LEVELS >= 5:
            ll, lh, hl, hh = _haar(tl.reshape(ll, (BH // 16, 2, BW // 16, 2)), ACC)
            acc += _band_ssq(bw_ptr, 4, lh, hl, hh)
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
        plane = tl.program_id(0)
        n = (plane // C).to(tl.int64)
        c = (plane % C).to(tl.int64)
        sigma = tl.load(sigma_ptr + n).to(ACC)
        row, col, mask = _grid(BH, BW, H, W)
        d, p = _load_diff(pred_ptr, xt_ptr, x0_ptr, sigma, n, c, row, col, mask,
                          sp_n, sp_c, sp_h, sp_w, st_n, st_c, st_h, st_w, s0_n, s0_c, s0_h, s0_w,
                          HAS_XT, UNIT_W, ACC)
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
        if LEVELS == 5:
            g = ll5 * wll
            g = tl.reshape(_ihaar(g, lh5 * _w(bw_ptr, 13), hl5 * _w(bw_ptr, 14), hh5 * _w(bw_ptr, 15), ACC),
                           (BH // 8, BW // 8))
        if LEVELS == 4:
            g = ll4 * wll
        if LEVELS >= 4:
            g = tl.reshape(_ihaar(g, lh4 * _w(bw_ptr, 10), hl4 * _w(bw_ptr, 11), hh4 * _w(bw_ptr, 12), ACC),
                           (BH // 4, BW // 4))
        if LEVELS == 3:
            g = ll3 * wll
        if LEVELS >= 3:
            g = tl.reshape(_ihaar(g, lh3 * _w(bw_ptr, 7), hl3 * _w(bw_ptr, 8), hh3 * _w(bw_ptr, 9), ACC),
                           (BH // 2, BW // 2))
        if LEVELS == 2:
            g = ll2 * wll
        if LEVELS >= 2:
            g = tl.reshape(_ihaar(g, lh2 * _w(bw_ptr, 4), hl2 * _w(bw_ptr, 5), hh2 * _w(bw_ptr, 6), ACC),
                           (BH, BW))
        if LEVELS == 1:
            g = ll1 * wll
        g4 = _ihaar(g, lh1 * _w(bw_ptr, 1), hl1 * _w(bw_ptr, 2), hh1 * _w(bw_ptr, 3), ACC)
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
        g4 = tl.reshape(g4, (2 * BH, 2 * BW)) * (2.0 * ge)
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


if backend.HAS_TRITON:

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


def _tiles(H: int, W: int, levels: int, fixed: bool = True) -> Tuple[int, int, int, int]:
    """(BH, BW, tiles_h, tiles_w): level-1 blocks per tile (powers of two, multiples of 2^(J-1)).
    On a GPU the tile is fixed (16 x 128 pixels, taller for J = 5) so that one compiled kernel per
    (levels, flags, dtypes) serves every size; under the interpreter it shrinks to small images."""
    need = 1 << (levels - 1)
    if fixed:
        tile = settings.current().wlf_tile  # level-1 blocks (BH, BW); an H200 sweep found 8x64 best or tied
        bh, bw = max(tile[0], need), max(tile[1], need)
    else:
        bw = max(need, min(64, _next_pow2((W + 1) // 2)))
        bh = max(need, min(max(8, 2048 // (4 * bw)), _next_pow2((H + 1) // 2)))
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
    if torch.compiler.is_compiling():  # pragma: no cover - impl runs eagerly under compile anyway
        w = list(weights) + [0.0] * (1 + 3 * MAX_LEVELS - len(weights))
        return torch.tensor(w, dtype=dtype, device=device)
    return _bw_tensor_cached(tuple(float(v) for v in weights), str(device), dtype)


def _partials_triton(pred, x_t, x0, sigma, weights, levels):
    N, C, H, W = pred.shape
    acc = _acc_dtype(pred, x_t, x0)
    bh, bw, th, tw = _tiles(H, W, levels, fixed=pred.device.type != "cpu")
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


def _energy_triton(pred, x_t, x0, sigma, weights, levels):
    return _partials_triton(pred, x_t, x0, sigma, weights, levels).sum(dim=1)


def _loss_triton(pred, x_t, x0, sigma, weighting, weights, levels, reduction):
    """(loss, E): forward kernel + one finishing kernel (per-sample sums, weighting, reduction)."""
    return _finish_triton(_partials_triton(pred, x_t, x0, sigma, weights, levels), weighting, reduction)


def _energy_bwd_triton(grad_e, pred, x_t, x0, sigma, weights, levels, need, weighting=None, mean=False,
                       go_per_sample=True, energy=False):
    """Gradients (pred, x_t, x0, sigma) for upstream dL/dE = grad_e (None: 1) (/ N if mean) (* weighting);
    with energy=True also the (N, C*tiles) energy partials of the forward, as a fifth result."""
    N, C, H, W = pred.shape
    acc = _acc_dtype(pred, x_t, x0)
    bh, bw, th, tw = _tiles(H, W, levels, fixed=pred.device.type != "cpu")
    bwt = _bw_tensor(weights, pred.device, acc)
    xt = x_t if x_t is not None else pred
    gp = torch.empty(pred.shape, dtype=pred.dtype, device=pred.device) if need[0] else None
    gt = torch.empty(xt.shape, dtype=xt.dtype, device=pred.device) if need[1] and x_t is not None else None
    g0 = torch.empty(x0.shape, dtype=x0.dtype, device=pred.device) if need[2] else None
    part = torch.empty((N * C, th * tw), dtype=acc, device=pred.device) if need[3] else None
    epart = torch.empty((N * C, th * tw), dtype=acc, device=pred.device)
    dummy = pred
    if grad_e is None:
        go, go_stride = _ones(1, pred.device, acc), 0
    else:
        go, go_stride = grad_e.to(acc).contiguous(), (1 if go_per_sample else 0)
    _wl_bwd_kernel[(N * C, th, tw)](
        pred, xt, x0, sigma, bwt, go, go_stride,
        weighting if weighting is not None else _ones(N, pred.device, acc), N if mean else 1,
        gp if gp is not None else dummy, gt if gt is not None else dummy, g0 if g0 is not None else dummy,
        part if part is not None else bwt, epart,
        C, H, W, th * tw,
        *pred.stride(), *_strides(x_t), *x0.stride(),
        HAS_XT=x_t is not None, LEVELS=levels, BH=bh, BW=bw, ACC=_tl_acc(acc), UNIT_W=_unit_w(pred, x_t, x0),
        W_PRED=gp is not None, W_XT=gt is not None, W_X0=g0 is not None, W_SIGMA=part is not None,
        num_warps=settings.current().wlf_warps,
    )
    gs = part.view(N, C * th * tw).sum(dim=1) if part is not None else None
    if energy:
        return gp, gt, g0, gs, epart.view(N, C * th * tw)
    return gp, gt, g0, gs


def _finish_triton(part, weighting, reduction):
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


def _loss_and_grads_triton(pred, x_t, x0, sigma, weighting, weights, levels, reduction, need):
    """Forward and gradient in one pass (gradients for an upstream gradient of 1): (loss, E, grads)."""
    gp, gt, g0, _, epart = _energy_bwd_triton(None, pred, x_t, x0, sigma, weights, levels, need,
                                              weighting=weighting, mean=reduction == "mean", energy=True)
    loss, e = _finish_triton(epart, weighting, reduction)
    return loss, e, (gp, gt, g0)


def _rescale_(g: torch.Tensor, go: torch.Tensor) -> torch.Tensor:
    """g *= go in place (go: () or (N,)); no data moves when go == 1."""
    N = g.shape[0]
    per = g.numel() // N
    block = 4096
    acc = torch.float64 if g.dtype == torch.float64 else torch.float32
    _wl_rescale_kernel[(-(-per // block), N)](g, go.to(acc).contiguous(), 1 if go.dim() == 1 else 0, per,
                                                    BLOCK=block, ACC=_tl_acc(acc), num_warps=4)
    return g


# --------------------------------------------------------------------------------------------
# CPU path (vectorised torch; also runs on CUDA tensors when prefer("cpu") forces it)
# --------------------------------------------------------------------------------------------
def _diff_torch(pred, x_t, x0, sigma, acc):
    s = sigma.to(acc).view(-1, 1, 1, 1)
    base = -x0.to(acc) if x_t is None else x_t.to(acc) - x0.to(acc)
    return torch.addcmul(base, s, pred.to(acc), value=-1.0)


def _pad_to(d: torch.Tensor, levels: int) -> torch.Tensor:
    m = 1 << levels
    H, W = d.shape[-2:]
    ph, pw = (-H) % m, (-W) % m
    if ph or pw:
        d = torch.nn.functional.pad(d, (0, pw, 0, ph))
    return d


def _haar_torch(x: torch.Tensor):
    N, C, H, W = x.shape
    v = x.reshape(N, C, H // 2, 2, W // 2, 2)
    a, b = v[:, :, :, 0, :, 0], v[:, :, :, 0, :, 1]
    c, d = v[:, :, :, 1, :, 0], v[:, :, :, 1, :, 1]
    s0, s1, t0, t1 = a + b, c + d, a - b, c - d
    return (s0 + s1) * 0.5, (s0 - s1) * 0.5, (t0 + t1) * 0.5, (t0 - t1) * 0.5


def _ihaar_torch(ll, lh, hl, hh):
    N, C, h, w = ll.shape
    s0, s1 = (ll + lh) * 0.5, (ll - lh) * 0.5
    t0, t1 = (hl + hh) * 0.5, (hl - hh) * 0.5
    out = torch.stack([torch.stack([s0 + t0, s0 - t0], -1), torch.stack([s1 + t1, s1 - t1], -1)], 3)
    return out.reshape(N, C, 2 * h, 2 * w)


def _bands_torch(d, weights, levels):
    coeffs = []
    ll = _pad_to(d, levels)
    for _ in range(levels):
        ll, lh, hl, hh = _haar_torch(ll)
        coeffs.append((lh, hl, hh))
    return ll, coeffs


def _uniform(weights) -> bool:
    return all(w == weights[0] for w in weights)


def _energy_of_d(d, weights, levels):
    if _uniform(weights):
        # equal weights: the zero-mode Haar pyramid is orthonormal and the padding is zero, so the
        # coefficient energy is the energy of d (Parseval); skip the transform on the CPU path
        return weights[0] * torch.linalg.vector_norm(d.flatten(1), dim=1).square()
    ll, coeffs = _bands_torch(d, weights, levels)
    e = weights[0] * ll.square().sum(dim=(1, 2, 3))
    for j, bands in enumerate(coeffs):
        for k, band in enumerate(bands):
            e = e + weights[1 + 3 * j + k] * band.square().sum(dim=(1, 2, 3))
    return e


def _energy_and_adjoint(d, weights, levels, want_energy):
    """(E or None, W^T diag(w) W d cropped to d's size)."""
    if _uniform(weights):
        # W^T (w I) W = w I (orthonormal pyramid, zero padding cropped away): no transform needed
        e = _energy_of_d(d, weights, levels) if want_energy else None
        return e, d * weights[0]
    H, W = d.shape[-2:]
    ll, coeffs = _bands_torch(d, weights, levels)
    e = None
    if want_energy:
        e = weights[0] * ll.square().sum(dim=(1, 2, 3))
        for j, bands in enumerate(coeffs):
            for k, band in enumerate(bands):
                e = e + weights[1 + 3 * j + k] * band.square().sum(dim=(1, 2, 3))
    g = ll * weights[0]
    for j in reversed(range(levels)):
        lh, hl, hh = coeffs[j]
        g = _ihaar_torch(g, lh * weights[1 + 3 * j], hl * weights[2 + 3 * j], hh * weights[3 + 3 * j])
    return e, g[:, :, :H, :W]


def _energy_torch(pred, x_t, x0, sigma, weights, levels):
    acc = _acc_dtype(pred, x_t, x0)
    return _energy_of_d(_diff_torch(pred, x_t, x0, sigma, acc), weights, levels)


def _grads_from(g, pred, x_t, x0, sigma, need, acc):
    s = sigma.to(acc).view(-1, 1, 1, 1)
    gp = (-s * g).to(pred.dtype) if need[0] else None
    gt = g.to(x_t.dtype) if (need[1] and x_t is not None) else None
    g0 = (-g).to(x0.dtype) if need[2] else None
    gs = (-(pred.to(acc) * g)).sum(dim=(1, 2, 3)) if need[3] else None
    return gp, gt, g0, gs


def _energy_bwd_torch(grad_e, pred, x_t, x0, sigma, weights, levels, need):
    acc = _acc_dtype(pred, x_t, x0)
    d = _diff_torch(pred, x_t, x0, sigma, acc)
    _, g = _energy_and_adjoint(d, weights, levels, False)
    g = g * (2.0 * grad_e.to(acc).view(-1, 1, 1, 1))
    return _grads_from(g, pred, x_t, x0, sigma, need, acc)


def _loss_and_grads_torch(pred, x_t, x0, sigma, weighting, weights, levels, reduction, need):
    """CPU path of the fused forward: d once, energy and gradient (for upstream gradient 1)."""
    acc = _acc_dtype(pred, x_t, x0)
    N = pred.shape[0]
    d = _diff_torch(pred, x_t, x0, sigma, acc)
    e, g = _energy_and_adjoint(d, weights, levels, True)
    ge = torch.full((N,), 2.0 / N if reduction == "mean" else 2.0, dtype=acc, device=d.device)
    if weighting is not None:
        ge = ge * weighting.to(acc)
    gp, gt, g0, _ = _grads_from(g * ge.view(-1, 1, 1, 1), pred, x_t, x0, sigma, need, acc)
    return _finish(e, weighting, reduction), e, (gp, gt, g0)


def _rescale_torch_(g: torch.Tensor, go: torch.Tensor) -> torch.Tensor:
    if go.dim() == 0 and go.device.type == "cpu" and go.item() == 1.0:
        return g
    return g.mul_(go.to(g.dtype).view(-1, *([1] * (g.dim() - 1))) if go.dim() else go.to(g.dtype))


# --------------------------------------------------------------------------------------------
# torch.library registration
# --------------------------------------------------------------------------------------------
def _use_triton(x: torch.Tensor) -> bool:
    return backend.choose("wavelet_energy", x) == "triton"


@torch.library.custom_op("d4k::wavelet_energy", mutates_args=())
def _wavelet_energy_op(pred: torch.Tensor, x_t: Optional[torch.Tensor], x0: torch.Tensor, sigma: torch.Tensor,
                       weights: List[float], levels: int) -> torch.Tensor:
    if _use_triton(pred):
        return _energy_triton(pred, x_t, x0, sigma, weights, levels)
    return _energy_torch(pred, x_t, x0, sigma, weights, levels)


@_wavelet_energy_op.register_fake
def _(pred, x_t, x0, sigma, weights, levels):
    return pred.new_empty((pred.shape[0],), dtype=_acc_dtype(pred, x_t, x0))


@torch.library.custom_op("d4k::wavelet_energy_backward", mutates_args=())
def _wavelet_energy_bwd_op(grad_e: torch.Tensor, pred: torch.Tensor, x_t: Optional[torch.Tensor], x0: torch.Tensor,
                           sigma: torch.Tensor, weights: List[float], levels: int,
                           need: List[bool]) -> List[torch.Tensor]:
    fn = _energy_bwd_triton if _use_triton(pred) else _energy_bwd_torch
    outs = fn(grad_e, pred, x_t, x0, sigma, weights, levels, tuple(need))
    # custom ops cannot return None: an empty tensor stands for "not computed"
    return [o if o is not None else pred.new_empty((0,)) for o in outs]


@_wavelet_energy_bwd_op.register_fake
def _(grad_e, pred, x_t, x0, sigma, weights, levels, need):
    acc = _acc_dtype(pred, x_t, x0)
    e = pred.new_empty((0,))
    return [
        torch.empty(pred.shape, dtype=pred.dtype, device=pred.device) if need[0] else e,
        torch.empty(x_t.shape, dtype=x_t.dtype, device=pred.device) if (need[1] and x_t is not None) else e,
        torch.empty(x0.shape, dtype=x0.dtype, device=pred.device) if need[2] else e,
        pred.new_empty((pred.shape[0],), dtype=acc) if need[3] else e,
    ]


def _setup_context(ctx, inputs, output):
    pred, x_t, x0, sigma, weights, levels = inputs
    ctx.save_for_backward(pred, x_t, x0, sigma)
    ctx.weights = weights
    ctx.levels = levels


def _backward(ctx, grad_e):
    pred, x_t, x0, sigma = ctx.saved_tensors
    ni = ctx.needs_input_grad
    need = [bool(ni[0]), bool(ni[1]) and x_t is not None, bool(ni[2]), bool(ni[3])]
    if not any(need):
        return None, None, None, None, None, None
    gp, gt, g0, gs = _wavelet_energy_bwd_op(grad_e, pred, x_t, x0, sigma, ctx.weights, ctx.levels, need)
    return (gp if need[0] else None, gt if need[1] else None, g0 if need[2] else None,
            gs if need[3] else None, None, None)


_wavelet_energy_op.register_autograd(_backward, setup_context=_setup_context)


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------
def coefficient_count(shape: Sequence[int], levels: int = 1) -> int:
    """Number of Haar coefficients per sample of an (N, C, H, W) input in zero mode: the loss's
    mean denominator, ``C * (h_J*w_J + 3*sum_j h_j*w_j)`` with ``h_j = ceil(h_{j-1}/2)``."""
    C, h, w = int(shape[1]), int(shape[2]), int(shape[3])
    total = 0
    for _ in range(levels):
        h, w = -(-h // 2), -(-w // 2)
        total += 3 * h * w
    return C * (total + h * w)


def _norm_weights(band_weights, levels: int) -> List[float]:
    if band_weights is None:
        return [1.0] * (1 + 3 * levels)
    if isinstance(band_weights, torch.Tensor):
        if band_weights.requires_grad:
            raise ValueError("band_weights must be constants: got a tensor that requires grad "
                             "(gradients w.r.t. band weights are not computed)")
        vals = [float(v) for v in band_weights.detach().reshape(-1).tolist()]
    else:
        try:
            vals = [float(v) for v in band_weights]
        except TypeError:
            raise TypeError(f"band_weights must be a sequence of numbers or a tensor, got {band_weights!r}") from None
    bad = [v for v in vals if not (math.isfinite(v) and v >= 0.0)]
    if bad:
        raise ValueError(f"band_weights must be finite and >= 0 (a negative weight makes the loss unbounded "
                         f"below), got {vals!r}")
    if len(vals) == 4:
        return [vals[0]] + vals[1:] * levels
    if len(vals) == 1 + 3 * levels:
        return vals
    raise ValueError(
        f"band_weights must have 4 values (LL, LH, HL, HH) or 1 + 3*levels = {1 + 3 * levels} values "
        f"(LL_J, then LH, HL, HH per level, finest first), got {len(vals)}: {vals!r}")


def _per_sample(v: Optional[torch.Tensor], name: str, N: int, ref: torch.Tensor) -> Optional[torch.Tensor]:
    if v is None:
        return None
    if not isinstance(v, torch.Tensor):
        if isinstance(v, (int, float)):
            return torch.full((N,), float(v), dtype=torch.float32, device=ref.device)
        raise TypeError(f"{name} must be a tensor of shape (N,) or (N, 1, 1, 1) or a number, got {type(v).__name__}")
    if v.dim() == 0:
        return v.reshape(1).expand(N)
    if v.shape not in ((N,), (N, 1, 1, 1), (N, 1)):
        raise ValueError(f"{name} must have shape ({N},) or ({N}, 1, 1, 1), got {tuple(v.shape)}")
    if v.device != ref.device:
        raise ValueError(f"{name} is on {v.device} but the inputs are on {ref.device}")
    return v.reshape(N)


def _finish(loss, weighting, reduction):
    if weighting is not None:
        loss = weighting.to(loss.dtype) * loss
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


class _EnergyFn(torch.autograd.Function):
    """Eager-mode autograd wrapper around the same launchers as the custom ops: the custom-op
    dispatch costs ~100 us of host time per forward+backward, more than the kernels themselves
    at 4K latent sizes. Under torch.compile the registered ops are used instead."""

    @staticmethod
    def forward(ctx, pred, x_t, x0, sigma, weights, levels):
        ctx.save_for_backward(pred, x_t, x0, sigma)
        ctx.weights, ctx.levels = weights, levels
        if _use_triton(pred):
            return _energy_triton(pred, x_t, x0, sigma, weights, levels)
        return _energy_torch(pred, x_t, x0, sigma, weights, levels)

    @staticmethod
    def backward(ctx, grad_e):
        pred, x_t, x0, sigma = ctx.saved_tensors
        ni = ctx.needs_input_grad
        need = (bool(ni[0]), bool(ni[1]) and x_t is not None, bool(ni[2]), bool(ni[3]))
        if not any(need):
            return None, None, None, None, None, None
        fn = _energy_bwd_triton if _use_triton(pred) else _energy_bwd_torch
        gp, gt, g0, gs = fn(grad_e, pred, x_t, x0, sigma, ctx.weights, ctx.levels, need)
        return gp, gt, g0, gs, None, None


class _LossFn(torch.autograd.Function):
    """Eager path of wavelet_loss / wavelet_mse.

    Triton backend, gradients wanted (``fused``): ONE pass over the inputs computes the loss
    partials and the gradients for an upstream gradient of 1 (the loss is quadratic, so the
    gradient does not depend on the loss value); a finishing kernel forms the loss. The backward
    only rescales those gradients in place by the upstream gradient, a kernel whose every access is
    masked off when it is 1 (the usual ``loss.backward()``). Total traffic: the three inputs read
    once + the gradient written once. The gradient buffers are the gradients themselves (no other
    memory proportional to the input). A second backward through a retained graph recomputes.
    Otherwise: forward = tile kernel + finishing kernel, backward = one recomputing kernel."""

    @staticmethod
    def forward(ctx, pred, x_t, x0, sigma, weighting, weights, levels, reduction, fused):
        triton_path = _use_triton(pred)
        ctx.grads = None
        if triton_path and fused:
            ni = ctx.needs_input_grad
            need = (bool(ni[0]), bool(ni[1]) and x_t is not None, bool(ni[2]), False)
            loss, e, ctx.grads = _loss_and_grads_triton(pred, x_t, x0, sigma, weighting, weights, levels,
                                                        reduction, need)
        elif triton_path:
            loss, e = _loss_triton(pred, x_t, x0, sigma, weighting, weights, levels, reduction)
        elif fused:
            ni = ctx.needs_input_grad
            need = (bool(ni[0]), bool(ni[1]) and x_t is not None, bool(ni[2]), False)
            loss, e, ctx.grads = _loss_and_grads_torch(pred, x_t, x0, sigma, weighting, weights, levels,
                                                       reduction, need)
        else:
            e = _energy_torch(pred, x_t, x0, sigma, weights, levels)
            loss = _finish(e, weighting, reduction)
        ctx.save_for_backward(pred, x_t, x0, sigma, weighting, e)
        ctx.weights, ctx.levels, ctx.reduction, ctx.triton_path = weights, levels, reduction, triton_path
        return loss

    @staticmethod
    def backward(ctx, go):
        pred, x_t, x0, sigma, weighting, e = ctx.saved_tensors
        ni = ctx.needs_input_grad
        need = (bool(ni[0]), bool(ni[1]) and x_t is not None, bool(ni[2]), bool(ni[3]))
        N = pred.shape[0]
        scale = 1.0 / N if ctx.reduction == "mean" else 1.0
        per_sample = ctx.reduction == "none"
        gp = gt = g0 = gs = gw = None
        if ctx.grads is not None and not need[3]:
            rescale = _rescale_ if ctx.triton_path else _rescale_torch_
            gp, gt, g0 = (rescale(g, go) if g is not None else None for g in ctx.grads)
            ctx.grads = None  # handed over; a second backward (retain_graph) recomputes
        elif any(need):
            if ctx.triton_path:
                gp, gt, g0, gs = _energy_bwd_triton(go, pred, x_t, x0, sigma, ctx.weights, ctx.levels, need,
                                                    weighting=weighting, mean=ctx.reduction == "mean",
                                                    go_per_sample=per_sample)
            else:
                ge = (go.to(e.dtype) * scale).expand(N)
                if weighting is not None:
                    ge = ge * weighting.to(e.dtype)
                gp, gt, g0, gs = _energy_bwd_torch(ge, pred, x_t, x0, sigma, ctx.weights, ctx.levels, need)
        if ni[4]:
            gw = (go.to(e.dtype) * scale).expand(N) * e
        return gp, gt, g0, gs, gw, None, None, None, None


def _energy(pred, x_t, x0, sigma, weights: List[float], levels: int) -> torch.Tensor:
    N = pred.shape[0]
    s = _per_sample(sigma, "sigmas", N, pred)
    s = s.to(_acc_dtype(pred, x_t, x0)).contiguous()
    if torch.compiler.is_compiling():
        return _wavelet_energy_op(pred, x_t, x0, s, weights, levels)
    return _EnergyFn.apply(pred, x_t, x0, s, weights, levels)


def wavelet_energy(pred, x_t, x0, sigma, levels: int = 1, band_weights=None) -> torch.Tensor:
    """Per-sample weighted Haar energy ``E_n`` of ``d = x_t - sigma*pred - x0`` (``x_t`` may be None),
    differentiable. Float32 (float64 for float64 inputs). See the module docstring."""
    return _energy(pred, x_t, x0, sigma, _norm_weights(band_weights, levels), levels)


def _mean_weights(shape, levels: int, band_weights) -> List[float]:
    """The band weights divided by the coefficient count, so that the kernel's per-sample sum is
    already the per-sample mean."""
    count = coefficient_count(shape, levels)
    return [w / count for w in _norm_weights(band_weights, levels)]


def _loss(pred, x_t, x0, sigma, weighting, levels, band_weights, reduction) -> torch.Tensor:
    weights = _mean_weights(pred.shape, levels, band_weights)
    if torch.compiler.is_compiling():  # registered ops + torch finishing: traceable
        return _finish(_energy(pred, x_t, x0, sigma, weights, levels), weighting, reduction)
    N = pred.shape[0]
    acc = _acc_dtype(pred, x_t, x0)
    # both paths read sigma / weighting in their own dtype and convert on use (the kernels in
    # registers): no cast launch on the host, which costs more host time than this whole op's GPU time
    # at 4K latent sizes; tensors that need a gradient are converted so theirs comes back in acc
    s = _per_sample(sigma, "sigmas", N, pred)
    s = (s.to(acc) if s.requires_grad else s).contiguous()
    w = (weighting.to(acc) if weighting.requires_grad else weighting).contiguous() if weighting is not None else None
    # forward + gradient in one pass when a gradient will be wanted and sigma needs none
    fused = (torch.is_grad_enabled() and not s.requires_grad
             and any(t is not None and t.requires_grad for t in (pred, x_t, x0)))
    return _LossFn.apply(pred, x_t, x0, s, w, weights, levels, reduction, fused)


def _loss_and_grad(pred, x_t, x0, sigma, weighting, levels, band_weights, reduction):
    """(loss, d loss / d pred) without an autograd graph: the fused pass and the finishing kernel
    (Triton), nothing else; the registered ops under torch.compile."""
    weights = _mean_weights(pred.shape, levels, band_weights)
    N = pred.shape[0]
    acc = _acc_dtype(pred, x_t, x0)
    s = _per_sample(sigma, "sigmas", N, pred)
    with torch.no_grad():
        if torch.compiler.is_compiling():
            s = s.to(acc).contiguous()
            e = _wavelet_energy_op(pred, x_t, x0, s, weights, levels)
            ge = torch.full((N,), 1.0 / N if reduction == "mean" else 1.0, dtype=acc, device=pred.device)
            if weighting is not None:
                ge = ge * weighting.to(acc)
            gp = _wavelet_energy_bwd_op(ge, pred, x_t, x0, s, weights, levels, [True, False, False, False])[0]
            return _finish(e, weighting, reduction), gp
        s = s.contiguous()
        w = weighting.contiguous() if weighting is not None else None
        fn = _loss_and_grads_triton if _use_triton(pred) else _loss_and_grads_torch
        loss, _, (gp, _, _) = fn(pred, x_t, x0, s, w, weights, levels, reduction, (True, False, False, False))
    return loss, gp


def _check_common(x, name, levels, reduction):
    check_int(levels, "levels", lo=1, hi=MAX_LEVELS)
    check_choice(reduction, "reduction", _REDUCTIONS)
    if x.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)}): the mean over coefficients is undefined")


def _check_loss_inputs(model_pred, noisy_latents, latents, sigmas, weighting, levels, reduction):
    """The checks of wavelet_loss / wavelet_loss_and_grad; returns the per-sample weighting (or None)."""
    check_tensor(model_pred, "model_pred", dtypes=_DTYPES, ndim=4)
    check_tensor(noisy_latents, "noisy_latents", dtypes=_DTYPES, ndim=4)
    check_tensor(latents, "latents", dtypes=_DTYPES, ndim=4)
    check_same([model_pred, noisy_latents, latents], ["model_pred", "noisy_latents", "latents"])
    _check_common(model_pred, "model_pred", levels, reduction)
    if sigmas is None:
        raise TypeError("sigmas must be given (shape (N,) or (N, 1, 1, 1))")
    return _per_sample(weighting, "weighting", model_pred.shape[0], model_pred)


def wavelet_loss(model_pred: torch.Tensor, noisy_latents: torch.Tensor, latents: torch.Tensor, sigmas,
                 weighting=None, levels: int = 1, band_weights=None, reduction: str = "mean") -> torch.Tensor:
    """Diffusion-4K's wavelet flow-matching loss, fused.

    Args:
        model_pred: transformer output (N, C, H, W) (unpacked), the predicted velocity.
        noisy_latents: x_t = (1 - sigma) * x0 + sigma * noise, (N, C, H, W).
        latents: clean latents x0, (N, C, H, W).
        sigmas: per-sample sigma, shape (N,) or (N, 1, 1, 1) (or a number).
        weighting: None or per-sample loss weights (N,) / (N, 1, 1, 1) (diffusers'
            ``compute_loss_weighting_for_sd3``).
        levels: Haar levels J (1..5), zero mode.
        band_weights: None, 4 values (LL, LH, HL, HH) or 1 + 3*J values; see the module docstring.
        reduction: "mean" (default, the script), "sum" or "none" (per-sample, shape (N,)).

    With the defaults this equals the Diffusion-4K Flux/SD3 script's loss
    ``mean_n(mean(weighting * (cat(DWT(model_pred*(-sigma) + x_t)) - cat(DWT(x0)))**2))``.
    Inputs may be float32 / bfloat16 / float16 (float64 too), mixed and non-contiguous; the math is
    done in float32 (float64 for float64 inputs) and the loss is returned in that dtype. Gradients
    flow to every input that requires grad (model_pred, noisy_latents, latents, sigmas, weighting).
    """
    w = _check_loss_inputs(model_pred, noisy_latents, latents, sigmas, weighting, levels, reduction)
    return _loss(model_pred, noisy_latents, latents, sigmas, w, levels, band_weights, reduction)


def wavelet_loss_and_grad(model_pred: torch.Tensor, noisy_latents: torch.Tensor, latents: torch.Tensor, sigmas,
                          weighting=None, levels: int = 1, band_weights=None,
                          reduction: str = "mean") -> Tuple[torch.Tensor, torch.Tensor]:
    """:func:`wavelet_loss` and its gradient with respect to ``model_pred``, without autograd:
    ``(loss, grad)``, ``grad`` shaped and typed like ``model_pred`` (contiguous). Same arguments
    and loss as :func:`wavelet_loss`.

    One fused pass over the three inputs plus the finishing kernel, nothing else: autograd's
    ``loss.backward()`` adds the upstream-gradient fill and the rescaling launch (a few µs each on a
    GPU, more in host time). For a training loop that owns its backward::

        loss, grad = d4k_kernels.wavelet_loss_and_grad(model_pred.detach(), noisy_latents, latents, sigmas, w)
        model_pred.backward(grad)      # the same gradients as wavelet_loss(...).backward()

    The loss comes back detached. Use :func:`wavelet_loss` when gradients must also reach
    ``noisy_latents``, ``latents``, ``sigmas`` or ``weighting``, or when something scales the loss
    before its backward (fp16 loss scaling: scale ``grad`` the same way).
    """
    w = _check_loss_inputs(model_pred, noisy_latents, latents, sigmas, weighting, levels, reduction)
    if w is not None:
        w = w.detach()
    sig = sigmas.detach() if isinstance(sigmas, torch.Tensor) else sigmas
    return _loss_and_grad(model_pred.detach(), noisy_latents.detach(), latents.detach(), sig, w, levels,
                          band_weights, reduction)


def wavelet_mse(pred: torch.Tensor, target: torch.Tensor, levels: int = 1, band_weights=None, weighting=None,
                reduction: str = "mean") -> torch.Tensor:
    """Weighted multi-level Haar-domain MSE between ``pred`` and ``target`` (N, C, H, W):
    ``mean over coefficients of band_weight * (DWT(pred) - DWT(target))**2`` per sample, times the
    optional per-sample ``weighting``, then ``reduction`` over the batch (see the module docstring).
    """
    check_tensor(pred, "pred", dtypes=_DTYPES, ndim=4)
    check_tensor(target, "target", dtypes=_DTYPES, ndim=4)
    check_same([pred, target], ["pred", "target"])
    _check_common(pred, "pred", levels, reduction)
    N = pred.shape[0]
    w = _per_sample(weighting, "weighting", N, pred)
    sigma = torch.full((N,), -1.0, dtype=_acc_dtype(pred, target), device=pred.device)
    return _loss(pred, None, target, sigma, w, levels, band_weights, reduction)
