"""Triton kernels of ops/glcm.py (CUDA, or the CPU under the Triton interpreter).

ops/glcm.py builds the per-configuration tables (the plan, the fraction-id table, the offsets that
can pair inside a patch) and calls the launchers here: :func:`triton_counts` (the counts op) and
:func:`triton_scores` (the score op), with the counting kernel it picked (``kernel``).

Two ways to count without float atomics; D4K_GLCM_KERNEL=hist|dot picks one (default dot on GPUs, hist under the
interpreter; the dot kernel also serves configurations whose bins do not fit shared memory, e.g. 256 levels):

* hist (``_glcm_hist_kernel``): one program per (patch, offset); the counts are ``tl.histogram`` of
  the pair codes q1 * L + q2 (Triton lowers it to shared-memory atomics), and for the score the
  histogram of those counts, whose non-empty bins (tens) go to the fraction ids.
* dot (``_glcm_tile_kernel``): C[i, j] = sum_p [q1_p == i] [q2_p == j] as an int8 one-hot ``tl.dot``
  with int32 accumulation (exact; the tile stays in registers; wgmma on sm_90); optionally two offsets
  per program share the one-hot tile of the first pixel. For the score each cell's count is mapped
  to its fraction id by a table gather.

Score: a per-patch int32 array of value multiplicities (fraction ids of c / N, merged across slices)
is filled with relaxed integer atomics, a second kernel sums flog[n] = n log2 n (float64 table) per
patch, and torch finishes entropy = log2(T) - sum / T in float64. No sort, no float division.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .. import settings


@triton.jit
def _tile_epilogue(acc, u, ok, ii, jj, patch, pid, out_ptr, key_ptr, mult_ptr, key_stride, nkeys, U,
                   L: tl.constexpr, BL: tl.constexpr, SCORE: tl.constexpr):
    okt = (tl.zeros((BL, BL), dtype=tl.int32) + ok.to(tl.int32)) > 0     # scalar -> tile mask
    valid = (ii[:, None] < L) & (jj[None, :] < L) & okt
    if SCORE:
        keys = tl.load(key_ptr + u * key_stride + acc, mask=valid, other=0)
        w = tl.load(mult_ptr + u)
        row = out_ptr + pid.to(tl.int64) * nkeys
        # relaxed: plain counters, no ordering needed (the default acq_rel adds fences)
        tl.atomic_add(row + keys, tl.zeros((BL, BL), dtype=tl.int32) + w, mask=valid & (acc > 0), sem="relaxed")
        zeros = tl.sum(tl.sum((valid & (acc == 0)).to(tl.int32), axis=1), axis=0)
        tl.atomic_add(row, zeros * w, sem="relaxed")  # key 0 is the value 0 for every offset (0 if not ok)
    else:
        dst = out_ptr + ((patch * U + u) * L) * L
        tl.store(dst + ii[:, None] * L + jj[None, :], acc, mask=valid)


@triton.jit
def _patch_base(patch, ppi, pw, s_n, s_h, s_w, P: tl.constexpr):
    """Global patch index (int64) and the element offset of its top-left pixel: patches are numbered
    image by image, row-major, ``ppi`` per image and ``pw`` per row of patches."""
    patch = patch.to(tl.int64)
    img = patch // ppi
    rem = patch % ppi
    return patch, img * s_n + (rem // pw) * P * s_h + (rem % pw) * P * s_w


@triton.jit
def _glcm_tile_kernel(
    g_ptr, s_n, s_h, s_w,               # image (N, H, W), element strides
    off_ptr,                            # (U, 2) int32 offsets (row, col)
    out_ptr,                            # counts (NP, U, L, L) int32, or nacc (NPc, K) int32
    key_ptr, mult_ptr, key_stride, nkeys,
    p0, ppi, pw, U, qdiv,
    P: tl.constexpr, L: tl.constexpr, BL: tl.constexpr, BK: tl.constexpr, NB: tl.constexpr,
    SCORE: tl.constexpr, G: tl.constexpr,
):
    pid = tl.program_id(0)              # patch within this launch
    u0 = tl.program_id(1) * G           # first of the G offsets of this program
    blk = tl.program_id(2)              # (i-block, j-block)
    ib = (blk // NB) * BL
    jb = (blk % NB) * BL
    patch, base = _patch_base(p0 + pid, ppi, pw, s_n, s_h, s_w, P)
    dr0 = tl.load(off_ptr + 2 * u0)
    dc0 = tl.load(off_ptr + 2 * u0 + 1)
    u1 = tl.minimum(u0 + 1, U - 1)
    has1 = (u0 + 1) < U
    dr1 = tl.where(has1, tl.load(off_ptr + 2 * u1), P)   # no second offset: no pair is inside
    dc1 = tl.load(off_ptr + 2 * u1 + 1)

    ii = ib + tl.arange(0, BL)          # levels of the first pixel handled by this tile
    jj = jb + tl.arange(0, BL)
    acc0 = tl.zeros((BL, BL), dtype=tl.int32)
    acc1 = tl.zeros((BL, BL), dtype=tl.int32)
    for start in range(0, P * P, BK):
        p = start + tl.arange(0, BK)
        r = p // P
        c = p % P
        inp = p < P * P
        g1 = tl.load(g_ptr + base + r.to(tl.int64) * s_h + c.to(tl.int64) * s_w, mask=inp, other=0)
        q1 = g1.to(tl.int32) // qdiv
        # one-hot of the first pixel, shared by the G offsets (pixels whose partner is outside the
        # patch get a zero row in B, so they add nothing)
        a = ((ii[:, None] == q1[None, :]) & inp[None, :]).to(tl.int8)        # (BL, BK)
        r2 = r + dr0
        c2 = c + dc0
        m0 = inp & (r2 >= 0) & (r2 < P) & (c2 >= 0) & (c2 < P)
        g2 = tl.load(g_ptr + base + r2.to(tl.int64) * s_h + c2.to(tl.int64) * s_w, mask=m0, other=0)
        b0 = (((g2.to(tl.int32) // qdiv)[:, None] == jj[None, :]) & m0[:, None]).to(tl.int8)
        acc0 += tl.dot(a, b0, out_dtype=tl.int32)
        if G == 2:
            r3 = r + dr1
            c3 = c + dc1
            m1 = inp & (r3 >= 0) & (r3 < P) & (c3 >= 0) & (c3 < P)
            g3 = tl.load(g_ptr + base + r3.to(tl.int64) * s_h + c3.to(tl.int64) * s_w, mask=m1, other=0)
            b1 = (((g3.to(tl.int32) // qdiv)[:, None] == jj[None, :]) & m1[:, None]).to(tl.int8)
            acc1 += tl.dot(a, b1, out_dtype=tl.int32)

    _tile_epilogue(acc0, u0, u0 < U, ii, jj, patch, pid, out_ptr, key_ptr, mult_ptr, key_stride, nkeys, U,
                   L, BL, SCORE)
    if G == 2:
        _tile_epilogue(acc1, u1, has1, ii, jj, patch, pid, out_ptr, key_ptr, mult_ptr, key_stride, nkeys, U,
                       L, BL, SCORE)


@triton.jit
def _glcm_hist_kernel(
    g_ptr, s_n, s_h, s_w,               # image (N, H, W), element strides
    off_ptr,                            # (U, 2) int32 offsets (row, col)
    out_ptr,                            # counts (NP, U, L, L) int32, or nacc (NPc, K) int32
    key_ptr, mult_ptr, key_stride, nkeys,
    p0, ppi, pw, U, qdiv,
    P: tl.constexpr, L: tl.constexpr, LLB: tl.constexpr, NB: tl.constexpr, BK: tl.constexpr,
    SCORE: tl.constexpr,
):
    """Counts as a histogram of pair codes q1 * L + q2 (tl.histogram: shared-memory atomics), then
    (SCORE) the histogram of those counts, whose non-empty bins go to the fraction ids."""
    pid = tl.program_id(0)
    u = tl.program_id(1)
    patch, base = _patch_base(p0 + pid, ppi, pw, s_n, s_h, s_w, P)
    dr = tl.load(off_ptr + 2 * u)
    dc = tl.load(off_ptr + 2 * u + 1)
    hist = tl.zeros((LLB,), dtype=tl.int32)
    nv = tl.zeros((BK,), dtype=tl.int32)
    for start in range(0, P * P, BK):
        p = start + tl.arange(0, BK)
        r = p // P
        c = p % P
        r2 = r + dr
        c2 = c + dc
        m = (p < P * P) & (r2 >= 0) & (r2 < P) & (c2 >= 0) & (c2 < P)
        g1 = tl.load(g_ptr + base + r.to(tl.int64) * s_h + c.to(tl.int64) * s_w, mask=m, other=0)
        g2 = tl.load(g_ptr + base + r2.to(tl.int64) * s_h + c2.to(tl.int64) * s_w, mask=m, other=0)
        code = tl.where(m, (g1.to(tl.int32) // qdiv) * L + g2.to(tl.int32) // qdiv, 0)
        hist += tl.histogram(code, LLB)
        nv += m.to(tl.int32)
    nvalid = tl.sum(nv, axis=0)
    b = tl.arange(0, LLB)
    # pixels without a partner were counted in bin 0: take them out
    hist -= tl.where(b == 0, (((P * P + BK - 1) // BK) * BK) - nvalid, 0)
    if SCORE:
        # bins >= L*L (power-of-two padding) hold 0: they are not cells
        ch = tl.histogram(hist, NB)
        nb = tl.arange(0, NB)
        ch -= tl.where(nb == 0, LLB - L * L, 0)
        keys = tl.load(key_ptr + u * key_stride + nb, mask=(nb < key_stride) & (ch > 0), other=0)
        w = tl.load(mult_ptr + u)
        row = out_ptr + pid.to(tl.int64) * nkeys
        tl.atomic_add(row + keys, ch * w, mask=ch > 0, sem="relaxed")
    else:
        dst = out_ptr + ((patch * U + u) * L) * L
        tl.store(dst + b, hist, mask=b < L * L)


@triton.jit
def _flog_sum_kernel(nacc_ptr, flog_ptr, out_ptr, p0, nkeys, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    row = nacc_ptr + pid.to(tl.int64) * nkeys
    s = tl.zeros((BLOCK,), dtype=tl.float64)
    for start in range(0, nkeys, BLOCK):
        k = start + tl.arange(0, BLOCK)
        n = tl.load(row + k, mask=k < nkeys, other=0)
        s += tl.load(flog_ptr + n, mask=k < nkeys, other=0.0)
    tl.store(out_ptr + p0 + pid, tl.sum(s, axis=0))


# Launch configuration (sm_90a, `ptxas -v`, SCORE kernel, patch 64, 64 levels):
#   G=1, 8 warps, BK=64: 127 registers, no spills (2 blocks / 16 warps per SM)   <- default
#   G=1, 4 warps, BK=64: 255 registers;  G=2, 8 warps, BK=64: 216 registers (1 block per SM)
# G=2 shares the one-hot tile of the first pixel between two offsets (less ALU work, half the
# occupancy): which wins is for the GPU to say. Overrides for tuning there:
# D4K_GLCM_G, D4K_GLCM_WARPS, D4K_GLCM_BK (d4k_kernels.settings).
_BK_INTERPRET = 1024  # under the interpreter fewer, larger numpy steps are much faster
_HIST_BK = 1024


def _use_hist(plan, kernel: str) -> bool:
    """Whether the histogram kernel runs: asked for (``kernel == "hist"``) and its L*L code bins and
    N+1 count bins fit shared memory (else the dot kernel runs)."""
    llb = triton.next_power_of_2(plan.levels * plan.levels)
    nb = triton.next_power_of_2(max(plan.totals) + 1)
    return kernel == "hist" and llb <= 16384 and nb <= 16384


def _hist_sizes(plan):
    return (triton.next_power_of_2(plan.levels * plan.levels), triton.next_power_of_2(max(plan.totals) + 1),
            min(_HIST_BK, triton.next_power_of_2(plan.patch * plan.patch)))


def _bk(patch: int, device: torch.device) -> int:
    bk = settings.current().glcm_bk if device.type == "cuda" else _BK_INTERPRET
    return max(32, min(bk, triton.next_power_of_2(patch * patch)))


def _tiles(levels: int):
    bl = min(64, max(16, triton.next_power_of_2(levels)))
    return bl, triton.cdiv(levels, bl)


def _geom(g: torch.Tensor, patch: int):
    n, h, w = g.shape
    pw = w // patch
    ppi = (h // patch) * pw
    return n * ppi, ppi, pw


def triton_counts(g: torch.Tensor, plan, qdiv: int, offs: torch.Tensor, kernel: str) -> torch.Tensor:
    """(N, H, W) integer image -> (N*P, U, L, L) int32 counts of the plan's distinct offsets
    (``offs``: those offsets, (U, 2) int32 on g's device)."""
    cfg = settings.current()
    L, P = plan.levels, plan.patch
    np_, ppi, pw = _geom(g, P)
    U = len(plan.uoffsets)
    out = torch.zeros((np_, U, L, L), dtype=torch.int32, device=g.device)
    if np_ == 0:
        return out
    if _use_hist(plan, kernel):
        llb, nbins, hbk = _hist_sizes(plan)
        _glcm_hist_kernel[(np_, U)](
            g, g.stride(0), g.stride(1), g.stride(2), offs, out, offs, offs, 0, 0,
            0, ppi, pw, U, qdiv, P=P, L=L, LLB=llb, NB=nbins, BK=hbk, SCORE=False,
            num_warps=cfg.glcm_warps,
        )
        return out
    bl, nb = _tiles(L)
    bk = _bk(P, g.device)
    grid = (np_, triton.cdiv(U, cfg.glcm_g), nb * nb)
    _glcm_tile_kernel[grid](
        g, g.stride(0), g.stride(1), g.stride(2), offs, out, offs, offs, 0, 0,
        0, ppi, pw, U, qdiv, P=P, L=L, BL=bl, BK=bk, NB=nb, SCORE=False, G=cfg.glcm_g,
        num_warps=cfg.glcm_warps,
    )
    return out


def triton_scores(g: torch.Tensor, plan, qdiv: int, flog: torch.Tensor, tables, kernel: str) -> torch.Tensor:
    """(N, H, W) integer image -> (N*P,) float64 distinct-value entropy per patch. ``flog``: the
    n log2 n table; ``tables``: the plan's ScoreTables on g's device (ops/glcm.py)."""
    cfg = settings.current()
    L, P = plan.levels, plan.patch
    np_, ppi, pw = _geom(g, P)
    out = torch.empty(np_, dtype=torch.float64, device=g.device)
    if np_ == 0:
        return out
    U, offs, kt, mu = tables.count, tables.offsets, tables.keytab, tables.mult
    bl, nb = _tiles(L)
    K = plan.nkeys
    T = plan.cells
    chunk = max(1, min(np_, (256 << 20) // (4 * K)))
    for p0 in range(0, np_, chunk):
        npc = min(chunk, np_ - p0)
        nacc = torch.zeros((npc, K), dtype=torch.int32, device=g.device)
        if tables.zeros_extra:
            nacc[:, 0] = tables.zeros_extra
        if U and _use_hist(plan, kernel):
            llb, nbins, hbk = _hist_sizes(plan)
            _glcm_hist_kernel[(npc, U)](
                g, g.stride(0), g.stride(1), g.stride(2), offs, nacc, kt, mu, kt.stride(0), K,
                p0, ppi, pw, U, qdiv, P=P, L=L, LLB=llb, NB=nbins, BK=hbk, SCORE=True,
                num_warps=cfg.glcm_warps,
            )
        elif U:
            _glcm_tile_kernel[(npc, triton.cdiv(U, cfg.glcm_g), nb * nb)](
                g, g.stride(0), g.stride(1), g.stride(2), offs, nacc, kt, mu, kt.stride(0), K,
                p0, ppi, pw, U, qdiv, P=P, L=L, BL=bl, BK=_bk(P, g.device), NB=nb, SCORE=True,
                G=cfg.glcm_g,
                num_warps=cfg.glcm_warps,
            )
        _flog_sum_kernel[(npc,)](nacc, flog, out, p0, K, BLOCK=1024)
    # scalars stay out of the kernel: Triton passes Python floats as fp32
    return math.log2(T) - out / T
