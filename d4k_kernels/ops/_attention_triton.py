"""The forward flash-attention Triton kernel for head dims up to 512, and its launcher.

One program owns BLOCK_M query rows of one (batch, head) and a slice of BLOCK_DV = BLOCK_D / split
columns of their output. It keeps its Q tile [BLOCK_M, D] in shared memory and its fp32 accumulator
[BLOCK_M, BLOCK_DV] in registers, and walks the keys in blocks of BLOCK_N with the online softmax of
FlashAttention-2 (running row max ``m`` and row sum ``l`` in base 2):

    s = (q @ k^T) * scale * log2(e)        fp32, [BLOCK_M, BLOCK_N], over the whole head dim
    m_new = max(m, rowmax(s));  p = exp2(s - m_new);  l = l * exp2(m - m_new) + rowsum(p)
    acc = acc * exp2(m - m_new) + p @ v[:, slice]    p in v's dtype (16-bit inputs), fp32 accumulation
    o[:, slice] = acc / l                  stored in the input dtype

Head dim 512 (the VAE's one head): a [BLOCK_M, 512] fp32 accumulator costs BLOCK_M * 2 KB of registers,
so a program cannot hold 128 rows of it (256 KB, the whole register file of an SM). Holding 64 rows
(8 warps, 128 registers a thread) makes Triton run q @ k^T in both warpgroups on the same 64 rows (its
layout for a dot that feeds another dot puts all warps along M), so that product is computed twice.
Splitting the output instead (split = 2) gives each program 128 rows and 256 output columns: each
warpgroup owns 64 rows of the scores and of the accumulator (128 registers), and q @ k^T is computed
once per program, twice per query block; the same 1.5x the useful matrix work, but half the
shared-memory reads of q and k per score (bench/NOTES_attention.md has the budget and the roofline).

Any strides (the diffusers processor's q / k / v are transposed views of its projections). Axis 0 of
the grid runs along the query blocks (and output slices) of one (batch, head), so the programs
resident at one time read the same K / V blocks and share them through L2. Batch / head / block bases
are 64-bit and the key loop advances scalar pointers; in-block offsets are 32-bit (checked on the
host). Ragged sizes: query rows beyond M are masked on load and store; the keys of the last partial
block are masked to ``-inf`` in a separate (tail) step, so the full blocks run unmasked; a head dim
that is not a power of two is padded with zeros to BLOCK_D (zero columns change no score and are not
stored).

fp32 inputs take IEEE fp32 dots (no TF32), so that a decode in fp32 equals the torch one to 1e-4; an
fp32 FMA dot holds the whole reduction extent of its operands in registers, so for fp32 q @ k^T is
summed over head-dim chunks of ``chunk_d`` columns, read per key block. Under the Triton interpreter
every dot is an fp32 one on operands already rounded to the input dtype (its 16-bit ``tl.dot``
multiplies bfloat16 bit patterns as integers), which is what the GPU's tensor cores compute up to the
order of the fp32 sums.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from .. import backend
from .._util import cdiv, next_pow2

if backend.HAS_TRITON:
    import triton
    import triton.language as tl
else:  # pragma: no cover - triton-less installs take the torch path
    triton = None
    tl = None

__all__ = ["MAX_HEAD_DIM", "Config", "config_for", "attention_triton"]

MAX_HEAD_DIM = 512
_LOG2E = 1.4426950408889634


class Config(NamedTuple):
    """One launch configuration of the kernel."""

    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    split: int = 1      # programs per query block, each owning 1/split of the output's head dim
    chunk_d: int = 0    # q k^T summed over head-dim chunks of this width (0: the whole head dim at once)


# (BLOCK_D, 16-bit?) -> the GPU configuration, each checked with ptxas for sm_90 (no spills; registers and
# shared memory in bench/NOTES_attention.md). 16-bit: shared memory = (BLOCK_M + stages * BLOCK_N * (1 +
# 1 / split)) * BLOCK_D * 2 bytes <= 227 KB; the fp32 accumulator BLOCK_M * BLOCK_D / split / (32 * warps)
# registers a thread. D = 512 splits the output in two halves, so that each of the two warpgroups owns 64
# query rows of a 128-row tile (224 KB of shared memory, 208 registers). fp32 (IEEE FMA dots) sums q k^T
# over 32-wide head-dim chunks.
_GPU_CONFIGS = {
    (64, True): Config(128, 64, 8, 3),
    (128, True): Config(128, 64, 8, 3),
    (256, True): Config(128, 64, 8, 2),
    (512, True): Config(128, 32, 8, 2, split=2),
    (64, False): Config(64, 32, 8, 2, chunk_d=32),
    (128, False): Config(32, 16, 8, 2, chunk_d=32),
    (256, False): Config(32, 16, 8, 2, chunk_d=32),
    (512, False): Config(32, 16, 8, 2, chunk_d=32),
}
_INTERPRETER_CONFIG = Config(32, 32, 1, 1)  # small blocks: the numpy interpreter is slow


def config_for(head_dim: int, dtype: torch.dtype, device: torch.device) -> Config:
    """The launch configuration for a head dim on a device (the interpreter gets small blocks)."""
    if device.type != "cuda":
        return _INTERPRETER_CONFIG
    block_d = max(64, next_pow2(head_dim))
    return _GPU_CONFIGS[(block_d, dtype != torch.float32)]


if triton is not None:

    @triton.jit
    def _dot(a, b, acc, IEEE: tl.constexpr):
        """acc + a @ b; with IEEE, in fp32 (no TF32), 16-bit operands widened first (exactly)."""
        if IEEE:
            return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
        else:
            return tl.dot(a, b, acc)

    @triton.jit
    def _load_rows(base, off, rmask, cols, D, EVEN_D: tl.constexpr, MASK_ROWS: tl.constexpr):
        """A [rows, cols] block at ``base + off``; zero outside ``rmask`` (MASK_ROWS) and past column D."""
        if MASK_ROWS:
            if EVEN_D:
                return tl.load(base + off, mask=rmask[:, None], other=0.0)
            else:
                return tl.load(base + off, mask=rmask[:, None] & (cols < D)[None, :], other=0.0)
        else:
            if EVEN_D:
                return tl.load(base + off)
            else:
                return tl.load(base + off, mask=(cols < D)[None, :], other=0.0)

    @triton.jit
    def _scores(q, q_blk, q_off, mmask, k_blk, k_off, kmask, offs_d, D,
                CHUNK_D: tl.constexpr, BLOCK_D: tl.constexpr,
                TAIL: tl.constexpr, EVEN_D: tl.constexpr, IEEE: tl.constexpr):
        """q @ k^T for one key block, fp32. CHUNK_D < BLOCK_D (the fp32 path): summed over head-dim chunks
        read from global memory (L2), since an fp32 FMA dot holds its operands' whole reduction extent in
        registers."""
        if CHUNK_D == BLOCK_D:
            k = _load_rows(k_blk, k_off, kmask, offs_d, D, EVEN_D, TAIL)
            return _dot(q, tl.trans(k), None, IEEE)
        else:
            cols = tl.arange(0, CHUNK_D)
            s = tl.zeros((q_off.shape[0], k_off.shape[0]), dtype=tl.float32)
            for c in tl.static_range(0, BLOCK_D // CHUNK_D):
                qc = _load_rows(q_blk + c * CHUNK_D, q_off, mmask, c * CHUNK_D + cols, D, EVEN_D, True)
                kc = _load_rows(k_blk + c * CHUNK_D, k_off, kmask, c * CHUNK_D + cols, D, EVEN_D, TAIL)
                s = _dot(qc, tl.trans(kc), s, IEEE)
            return s

    @triton.jit
    def _attn_step(acc, m_i, l_i, q, q_blk, q_off, mmask, k_blk, v_blk, k_off, v_off, n0, N, qk_scale,
                   offs_n, offs_d, offs_dv, D, CHUNK_D: tl.constexpr, BLOCK_D: tl.constexpr,
                   TAIL: tl.constexpr, EVEN_D: tl.constexpr, IEEE: tl.constexpr):
        """One key block: scores, online-softmax update, ``acc += p @ v[:, slice]``. TAIL masks keys >= N."""
        kmask = (n0 + offs_n) < N
        s = _scores(q, q_blk, q_off, mmask, k_blk, k_off, kmask, offs_d, D,
                    CHUNK_D, BLOCK_D, TAIL, EVEN_D, IEEE) * qk_scale
        if TAIL:
            s = tl.where(kmask[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.math.exp2(m_i - m_new)
        p = tl.math.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = _load_rows(v_blk, v_off, kmask, offs_dv, D, EVEN_D, TAIL)
        acc = _dot(p.to(v.dtype), v, acc * alpha[:, None], IEEE)
        return acc, m_new, l_i

    @triton.jit
    def _attn_fwd_kernel(
        q_ptr, k_ptr, v_ptr, o_ptr,
        sqb, sqh, sqm, sqd,
        skb, skh, skn, skd,
        svb, svh, svn, svd,
        sob, soh, som, sod,
        H, M, N, D, qk_scale,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
        CHUNK_D: tl.constexpr, EVEN_D: tl.constexpr, IEEE: tl.constexpr,
    ):
        # axis 0 (fastest): query block x output slice, so that the resident programs read the same
        # (batch, head)'s K / V blocks and share them through L2
        SPLIT: tl.constexpr = BLOCK_D // BLOCK_DV
        pid_m = tl.program_id(0) // SPLIT
        pid_v = tl.program_id(0) % SPLIT
        pid_bh = tl.program_id(1)
        b = (pid_bh // H).to(tl.int64)
        h = (pid_bh % H).to(tl.int64)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, BLOCK_D)
        offs_dv = pid_v * BLOCK_DV + tl.arange(0, BLOCK_DV)
        mmask = offs_m < M
        q_blk = q_ptr + b * sqb + h * sqh + (pid_m * BLOCK_M).to(tl.int64) * sqm
        q_off = tl.arange(0, BLOCK_M)[:, None] * sqm + tl.arange(0, CHUNK_D)[None, :] * sqd
        if CHUNK_D == BLOCK_D:    # the whole Q tile, read once
            q = _load_rows(q_blk, q_off, mmask, offs_d, D, EVEN_D, True)
        else:                     # read per key block, one head-dim chunk at a time (_scores)
            q = q_off
        k_blk = k_ptr + b * skb + h * skh     # scalar pointers to the current key block, advanced per block
        v_blk = v_ptr + b * svb + h * svh
        k_off = offs_n[:, None] * skn + tl.arange(0, CHUNK_D)[None, :] * skd   # in-block offsets (32-bit)
        v_off = offs_n[:, None] * svn + offs_dv[None, :] * svd
        m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
        l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
        acc = tl.zeros((BLOCK_M, BLOCK_DV), dtype=tl.float32)
        n_full = N // BLOCK_N
        for j in range(0, n_full):
            acc, m_i, l_i = _attn_step(acc, m_i, l_i, q, q_blk, q_off, mmask, k_blk, v_blk, k_off, v_off,
                                       j * BLOCK_N, N, qk_scale, offs_n, offs_d, offs_dv, D, CHUNK_D, BLOCK_D,
                                       TAIL=False, EVEN_D=EVEN_D, IEEE=IEEE)
            k_blk += BLOCK_N * skn
            v_blk += BLOCK_N * svn
        if n_full * BLOCK_N < N:
            acc, m_i, l_i = _attn_step(acc, m_i, l_i, q, q_blk, q_off, mmask, k_blk, v_blk, k_off, v_off,
                                       n_full * BLOCK_N, N, qk_scale, offs_n, offs_d, offs_dv, D, CHUNK_D, BLOCK_D,
                                       TAIL=True, EVEN_D=EVEN_D, IEEE=IEEE)
        o = acc / l_i[:, None]
        o_ptrs = o_ptr + b * sob + h * soh + offs_m.to(tl.int64)[:, None] * som + offs_dv[None, :] * sod
        if EVEN_D:
            tl.store(o_ptrs, o.to(o_ptr.dtype.element_ty), mask=mmask[:, None])
        else:
            tl.store(o_ptrs, o.to(o_ptr.dtype.element_ty), mask=mmask[:, None] & (offs_dv < D)[None, :])


def attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                     config: Optional[Config] = None) -> torch.Tensor:
    """softmax(q k^T * scale) v for checked (B, H, M, D) / (B, H, N, D) inputs, D <= 512, N >= 1.
    ``config`` overrides :func:`config_for` (the benchmarks sweep it)."""
    B, H, M, D = q.shape
    N = k.shape[2]
    out = torch.empty((B, H, M, D), dtype=q.dtype, device=q.device)
    if out.numel() == 0:
        return out
    if B * H > 65535:
        raise ValueError(f"attention: batch * heads = {B * H} exceeds the Triton grid limit 65535")
    cfg = config or config_for(D, q.dtype, q.device)
    block_d = max(16, next_pow2(D))
    # in-tile offsets are 32-bit: a key block's rows and the head dim must stay below 2^31 elements
    for name, t, rows in (("q", q, cfg.block_m), ("k", k, cfg.block_n), ("v", v, cfg.block_n)):
        if (rows * abs(t.stride(2)) + block_d * abs(t.stride(3))) >= 2**31:
            raise ValueError(f"attention: {name}'s strides {tuple(t.stride())} are too large for the "
                             "kernel's 32-bit in-tile offsets; pass a contiguous tensor")
    if cfg.split < 1 or block_d % cfg.split or block_d // cfg.split < 16:
        raise ValueError(f"attention: config {cfg} cannot split a head dim of {block_d} (padded)")
    grid = (cdiv(M, cfg.block_m) * cfg.split, B * H)
    _attn_fwd_kernel[grid](
        q, k, v, out,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(),
        H, M, N, D, float(scale) * _LOG2E,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_D=block_d, BLOCK_DV=block_d // cfg.split,
        CHUNK_D=min(cfg.chunk_d or block_d, block_d),
        EVEN_D=block_d == D, IEEE=q.dtype == torch.float32 or q.device.type != "cuda",
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return out


def flops(batch_heads: int, m: int, n: int, d: int) -> float:
    """Matrix FLOPs of one forward: 2 * M * N * D for q k^T and as many for p v, per (batch, head)."""
    return 4.0 * batch_heads * m * n * d

