"""The VAE decoder tail, fused: GroupNorm apply + SiLU + nearest x2 + conv3x3 (+ bias), polyphase.

    y = upconv_tail(x, mean, rstd, gn_weight, gn_bias, conv_weight, conv_bias, num_groups, partitioned=True)

x is the LOW-resolution tensor (N, C, H, W); y is (N, Cout, 2H, 2W). With a = silu(group_norm_apply(x)) and
u = nearest_up2(a) (SiLU commutes with nearest up-sampling):

* ``partitioned=False`` - the plain tail: ``y = conv2d(u, conv_weight, conv_bias, padding=1)``.
* ``partitioned=True`` - SC-VAE's released tail (docs/ops.md, SC-VAE and exact tiled decoding):
  ``y = conv2d(F.pad(u, (2, 0, 2, 0)), conv_weight, conv_bias)`` (valid conv), i.e. the plain tail shifted
  one output pixel down and right, zeros entering from the top / left.

Polyphase identity (no up-sampled intermediate): output row ``2m + p`` reads up-sampled rows
``2m + p + a - s`` (tap a = 0, 1, 2; s = 1 plain, 2 partitioned), i.e. low-res rows ``m + (p + a - s) // 2``.
So each output parity (p, q) is a 2x2 conv of ``a`` with summed ("folded") taps, and all four parities
together are ONE small conv of ``a`` to 4*Cout channels followed by ``pixel_shuffle(2)``:
a 3x3 conv (low-res offsets -1, 0, +1) for the plain tail, a 2x2 conv (offsets -1, 0) for the partitioned
one. The folded weights (4*Cout, C, D, D), D = 3 or 2, are computed on the host in fp32 (float64 for
float64 inputs) by :func:`fold_weights`.

The Triton kernel: one program owns a strip of ROWS low-res rows x BW columns of one sample and BN of the
4*Cout folded output channels. It walks the input rows of its strip top to bottom (plus the halo row
above and, plain tail, below); for each input row and block of BC channels it loads [BW, BC] tiles,
applies GroupNorm (precomputed per-channel scale / shift) and SiLU in fp32, zeroes what lies outside the
image (the conv's zero padding is on the activated tensor), and ``tl.dot``s them with the folded weights
into D loop-carried accumulators, one per output row the input row feeds; when an output row is complete
it adds the bias and stores it straight into its (2 rows x 2 columns) positions of y. Nothing of the size
of u is ever materialised; accumulation is fp32. Two variants, picked by the autotuner on a GPU:

* ``SHIFT=False``: the D column-shifted tiles are loaded and activated separately (every input element is
  activated D times), one [BW, BN] accumulator per pending output row;
* ``SHIFT=True``: every element is activated once; one dot per (channel block, dy) computes the D column
  offsets side by side ([BW, DP*BN]); a finished row's partial sums go through a per-program fp32 scratch
  slot and are read back shifted by dx and summed (BW - (D-1) output columns per program).

For bf16/fp16 inputs the dot operands are in the input dtype (GroupNorm output and activation each rounded to
it, as torch's bf16 tail does); for fp32 inputs the dot runs in full fp32 (``input_precision="ieee"``, no TF32). Any strides
(non-contiguous x is read in place). 64-bit scalar bases; per-element offsets are int32 unless an in-tile
offset could reach 2^31 (then the INT64 variant).

Tiles (exact tiled decoding): everything outside ``x`` is treated as zero ACTIVATION, i.e. as the image
border. For a halo tile ``x[..., h0:h1, w0:w1]`` of the whole low-res tensor whose core is rows
``[c0, c1)`` and columns ``[d0, d1)``, call upconv_tail with the statistics (mean/rstd) of the WHOLE tensor
and keep ``y[..., 2*(c0-h0):2*(c1-h0), 2*(d0-w0):2*(d1-w0)]``. This equals the same window of the untiled
output when the tile has a halo of at least 1 low-res pixel on every side where it does not touch the
image border; the partitioned tail reads only rows/columns m-1 and m, so it needs the halo only above
and to the left.

Dispatch: backend.choose("upconv_tail", x): CUDA -> Triton kernel (bf16 / fp16 / fp32); CPU -> torch path (GN apply +
SiLU + conv2d with the folded weights + pixel_shuffle), which also runs float64 inputs exactly (float64
inputs always take the torch path). Autograd: decoding is inference; the Triton kernel has no backward.
When a gradient is needed (grad mode on and an input requires grad) the differentiable torch path runs.
"""
from __future__ import annotations

import weakref
from typing import Optional

import torch
import torch.nn.functional as F

from .. import backend
from .._util import cdiv as _cdiv
from .._checks import check_int, check_tensor
from .groupnorm import X_DTYPES, channel_scale_shift, check_affine, check_groups, check_stats, \
    group_norm_apply_torch, needs_grad

if backend.HAS_TRITON:
    import triton
    import triton.language as tl
else:  # pragma: no cover - triton-less installs run the torch path
    triton = tl = None

__all__ = ["upconv_tail", "fold_weights"]


def fold_weights(conv_weight: torch.Tensor, partitioned: bool, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The polyphase weights (4*Cout, C, D, D) of nearest-x2-then-conv3x3, D = 2 (partitioned) or 3 (plain).

    Output channel ``co * 4 + p * 2 + q`` is parity (p, q) of channel co (the order of ``pixel_shuffle(2)``);
    spatial index d of the folded kernel is the low-res offset ``d - 1``. Summed in ``dtype``.
    """
    s = 2 if partitioned else 1
    D = 2 if partitioned else 3
    Cout, C = conv_weight.shape[:2]
    A = torch.zeros(2, D, 3, dtype=dtype, device=conv_weight.device)
    for p in range(2):
        for a in range(3):
            A[p, (p + a - s) // 2 + 1, a] = 1.0
    wf = torch.einsum("pda,qeb,ocab->opqcde", A, A, conv_weight.to(dtype))
    return wf.reshape(4 * Cout, C, D, D)


# --------------------------------------------------------------------------------------------------
# Triton kernel
# --------------------------------------------------------------------------------------------------
if triton is not None:

    @triton.jit
    def _dot(v, w, acc, IEEE: tl.constexpr):
        """acc + v @ w; fp32 operands in IEEE precision (no tf32)."""
        if IEEE:
            return tl.dot(v, w, acc, input_precision="ieee")
        else:
            return tl.dot(v, w, acc)

    @triton.jit
    def _activate(v, a, b, m, x_ptr, w_ptr):
        """GroupNorm apply (per-channel scale a, shift b) + SiLU on a [BW, BC] block, zero outside ``m``;
        as torch's tail in the input dtype computes it: GroupNorm rounded to the input dtype, SiLU in
        fp32 as x / (1 + exp(-x)), rounded again; then to the dot operand dtype."""
        v = (v.to(tl.float32) * a[None, :] + b[None, :]).to(x_ptr.dtype.element_ty).to(tl.float32)
        v = v / (1.0 + tl.exp(-v))
        return tl.where(m, v, 0.0).to(x_ptr.dtype.element_ty).to(w_ptr.dtype.element_ty)

    @triton.jit
    def _recompute_body(
        x_ptr, w_ptr, bias_ptr, scale_ptr, shift_ptr, y_ptr,
        C, H, W, NCOL, KC, NPAD, ROWS,
        sxn, sxc, sxh, sxw,
        syn, syc, syh, syw,
        D: tl.constexpr, HAS_BIAS: tl.constexpr, IEEE: tl.constexpr, INT64: tl.constexpr,
        BW: tl.constexpr, BC: tl.constexpr, BN: tl.constexpr,
    ):
        # SHIFT=False: the D column-shifted tiles are loaded and activated separately (each input element is
        # activated D times); one [BW, BN] accumulator per pending output row.
        pid_w = tl.program_id(0)
        pid_h = tl.program_id(1)
        pid_z = tl.program_id(2)
        n_nb = tl.cdiv(NCOL, BN)
        n = pid_z // n_nb
        nb = pid_z % n_nb
        cols = pid_w * BW + tl.arange(0, BW)          # low-res columns of this strip
        jl = tl.arange(0, BN)
        j = nb * BN + jl                              # folded output channel co*4 + p*2 + q
        m0 = pid_h * ROWS
        # 64-bit scalar bases; per-element offsets stay int32 unless INT64 (the host decides)
        x_base = x_ptr + n.to(tl.int64) * sxn
        y_base = y_ptr + n.to(tl.int64) * syn + (nb * (BN // 4)).to(tl.int64) * syc
        kc = tl.arange(0, BC)
        if INT64:
            kc_off = kc.to(tl.int64) * sxc
            y_col = (jl // 4).to(tl.int64) * syc + ((j // 2) % 2).to(tl.int64) * syh
            y_el = (2 * cols[:, None] + (j % 2)[None, :]).to(tl.int64) * syw + y_col[None, :]
        else:
            kc_off = kc * sxc
            y_col = (jl // 4) * syc + ((j // 2) % 2) * syh
            y_el = (2 * cols[:, None] + (j % 2)[None, :]) * syw + y_col[None, :]
        smask_c = (j < NCOL)[None, :]
        if HAS_BIAS:
            bv = tl.load(bias_ptr + j // 4, mask=j < NCOL, other=0.0)
        acc0 = tl.zeros((BW, BN), dtype=tl.float32)   # output row r - (D - 2)
        acc1 = tl.zeros((BW, BN), dtype=tl.float32)   # the next output row
        acc2 = tl.zeros((BW, BN), dtype=tl.float32)   # the one after (plain tail only)
        for it in range(ROWS + D - 1):
            r = m0 - 1 + it                           # input (low-res) row
            rv = cols * 0 + r                         # r as a [BW] vector (a scalar mask breaks the interpreter)
            row_ok = (rv >= 0) & (rv < H)
            x_row = x_base + r.to(tl.int64) * sxh
            x_blk = x_row                             # advanced by BC channels per step (64-bit pointer)
            w_blk = w_ptr + kc[:, None] * NPAD + j[None, :]
            for c0 in range(0, C, BC):
                cc = c0 + kc
                cmask = cc < C
                a = tl.load(scale_ptr + n * C + cc, mask=cmask, other=0.0)
                b = tl.load(shift_ptr + n * C + cc, mask=cmask, other=0.0)
                for dxi in tl.static_range(D):
                    xc = cols + (dxi - 1)
                    m = ((xc >= 0) & (xc < W) & row_ok)[:, None] & cmask[None, :]
                    if INT64:
                        v = tl.load(x_blk + xc.to(tl.int64)[:, None] * sxw + kc_off[None, :], mask=m, other=0.0)
                    else:
                        v = tl.load(x_blk + (xc * sxw)[:, None] + kc_off[None, :], mask=m, other=0.0)
                    v = _activate(v, a, b, m, x_ptr, w_ptr)
                    if D == 3:
                        w_a = tl.load(w_blk + (0 * D + dxi) * KC * NPAD)   # dy = -1: feeds output row r + 1
                        w_b = tl.load(w_blk + (1 * D + dxi) * KC * NPAD)   # dy =  0: output row r
                        w_c = tl.load(w_blk + (2 * D + dxi) * KC * NPAD)   # dy = +1: output row r - 1
                        acc2 = _dot(v, w_a, acc2, IEEE)
                        acc1 = _dot(v, w_b, acc1, IEEE)
                        acc0 = _dot(v, w_c, acc0, IEEE)
                    else:
                        w_a = tl.load(w_blk + (0 * D + dxi) * KC * NPAD)   # dy = -1: output row r + 1
                        w_b = tl.load(w_blk + (1 * D + dxi) * KC * NPAD)   # dy =  0: output row r
                        acc1 = _dot(v, w_a, acc1, IEEE)
                        acc0 = _dot(v, w_b, acc0, IEEE)
                x_blk += BC * sxc
                w_blk += BC * NPAD
            # output row `orow` is complete: add the bias and store its 2 x 2 blocks
            orow = r - (D - 2)
            out = acc0
            if HAS_BIAS:
                out = out + bv[None, :]
            ov = cols * 0 + orow
            orow_ok = (ov >= m0) & (ov < m0 + ROWS) & (ov < H) & (ov >= 0)
            smask = ((cols < W) & orow_ok)[:, None] & smask_c
            tl.store(y_base + (2 * orow).to(tl.int64) * syh + y_el, out.to(y_ptr.dtype.element_ty), mask=smask)
            if D == 3:
                acc0 = acc1
                acc1 = acc2
                acc2 = tl.zeros((BW, BN), dtype=tl.float32)
            else:
                acc0 = acc1
                acc1 = tl.zeros((BW, BN), dtype=tl.float32)

    @triton.jit
    def _shift_body(
        x_ptr, w_ptr, bias_ptr, scale_ptr, shift_ptr, y_ptr, s_ptr,
        C, H, W, NCOL, KC, NPAD, ROWS,
        sxn, sxc, sxh, sxw,
        syn, syc, syh, syw,
        D: tl.constexpr, HAS_BIAS: tl.constexpr, IEEE: tl.constexpr, INT64: tl.constexpr,
        BW: tl.constexpr, BC: tl.constexpr, BN: tl.constexpr, DP: tl.constexpr,
    ):
        # SHIFT=True: each input element is activated ONCE. The program activates BW columns
        # [w0 - 1, w0 - 1 + BW) and produces BW - (D - 1) output columns. One dot per (channel block, dy)
        # computes the D column offsets side by side ([BW, DP*BN], dx-major); when an output row is
        # complete, its accumulator goes through a per-program scratch slot and is read back shifted
        # (column i + dx of block dx), summed, and stored.
        pid_w = tl.program_id(0)
        pid_h = tl.program_id(1)
        pid_z = tl.program_id(2)
        n_nb = tl.cdiv(NCOL, BN)
        n = pid_z // n_nb
        nb = pid_z % n_nb
        OW = BW - (D - 1)
        w0 = pid_w * OW
        ii = tl.arange(0, BW)
        cols = w0 - 1 + ii                            # activated low-res columns
        ocols = w0 + ii                               # output (low-res) columns, valid for ii < OW
        jl = tl.arange(0, BN)
        j = nb * BN + jl
        tt = tl.arange(0, DP * BN)                    # (dx block, folded channel) side by side
        t_dx = tt // BN
        t_j = nb * BN + tt % BN
        m0 = pid_h * ROWS
        x_base = x_ptr + n.to(tl.int64) * sxn
        y_base = y_ptr + n.to(tl.int64) * syn + (nb * (BN // 4)).to(tl.int64) * syc
        pid_lin = (pid_z * tl.num_programs(1) + pid_h) * tl.num_programs(0) + pid_w
        s_base = s_ptr + pid_lin.to(tl.int64) * (BW * DP * BN)
        s_st = ii[:, None] * (DP * BN) + tt[None, :]
        kc = tl.arange(0, BC)
        if INT64:
            kc_off = kc.to(tl.int64) * sxc
            x_col = cols.to(tl.int64) * sxw
            y_col = (jl // 4).to(tl.int64) * syc + ((j // 2) % 2).to(tl.int64) * syh
            y_el = (2 * ocols[:, None] + (j % 2)[None, :]).to(tl.int64) * syw + y_col[None, :]
        else:
            kc_off = kc * sxc
            x_col = cols * sxw
            y_col = (jl // 4) * syc + ((j // 2) % 2) * syh
            y_el = (2 * ocols[:, None] + (j % 2)[None, :]) * syw + y_col[None, :]
        w_off = kc[:, None] * NPAD + (t_dx * KC * NPAD + t_j)[None, :]   # [BC, DP*BN] inside one dy slab
        w_msk = (kc >= 0)[:, None] & (t_dx < D)[None, :]
        col_ok = (cols >= 0) & (cols < W)
        smask_c = (j < NCOL)[None, :]
        if HAS_BIAS:
            bv = tl.load(bias_ptr + j // 4, mask=j < NCOL, other=0.0)
        acc0 = tl.zeros((BW, DP * BN), dtype=tl.float32)
        acc1 = tl.zeros((BW, DP * BN), dtype=tl.float32)
        acc2 = tl.zeros((BW, DP * BN), dtype=tl.float32)
        for it in range(ROWS + D - 1):
            r = m0 - 1 + it
            rv = cols * 0 + r
            m_row = col_ok & (rv >= 0) & (rv < H)
            x_blk = x_base + r.to(tl.int64) * sxh
            w_blk = w_ptr + w_off
            for c0 in range(0, C, BC):
                cc = c0 + kc
                cmask = cc < C
                a = tl.load(scale_ptr + n * C + cc, mask=cmask, other=0.0)
                b = tl.load(shift_ptr + n * C + cc, mask=cmask, other=0.0)
                m = m_row[:, None] & cmask[None, :]
                v = tl.load(x_blk + x_col[:, None] + kc_off[None, :], mask=m, other=0.0)
                v = _activate(v, a, b, m, x_ptr, w_ptr)
                w_a = tl.load(w_blk, mask=w_msk, other=0.0)                      # dy = -1: output row r + 1
                w_b = tl.load(w_blk + D * KC * NPAD, mask=w_msk, other=0.0)      # dy =  0: output row r
                if D == 3:
                    w_c = tl.load(w_blk + 2 * D * KC * NPAD, mask=w_msk, other=0.0)  # dy = +1: row r - 1
                    acc2 = _dot(v, w_a, acc2, IEEE)
                    acc1 = _dot(v, w_b, acc1, IEEE)
                    acc0 = _dot(v, w_c, acc0, IEEE)
                else:
                    acc1 = _dot(v, w_a, acc1, IEEE)
                    acc0 = _dot(v, w_b, acc0, IEEE)
                x_blk += BC * sxc
                w_blk += BC * NPAD
            # output row `orow` is complete in acc0: shift-add the D column blocks through the scratch slot
            orow = r - (D - 2)
            tl.store(s_base + s_st, acc0)
            tl.debug_barrier()
            out = tl.zeros((BW, BN), dtype=tl.float32)
            for dxi in tl.static_range(D):
                src = ii + dxi
                out += tl.load(s_base + src[:, None] * (DP * BN) + (dxi * BN + jl)[None, :],
                               mask=(src < BW)[:, None], other=0.0, cache_modifier=".cg")
            tl.debug_barrier()
            if HAS_BIAS:
                out = out + bv[None, :]
            ov = ii * 0 + orow
            o_ok = (ii < OW) & (ocols < W) & (ov >= m0) & (ov < m0 + ROWS) & (ov < H) & (ov >= 0)
            tl.store(y_base + (2 * orow).to(tl.int64) * syh + y_el, out.to(y_ptr.dtype.element_ty),
                     mask=o_ok[:, None] & smask_c)
            if D == 3:
                acc0 = acc1
                acc1 = acc2
                acc2 = tl.zeros((BW, DP * BN), dtype=tl.float32)
            else:
                acc0 = acc1
                acc1 = tl.zeros((BW, DP * BN), dtype=tl.float32)

    # shapes are not specialised (no recompilation per tile size); strides are (contiguity, alignment)
    @triton.jit(do_not_specialize=["C", "H", "W", "NCOL", "ROWS"])
    def _upconv_kernel(
        x_ptr, w_ptr, bias_ptr, scale_ptr, shift_ptr, y_ptr, s_ptr,
        C, H, W, NCOL, KC, NPAD, ROWS,
        sxn, sxc, sxh, sxw,
        syn, syc, syh, syw,
        D: tl.constexpr, HAS_BIAS: tl.constexpr, IEEE: tl.constexpr, INT64: tl.constexpr,
        BW: tl.constexpr, BC: tl.constexpr, BN: tl.constexpr, SHIFT: tl.constexpr, DP: tl.constexpr,
    ):
        if SHIFT:
            _shift_body(x_ptr, w_ptr, bias_ptr, scale_ptr, shift_ptr, y_ptr, s_ptr, C, H, W, NCOL, KC, NPAD, ROWS,
                        sxn, sxc, sxh, sxw, syn, syc, syh, syw, D, HAS_BIAS, IEEE, INT64, BW, BC, BN, DP)
        else:
            _recompute_body(x_ptr, w_ptr, bias_ptr, scale_ptr, shift_ptr, y_ptr, C, H, W, NCOL, KC, NPAD, ROWS,
                            sxn, sxc, sxh, sxw, syn, syc, syh, syw, D, HAS_BIAS, IEEE, INT64, BW, BC, BN)


# Tile sizes used under the Triton interpreter (no autotuning there); tests override them to exercise several
# column / row strips and channel blocks on tiny tensors. ROWS=None: one strip of all rows.
_INTERP_CFG = {"BW": 16, "BC": 16, "BN": None, "ROWS": None, "INT64": False, "SHIFT": True}

_KPAD = 64  # weights are padded to a multiple of 64 channels and 64 folded outputs (any BC, BN <= 64 fits)


def _gpu_configs():
    """(BW, BC, BN, warps, stages, SHIFT). Register use checked with ptxas for sm_90 (bf16, C=128): no spills
    for the BN=16 ones (SHIFT needs 8 warps to stay below ~170 registers); the autotuner picks per shape."""
    table = (
        (64, 32, 16, 8, 2, True), (128, 32, 16, 8, 2, True), (64, 32, 32, 8, 2, True),
        (64, 32, 16, 4, 2, False), (128, 32, 16, 4, 2, False), (64, 64, 16, 4, 2, False),
        (64, 32, 32, 4, 2, False), (64, 32, 64, 4, 2, False), (128, 32, 64, 8, 2, False),
    )
    return [triton.Config({"BW": bw, "BC": bc, "BN": bn, "SHIFT": sh}, num_warps=nw, num_stages=ns)
            for bw, bc, bn, nw, ns, sh in table]


def _prune(configs, named_args, **kwargs):
    ncol, c = named_args["NCOL"], named_args["C"]
    ieee = kwargs.get("IEEE", named_args.get("IEEE", False))
    d = kwargs.get("D", named_args.get("D", 2))
    out = []
    for cfg in configs:
        bn, bc, bw, sh = cfg.kwargs["BN"], cfg.kwargs["BC"], cfg.kwargs["BW"], cfg.kwargs["SHIFT"]
        if bn > 16 and bn // 2 >= ncol:      # a narrower BN already covers every output channel
            continue
        if bc > 32 and c <= 32:
            continue
        if ieee and (bc > 32 or bn > 32 or bw > 64):  # fp32 operands: keep shared memory small
            continue
        if sh and bn * (2 if d == 2 else 4) > 64 and bw > 64:  # SHIFT widens the dot to DP*BN columns
            continue
        out.append(cfg)
    return out or configs[:1]


if triton is not None:
    _CFG_SHAPES = [(c.kwargs["BW"], c.kwargs["BN"], c.kwargs["SHIFT"]) for c in _gpu_configs()]
    _upconv_kernel_tuned = triton.autotune(
        configs=_gpu_configs(), key=["C", "NCOL", "D", "IEEE", "INT64"],
        prune_configs_by={"early_config_prune": _prune},
    )(_upconv_kernel)


_SMALL_PIXELS = 4096                 # N*H*W at or below which the GPU launch skips autotuning
_SMALL_CFG = (64, 32, 16, 8, True)   # BW, BC, BN (32 when 4*Cout > 16), warps, SHIFT


def _use_tuned(x: torch.Tensor) -> bool:
    """Launch through the autotuner (GPU). Tests patch this to check the GPU launcher under the interpreter."""
    return x.device.type == "cuda"


def _rows_for(H, W, bw, n_z):
    rows = 16
    while rows > 2 and _cdiv(H, rows) * _cdiv(W, bw) * n_z < 2048:
        rows //= 2
    return rows


_WCACHE: dict = {}  # id(weight) -> (weakref to the weight, {key: folded weights})


def _kernel_weights(conv_weight, partitioned, xdt, wdt, KC, NPAD):
    """Folded weights as the kernel reads them: (D, D, KC, NPAD), rounded to x's dtype, stored as ``wdt``.

    Cached per weight tensor (weakly; invalidated by in-place changes through the tensor's version
    counter), so a decoder calling the tail per tile folds its conv weights once."""
    Cout, C = conv_weight.shape[:2]
    D = 2 if partitioned else 3
    key = (conv_weight._version, partitioned, xdt, wdt, KC, NPAD, conv_weight.device)
    wid = id(conv_weight)
    ent = _WCACHE.get(wid)
    if ent is not None and ent[0]() is conv_weight:
        per = ent[1]
    else:
        per = {}
        try:
            ref = weakref.ref(conv_weight, lambda _r, wid=wid: _WCACHE.pop(wid, None))
            _WCACHE[wid] = (ref, per)
        except TypeError:  # not weak-referenceable: no caching
            pass
    wk = per.get(key)
    if wk is None:
        wf = fold_weights(conv_weight.detach(), partitioned, torch.float32)  # (4*Cout, C, D, D)
        wk = torch.zeros((D, D, KC, NPAD), dtype=torch.float32, device=conv_weight.device)
        wk[:, :, :C, :4 * Cout] = wf.permute(2, 3, 1, 0)
        wk = wk.to(xdt).to(wdt).contiguous()
        per.clear()  # keep only the latest version / variant per tensor
        per[key] = wk
    return wk


def _upconv_triton(x, scale, shift, conv_weight, conv_bias, partitioned):
    N, C, H, W = x.shape
    Cout = conv_weight.shape[0]
    D = 2 if partitioned else 3
    y = torch.empty((N, Cout, 2 * H, 2 * W), dtype=x.dtype, device=x.device)
    if y.numel() == 0:
        return y
    on_gpu = x.device.type == "cuda"
    ieee = x.dtype == torch.float32
    ncol = 4 * Cout
    KC = _cdiv(C, _KPAD) * _KPAD
    NPAD = _cdiv(ncol, _KPAD) * _KPAD
    # dot operands: the input dtype for bf16/fp16 on a GPU; fp32 under the interpreter (its 16-bit tl.dot is
    # wrong), with the weights rounded to the input dtype first so that it computes what the GPU computes
    wdt = torch.float32 if (ieee or not on_gpu) else x.dtype
    wk = _kernel_weights(conv_weight, partitioned, x.dtype, wdt, KC, NPAD)
    bias = conv_bias.to(torch.float32).contiguous() if conv_bias is not None else scale  # dummy ptr when absent
    # int32 per-element offsets are safe when every in-tile offset stays below 2^31
    # (in-tile offsets: < 64 channels * sxc, (W + 1) * sxw, < 16 output channels * 4HW, 2W + 2)
    lim = 2**31 - 1
    sxn, sxc, sxh, sxw = (abs(v) for v in x.stride())
    big = 64 * sxc >= lim or (W + 2) * sxw >= lim or 16 * y.stride(1) >= lim or 2 * W + 2 >= lim
    if not _use_tuned(x) and _INTERP_CFG["INT64"]:
        big = True
    DP = 2 if D == 2 else 4
    const = dict(D=D, HAS_BIAS=conv_bias is not None, IEEE=ieee, INT64=bool(big), DP=DP)

    def grid_of(bw, bn, rows, shift_mode):
        ow = bw - (D - 1) if shift_mode else bw
        return (_cdiv(W, ow), _cdiv(H, rows), N * _cdiv(ncol, bn))

    def scratch_for(cfgs, rows):  # one [BW, DP*BN] fp32 slot per program of the SHIFT variant
        size = 1
        for bw, bn, sh in cfgs:
            if sh:
                g0, g1, g2 = grid_of(bw, bn, rows, True)
                size = max(size, bw * DP * bn * g0 * g1 * g2)
        return torch.empty(size, dtype=torch.float32, device=x.device)

    if _use_tuned(x):
        rows = _rows_for(H, W, 64, N * _cdiv(ncol, 16))
        if _cdiv(H, rows) > 65535 or N * _cdiv(ncol, 16) > 65535:
            raise ValueError(f"upconv_tail: grid too large for x of shape {tuple(x.shape)} and Cout={Cout}")
        if N * H * W <= _SMALL_PIXELS:
            # small problems (tests, tiny tiles): one fixed config, no autotuning (each tuning compiles and
            # times every config; not worth it below a few thousand low-res pixels)
            bw, bc, bn, nw, sh = _SMALL_CFG
            bn = bn if ncol <= bn else 32
            scratch = scratch_for([(bw, bn, sh)], rows)
            _upconv_kernel[grid_of(bw, bn, rows, sh)](
                x, wk, bias, scale, shift, y, scratch, C, H, W, ncol, KC, NPAD, rows, *x.stride(), *y.stride(),
                **const, BW=bw, BC=bc, BN=bn, SHIFT=sh, num_warps=nw, num_stages=2)
            return y
        scratch = scratch_for(_CFG_SHAPES, rows)

        def grid(meta):
            return grid_of(meta["BW"], meta["BN"], meta["ROWS"], meta["SHIFT"])

        _upconv_kernel_tuned[grid](x, wk, bias, scale, shift, y, scratch, C, H, W, ncol, KC, NPAD, rows,
                                   *x.stride(), *y.stride(), **const)
    else:
        BW, BC = _INTERP_CFG["BW"], _INTERP_CFG["BC"]
        BN = _INTERP_CFG["BN"] or (16 if ncol <= 16 else 32)
        shift_mode = _INTERP_CFG["SHIFT"]
        rows = _INTERP_CFG["ROWS"] or max(1, H)  # fewest programs under the interpreter
        scratch = scratch_for([(BW, BN, shift_mode)], rows)
        _upconv_kernel[grid_of(BW, BN, rows, shift_mode)](
            x, wk, bias, scale, shift, y, scratch, C, H, W, ncol, KC, NPAD, rows, *x.stride(), *y.stride(),
            **const, BW=BW, BC=BC, BN=BN, SHIFT=shift_mode)
    return y


def _upconv_torch(x, mean, rstd, gn_weight, gn_bias, conv_weight, conv_bias, num_groups, partitioned):
    """GN apply + SiLU, then conv2d with the folded weights + pixel_shuffle (differentiable; float64 exact)."""
    cdt = torch.float64 if x.dtype == torch.float64 else torch.float32
    a = group_norm_apply_torch(x.to(cdt), mean, rstd, gn_weight, gn_bias, num_groups, silu=True)
    wf = fold_weights(conv_weight, partitioned, cdt)
    b4 = conv_bias.to(cdt).repeat_interleave(4) if conv_bias is not None else None
    if partitioned:  # 2x2 taps on rows/cols m-1, m: pad 1 all round, keep the first H x W outputs
        z = F.conv2d(a, wf, b4, padding=1)[..., : a.shape[2], : a.shape[3]]
    else:
        z = F.conv2d(a, wf, b4, padding=1)
    return F.pixel_shuffle(z, 2).to(x.dtype).contiguous()  # as the kernel writes it, whatever x's layout


@torch.library.custom_op("d4k::upconv_tail", mutates_args=())
def _upconv_op(
    x: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor, gn_weight: Optional[torch.Tensor],
    gn_bias: Optional[torch.Tensor], conv_weight: torch.Tensor, conv_bias: Optional[torch.Tensor],
    num_groups: int, partitioned: bool,
) -> torch.Tensor:
    if backend.choose("upconv_tail", x) == "triton":
        scale, shift = channel_scale_shift(mean, rstd, gn_weight, gn_bias, num_groups, x.shape[1])
        return _upconv_triton(x, scale, shift, conv_weight, conv_bias, partitioned)
    return _upconv_torch(x, mean, rstd, gn_weight, gn_bias, conv_weight, conv_bias, num_groups, partitioned)


@_upconv_op.register_fake
def _(x, mean, rstd, gn_weight, gn_bias, conv_weight, conv_bias, num_groups, partitioned):
    N, _, H, W = x.shape
    return torch.empty((N, conv_weight.shape[0], 2 * H, 2 * W), dtype=x.dtype, device=x.device)


def upconv_tail(
    x: torch.Tensor,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    gn_weight: Optional[torch.Tensor],
    gn_bias: Optional[torch.Tensor],
    conv_weight: torch.Tensor,
    conv_bias: Optional[torch.Tensor],
    num_groups: int,
    partitioned: bool = True,
) -> torch.Tensor:
    """GroupNorm apply -> SiLU -> nearest x2 -> conv3x3 (+ bias), fused and polyphase (see the module doc).

    Args:
        x: (N, C, H, W) low-resolution input, bf16 / fp16 / fp32 (float64: torch path), any strides.
        mean, rstd: (N, num_groups) GroupNorm statistics of the WHOLE tensor (e.g. from
            ``group_norm_finalize``), so that a tile is normalised as the whole image.
        gn_weight, gn_bias: (C,) GroupNorm affine parameters, or None.
        conv_weight: (Cout, C, 3, 3); conv_bias: (Cout,) or None.
        partitioned: True - SC-VAE's released tail (one output pixel shift, zeros from top/left);
            False - the plain tail (conv padding 1).
    Returns:
        (N, Cout, 2H, 2W) in x's dtype, contiguous. No autograd through the kernel (inference); when a
        gradient is needed the differentiable torch path runs instead. For halo tiles, crop: see the module doc.
    """
    check_groups(x, num_groups)
    check_stats(x, mean, rstd, num_groups)
    check_affine(x, gn_weight, gn_bias, "gn_weight", "gn_bias")
    C = x.shape[1]
    check_tensor(conv_weight, "conv_weight", dtypes=X_DTYPES, ndim=4)
    if conv_weight.shape[1] != C or tuple(conv_weight.shape[2:]) != (3, 3):
        raise ValueError(f"conv_weight must have shape (Cout, {C}, 3, 3) for x with {C} channels, "
                         f"got {tuple(conv_weight.shape)}")
    check_int(conv_weight.shape[0], "conv_weight.shape[0] (Cout)", lo=1)
    if conv_weight.device != x.device:
        raise ValueError(f"conv_weight is on {conv_weight.device} but x is on {x.device}")
    if conv_bias is not None:
        check_tensor(conv_bias, "conv_bias", dtypes=X_DTYPES, ndim=1)
        if conv_bias.shape[0] != conv_weight.shape[0]:
            raise ValueError(f"conv_bias must have shape ({conv_weight.shape[0]},) to match conv_weight, "
                             f"got {tuple(conv_bias.shape)}")
        if conv_bias.device != x.device:
            raise ValueError(f"conv_bias is on {conv_bias.device} but x is on {x.device}")
    if not isinstance(partitioned, bool):
        raise TypeError(f"partitioned must be a bool, got {partitioned!r}")
    N, _, H, W = x.shape
    if N == 0 or H == 0 or W == 0:
        return torch.empty((N, conv_weight.shape[0], 2 * H, 2 * W), dtype=x.dtype, device=x.device)
    if needs_grad(x, mean, rstd, gn_weight, gn_bias, conv_weight, conv_bias, op="upconv_tail"):
        return _upconv_torch(x, mean, rstd, gn_weight, gn_bias, conv_weight, conv_bias, num_groups, partitioned)
    return _upconv_op(x, mean, rstd, gn_weight, gn_bias, conv_weight, conv_bias, num_groups, partitioned)
