"""GroupNorm with statistics that can be gathered over tiles (exact tiled VAE decoding).

Three steps, so that a tiled decoder can normalise every tile with the statistics of the WHOLE tensor:

    stats = group_norm_stats(x, G)                    # (N, G, 2) float64: [sum, sum of squares]
    # ... or, over tile cores:  stats = torch.zeros(N, G, 2, dtype=float64); for each core view v:
    #                           group_norm_stats(v, G, out=stats)
    mean, rstd = group_norm_finalize(stats, count_per_group=(C // G) * H * W, eps=1e-6)   # (N, G) fp32
    y = group_norm_apply(x, mean, rstd, weight, bias, G, silu=True)    # = silu(F.group_norm(x, G, w, b, eps))

Numerics of the statistics (cancellation in the sum of squares for large means): the Triton kernel
never forms a raw fp32 sum of squares. Each program reads a contiguous run of one (sample, group),
computes per chunk the chunk mean and the CENTRED second moment M2 = sum((x - chunk_mean)^2) in fp32,
and merges chunks with Chan's parallel (count, mean, M2) update in fp32. The per-program triples are
written to a buffer (no atomics: deterministic) and reduced on the host in float64 into
``sum = sum_b n_b * mean_b`` and ``sumsq = sum_b (M2_b + n_b * mean_b^2)``. The remaining cancellation
(``sumsq / n - mean^2`` in :func:`group_norm_finalize`) happens in float64, so the variance keeps about
16 - 2*log10(|mean| / std) significant digits: ~8 digits even at a mean 10^4 times the std.
Contiguous groups are read as one run (1-D blocks); strided views (tile cores of a larger tensor) in
[rows, columns] blocks, without per-element index division.
The torch path (CPU, or float64 inputs) takes each channel's mean and centred variance with
``torch.var_mean`` and combines them per group in float64 (:func:`_stats_torch`). It is the one torch
GroupNorm of the package: the exact tiled decoder's torch op table (vae/tiling/ops.py) calls it too.

Dispatch: :func:`d4k_kernels.backend.choose` - CUDA tensors run the Triton kernels, CPU tensors the torch
path (or the Triton kernels under the interpreter). float64 inputs always take the torch path.

Autograd: decoding is inference, so the Triton kernels have no backward. When a gradient is needed
(grad mode on and an input requires grad), :func:`group_norm_apply` runs its plain, differentiable torch
path instead; :func:`group_norm_stats` never carries a gradient (its float64 sums are statistics).
"""
from __future__ import annotations

from typing import Optional, Tuple

import warnings

import torch

from .. import backend
from .._util import cdiv as _cdiv, next_pow2 as _next_pow2
from .._checks import FLOAT_DTYPES, check_int, check_tensor

if backend.HAS_TRITON:
    import triton
    import triton.language as tl
else:  # pragma: no cover - triton-less installs run the torch path
    triton = tl = None

__all__ = [
    "group_norm_stats", "group_norm_finalize", "group_norm_apply",
    # shared with ops/upconv.py (the decoder tail applies the same GroupNorm)
    "X_DTYPES", "check_groups", "check_stats", "check_affine", "needs_grad", "model_stats_dtype",
    "channel_scale_shift", "group_norm_apply_torch",
]

X_DTYPES = FLOAT_DTYPES + (torch.float64,)  # what the GroupNorm ops and the tail take


# --------------------------------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------------------------------
def check_groups(x, num_groups, name="x"):
    check_tensor(x, name, dtypes=X_DTYPES, ndim=4)
    check_int(num_groups, "num_groups", lo=1)
    C = x.shape[1]
    if C % num_groups != 0:
        raise ValueError(f"{name} has {C} channels, which is not divisible by num_groups={num_groups}")
    return C // num_groups


def check_stats(x, mean, rstd, num_groups):
    N = x.shape[0]
    for t, n in ((mean, "mean"), (rstd, "rstd")):
        check_tensor(t, n, dtypes=(torch.float32, torch.float64, torch.bfloat16, torch.float16), ndim=2)
        if tuple(t.shape) != (N, num_groups):
            raise ValueError(f"{n} must have shape (N, num_groups) = {(N, num_groups)}, got {tuple(t.shape)}")
        if t.device != x.device:
            raise ValueError(f"{n} is on {t.device} but x is on {x.device}")


def check_affine(x, weight, bias, wname="weight", bname="bias"):
    C = x.shape[1]
    for t, n in ((weight, wname), (bias, bname)):
        if t is None:
            continue
        check_tensor(t, n, dtypes=X_DTYPES, ndim=1)
        if t.shape[0] != C:
            raise ValueError(f"{n} must have shape ({C},) to match x's {C} channels, got {tuple(t.shape)}")
        if t.device != x.device:
            raise ValueError(f"{n} is on {t.device} but x is on {x.device}")


_WARNED = set()


def needs_grad(*ts, op: str = "") -> bool:
    """True when autograd must see the op (grad mode on and an input requires grad). On CUDA that means the
    slower torch path instead of the fused kernel: warn once, since it is usually a forgotten no_grad()."""
    need = torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad for t in ts)
    if need and op and op not in _WARNED and any(isinstance(t, torch.Tensor) and t.is_cuda for t in ts):
        _WARNED.add(op)
        warnings.warn(f"{op}: an input requires grad with grad mode on, so the differentiable torch path runs "
                      "instead of the fused kernel (slower, more memory); decode under torch.no_grad() or "
                      "torch.inference_mode() to use the kernel", stacklevel=3)
    return need


def model_stats_dtype(x: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor]):
    """The dtype torch's own GroupNorm rounds mean / rstd to before it normalises ``x``, or None.

    ``torch.nn.functional.group_norm`` returns mean / rstd in the parameter dtype (``x.dtype`` unless
    ``x`` is 16-bit and weight / bias are float32). Its CUDA kernel then applies THOSE rounded values
    (``scale = rstd * w``, ``shift = -scale * mean + b``, ``y = scale * x + shift`` in fp32), while the
    CPU kernel applies its fp32 values. For a bf16 model on a GPU the rounding of the mean (2^-9
    relative) moves GroupNorm's output by up to a few bf16 ulps, far more than any fp32 detail: exact
    tiled decoding must round the same way to reproduce the untiled decode on that device."""
    if x.device.type != "cuda" or x.dtype not in (torch.bfloat16, torch.float16):
        return None
    if any(t is not None and t.dtype != x.dtype for t in (weight, bias)):
        return None  # mixed types: torch keeps float32 statistics
    return x.dtype


def channel_scale_shift(mean, rstd, weight, bias, num_groups, C, dtype=torch.float32, stats_dtype=None,
                        fused_shift=True):
    """Per-(sample, channel) affine ``y = x * scale + shift`` equal to GroupNorm apply, shape (N, C) each.

    ``stats_dtype``: round mean / rstd to it first (see :func:`model_stats_dtype`). ``fused_shift``: form
    the shift as torch's CUDA and CPU kernels do, ``-scale * mean + bias`` with one rounding (a float64
    product is exact); False: the product is rounded to ``dtype`` before the bias is added (the torch
    path's form, see :func:`group_norm_apply_torch`)."""
    N = mean.shape[0]
    cg = C // num_groups
    if stats_dtype is not None:
        mean, rstd = mean.to(stats_dtype), rstd.to(stats_dtype)
    r = rstd.to(dtype).repeat_interleave(cg, dim=1)
    m = mean.to(dtype).repeat_interleave(cg, dim=1)
    scale = r if weight is None else r * weight.to(dtype).view(1, C)
    if fused_shift:
        shift = -m.double() * scale.double()  # exact for fp32 m, scale: the cast below rounds once
        if bias is not None:
            shift = shift + bias.double().view(1, C)
        shift = shift.to(dtype)
    else:
        shift = -m * scale
        if bias is not None:
            shift = shift + bias.to(dtype).view(1, C)
    return scale.reshape(N, C).contiguous(), shift.reshape(N, C).contiguous()


# --------------------------------------------------------------------------------------------------
# Triton kernels
# --------------------------------------------------------------------------------------------------
if triton is not None:

    @triton.jit
    def _chan_merge(cnt, mean, m2, nb, mb, m2b):
        """Chan et al.'s merge of a running (count, mean, M2) with a block's (nb, mean mb, M2 m2b)."""
        ntot = cnt + nb
        delta = mb - mean
        frac = nb / tl.maximum(ntot, 1.0)
        return ntot, mean + delta * frac, m2 + m2b + delta * delta * cnt * frac

    @triton.jit
    def _store_partial(out, cnt, mean, m2):
        tl.store(out, cnt)
        tl.store(out + 1, mean)
        tl.store(out + 2, m2)

    @triton.jit
    def _gn_stats_kernel(
        x_ptr, part_ptr,
        C_G, GROUP_SIZE, sxn, sxc,
        G, ITERS, N_PROGS,
        BLOCK: tl.constexpr,
    ):
        # one program: a contiguous run of ITERS * BLOCK elements of one (sample, group) (contiguous groups)
        pid_b = tl.program_id(0)
        pid_ng = tl.program_id(1)
        n = pid_ng // G
        g = pid_ng % G
        base = n.to(tl.int64) * sxn + (g * C_G).to(tl.int64) * sxc
        start = pid_b.to(tl.int64) * ITERS * BLOCK
        offs = tl.arange(0, BLOCK)
        cnt = tl.zeros((), dtype=tl.float32)
        mean = tl.zeros((), dtype=tl.float32)
        m2 = tl.zeros((), dtype=tl.float32)
        for it in range(ITERS):
            e = start + it * BLOCK + offs  # int64 flat index inside the group
            mask = e < GROUP_SIZE
            v = tl.load(x_ptr + base + e, mask=mask, other=0.0).to(tl.float32)
            nb = tl.sum(mask.to(tl.float32), axis=0)
            mb = tl.sum(v, axis=0) / tl.maximum(nb, 1.0)
            d = tl.where(mask, v - mb, 0.0)
            cnt, mean, m2 = _chan_merge(cnt, mean, m2, nb, mb, tl.sum(d * d, axis=0))
        _store_partial(part_ptr + (pid_ng.to(tl.int64) * N_PROGS + pid_b) * 3, cnt, mean, m2)

    @triton.jit
    def _gn_stats_rows_kernel(
        x_ptr, part_ptr,
        H, W, R, C_G,
        sxn, sxc, sxh, sxw,
        G, ROW_ITERS, N_PROGS,
        RB: tl.constexpr, WB: tl.constexpr,
    ):
        # strided inputs (tile-core views): one program = ROW_ITERS blocks of RB rows (c*H + h) of one
        # (sample, group), each row read in WB-wide column chunks; the same (count, mean, M2) merging
        pid_b = tl.program_id(0)
        pid_ng = tl.program_id(1)
        n = pid_ng // G
        g = pid_ng % G
        base = x_ptr + n.to(tl.int64) * sxn + (g * C_G).to(tl.int64) * sxc
        rr = tl.arange(0, RB)
        ww = tl.arange(0, WB)
        cnt = tl.zeros((), dtype=tl.float32)
        mean = tl.zeros((), dtype=tl.float32)
        m2 = tl.zeros((), dtype=tl.float32)
        for it in range(ROW_ITERS):
            t = (pid_b * ROW_ITERS + it) * RB + rr
            rmask = t < R
            c = t // H
            h = t - c * H
            roff = c.to(tl.int64) * sxc + h.to(tl.int64) * sxh
            for w0 in range(0, W, WB):
                w = w0 + ww
                mask = rmask[:, None] & (w < W)[None, :]
                v = tl.load(base + roff[:, None] + w.to(tl.int64)[None, :] * sxw, mask=mask, other=0.0)
                v = v.to(tl.float32)
                nb = tl.sum(tl.sum(mask.to(tl.float32), axis=1), axis=0)
                mb = tl.sum(tl.sum(v, axis=1), axis=0) / tl.maximum(nb, 1.0)
                d = tl.where(mask, v - mb, 0.0)
                cnt, mean, m2 = _chan_merge(cnt, mean, m2, nb, mb, tl.sum(tl.sum(d * d, axis=1), axis=0))
        _store_partial(part_ptr + (pid_ng.to(tl.int64) * N_PROGS + pid_b) * 3, cnt, mean, m2)

    @triton.jit
    def _gn_apply_kernel(
        x_ptr, y_ptr, scale_ptr, shift_ptr,
        C, HW, W,
        sxn, sxc, sxh, sxw,
        SILU: tl.constexpr, CONTIG: tl.constexpr, BLOCK: tl.constexpr,
    ):
        pid_s = tl.program_id(0)
        pid_nc = tl.program_id(1)  # n * C + c
        n = pid_nc // C
        c = pid_nc % C
        a = tl.load(scale_ptr + pid_nc)
        b = tl.load(shift_ptr + pid_nc)
        e = pid_s * BLOCK + tl.arange(0, BLOCK)      # int32: H * W < 2^31 (checked on the host)
        mask = e < HW
        if CONTIG:
            src = n.to(tl.int64) * sxn + c.to(tl.int64) * sxc + e
        else:
            h = e // W                                 # int32 division (cheap next to int64)
            w = e - h * W
            src = n.to(tl.int64) * sxn + c.to(tl.int64) * sxc + h.to(tl.int64) * sxh + w.to(tl.int64) * sxw
        v = tl.load(x_ptr + src, mask=mask, other=0.0).to(tl.float32)
        v = v * a + b
        if SILU:
            # as the untiled model computes it: GroupNorm's output rounded to the tensor dtype, then
            # SiLU in fp32 as torch's kernel writes it, x / (1 + exp(-x)), rounded again (for 16-bit
            # dtypes one rounding instead of two changes ~1 ulp in many elements: exact tiled decoding
            # must match the untiled decode, not be more precise than it)
            v = v.to(y_ptr.dtype.element_ty).to(tl.float32)
            v = v / (1.0 + tl.exp(-v))
        tl.store(y_ptr + pid_nc.to(tl.int64) * HW + e.to(tl.int64), v.to(y_ptr.dtype.element_ty), mask=mask)


def _stats_triton(x: torch.Tensor, num_groups: int) -> torch.Tensor:
    N, C, H, W = x.shape
    cg = C // num_groups
    HW = H * W
    gsize = cg * HW
    on_gpu = x.device.type == "cuda"
    BLOCK = 2048 if on_gpu else 256
    target = 2048 if on_gpu else 4  # programs in total (enough to fill a GPU; few under the interpreter)
    per_group = max(1, min(_cdiv(gsize, BLOCK), _cdiv(target, N * num_groups)))
    iters = _cdiv(_cdiv(gsize, BLOCK), per_group)
    per_group = _cdiv(gsize, iters * BLOCK)
    if N * num_groups > 65535:
        raise ValueError(f"group_norm_stats: N*num_groups = {N * num_groups} exceeds the Triton grid limit 65535")
    sn, sc, sh, sw = x.stride()
    contig = (sw == 1 or W == 1) and (sh == W or H == 1) and (sc == HW or cg == 1)
    if contig:  # the group is one contiguous run: 1-D blocks
        part = torch.empty((N * num_groups, per_group, 3), dtype=torch.float32, device=x.device)
        _gn_stats_kernel[(per_group, N * num_groups)](
            x, part, cg, gsize, sn, sc, num_groups, iters, per_group, BLOCK=BLOCK,
        )
    else:  # strided (e.g. a tile core of a larger tensor): 2-D [rows, columns] blocks, no per-element division
        WB = min(_next_pow2(W), 1024 if on_gpu else 64)
        RB = max(1, BLOCK // WB)
        R = cg * H
        row_blocks = _cdiv(R, RB)
        per_group = max(1, min(row_blocks, _cdiv(target, N * num_groups)))
        row_iters = _cdiv(row_blocks, per_group)
        per_group = _cdiv(row_blocks, row_iters)
        part = torch.empty((N * num_groups, per_group, 3), dtype=torch.float32, device=x.device)
        _gn_stats_rows_kernel[(per_group, N * num_groups)](
            x, part, H, W, R, cg, sn, sc, sh, sw, num_groups, row_iters, per_group, RB=RB, WB=WB,
        )
    p = part.to(torch.float64)
    cnt, mean, m2 = p[..., 0], p[..., 1], p[..., 2]
    s1 = (cnt * mean).sum(dim=1)
    s2 = (m2 + cnt * mean * mean).sum(dim=1)
    return torch.stack([s1, s2], dim=-1).view(N, num_groups, 2)


def _stats_torch(x: torch.Tensor, num_groups: int) -> torch.Tensor:
    """Per-channel variance and mean (``torch.var_mean``: fp32 for 16/32-bit inputs, float64 for float64),
    combined per group in float64: ``sum = n mean_c``, ``sumsq = n (var_c + mean_c^2)`` summed over the
    group's channels. No float64 copy of x; the variance is centred per channel (no cancellation)."""
    N, C = x.shape[:2]
    n = x.shape[2] * x.shape[3]
    xf = x if x.dtype in (torch.float32, torch.float64) else x.to(torch.float32)
    var, mean = torch.var_mean(xf, dim=(2, 3), correction=0)
    mean, var = mean.to(torch.float64), var.to(torch.float64)
    s = torch.stack([mean * n, (var + mean * mean) * n], dim=-1)
    return s.reshape(N, num_groups, C // num_groups, 2).sum(2)


def _apply_triton(x, scale, shift, silu):
    N, C, H, W = x.shape
    HW = H * W
    y = torch.empty((N, C, H, W), dtype=x.dtype, device=x.device)
    if y.numel() == 0:
        return y
    if N * C > 65535:
        raise ValueError(f"group_norm_apply: N*C = {N * C} exceeds the Triton grid limit 65535")
    if HW >= 2**31 - 4096:
        raise ValueError(f"group_norm_apply: H*W = {HW} must stay below 2^31 (tile the tensor)")
    sn, sc, sh, sw = x.stride()
    contig = (sw == 1 or W == 1) and (sh == W or H == 1)
    BLOCK = 2048 if x.device.type == "cuda" else 256
    grid = (_cdiv(HW, BLOCK), N * C)
    _gn_apply_kernel[grid](x, y, scale, shift, C, HW, W, sn, sc, sh, sw, SILU=silu, CONTIG=contig, BLOCK=BLOCK)
    return y


def group_norm_apply_torch(x, mean, rstd, weight, bias, num_groups, silu):
    """GroupNorm apply in plain, differentiable torch: ``x * scale + shift`` per channel in fp32 (float64
    for float64 x), rounded to x's dtype, then SiLU on that result (as ``F.silu(F.group_norm(x))`` rounds
    twice for 16-bit x). mean / rstd are rounded as the model's GroupNorm rounds them
    (:func:`model_stats_dtype`); the shift is ``-mean * scale`` rounded, plus the bias (the exact tiled
    decode's torch path computes exactly this, and its output on the CPU is kept bit for bit)."""
    N, C, H, W = x.shape
    cdt = torch.float64 if x.dtype == torch.float64 else torch.float32
    scale, shift = channel_scale_shift(mean, rstd, weight, bias, num_groups, C, cdt,
                                       stats_dtype=model_stats_dtype(x, weight, bias), fused_shift=False)
    v = torch.addcmul(shift.view(N, C, 1, 1), x.to(cdt), scale.view(N, C, 1, 1)).to(x.dtype)
    if silu:
        # in place where autograd allows: the result keeps addcmul's strides, which an out-of-place SiLU
        # re-derives (for N = 1 the batch stride), and a CPU conv reading it may take another algorithm
        v = torch.nn.functional.silu(v, inplace=not v.requires_grad)
    return v


# --------------------------------------------------------------------------------------------------
# registered ops (one op each for torch.compile; no autograd - see module docstring)
# --------------------------------------------------------------------------------------------------
@torch.library.custom_op("d4k::group_norm_stats", mutates_args=())
def _stats_op(x: torch.Tensor, num_groups: int) -> torch.Tensor:
    if x.numel() == 0:
        return torch.zeros((x.shape[0], num_groups, 2), dtype=torch.float64, device=x.device)
    if backend.choose("group_norm_stats", x) == "triton":
        return _stats_triton(x, num_groups)
    return _stats_torch(x, num_groups)


@_stats_op.register_fake
def _(x, num_groups):
    return x.new_empty((x.shape[0], num_groups, 2), dtype=torch.float64)


@torch.library.custom_op("d4k::group_norm_apply", mutates_args=())
def _apply_op(
    x: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor, weight: Optional[torch.Tensor],
    bias: Optional[torch.Tensor], num_groups: int, silu: bool,
) -> torch.Tensor:
    if backend.choose("group_norm_apply", x) == "triton":
        scale, shift = channel_scale_shift(mean, rstd, weight, bias, num_groups, x.shape[1],
                                           stats_dtype=model_stats_dtype(x, weight, bias))
        return _apply_triton(x, scale, shift, silu)
    return group_norm_apply_torch(x, mean, rstd, weight, bias, num_groups, silu)


@_apply_op.register_fake
def _(x, mean, rstd, weight, bias, num_groups, silu):
    if backend.choose("group_norm_apply", x) == "triton":
        return torch.empty(x.shape, dtype=x.dtype, device=x.device)  # the kernel writes a contiguous y
    # the torch path's output follows x's layout (e.g. channels_last): run it on the fake tensors
    return group_norm_apply_torch(x, mean, rstd, weight, bias, num_groups, silu)


# --------------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------------
def group_norm_stats(x: torch.Tensor, num_groups: int, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Per (sample, group) ``[sum, sum of squares]`` of ``x`` (N, C, H, W), as an (N, G, 2) float64 tensor.

    Any H, W (tile cores too: views with any strides); C must be divisible by ``num_groups``.
    With ``out`` (an (N, G, 2) float64 tensor) the result is ADDED into ``out`` and ``out`` is returned,
    so a tiled decoder can accumulate the statistics of the whole tensor over its tile cores (each element
    must be visited exactly once). Turn the sums into mean / rstd with :func:`group_norm_finalize`.
    """
    check_groups(x, num_groups)
    if out is not None:
        check_tensor(out, "out", dtypes=(torch.float64,), ndim=3)
        if tuple(out.shape) != (x.shape[0], num_groups, 2):
            raise ValueError(f"out must have shape (N, num_groups, 2) = {(x.shape[0], num_groups, 2)}, "
                             f"got {tuple(out.shape)}")
        if out.device != x.device:
            raise ValueError(f"out is on {out.device} but x is on {x.device}")
    with torch.no_grad():
        s = _stats_op(x.detach(), num_groups)
        if out is None:
            return s
        out.add_(s)
    return out


def group_norm_finalize(stats: torch.Tensor, count_per_group, eps: float = 1e-6) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(mean, rstd)``, each (N, G) float32, from :func:`group_norm_stats` sums.

    ``count_per_group`` is the number of elements each (sample, group) sum covers, i.e.
    ``(C // G) * H * W`` of the whole tensor (an int, or a tensor broadcastable to (N, G)).
    ``rstd = 1 / sqrt(var + eps)`` with the biased variance, as torch.nn.functional.group_norm.
    """
    check_tensor(stats, "stats", dtypes=(torch.float64, torch.float32), ndim=3)
    if stats.shape[-1] != 2:
        raise ValueError(f"stats must have shape (N, G, 2), got {tuple(stats.shape)}")
    if isinstance(count_per_group, torch.Tensor):
        cnt = count_per_group.to(device=stats.device, dtype=torch.float64)
        if bool((cnt <= 0).any()):
            raise ValueError("count_per_group must be positive")
    else:
        if isinstance(count_per_group, bool) or not isinstance(count_per_group, (int, float)):
            raise TypeError(f"count_per_group must be an int or a tensor, got {count_per_group!r}")
        if not count_per_group > 0:
            raise ValueError(f"count_per_group must be positive, got {count_per_group}")
        cnt = float(count_per_group)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0:
        raise ValueError(f"eps must be a non-negative float, got {eps!r}")
    s = stats.to(torch.float64)
    mean = s[..., 0] / cnt
    var = (s[..., 1] / cnt - mean * mean).clamp_min(0.0)
    rstd = torch.rsqrt(var + float(eps))
    return mean.to(torch.float32), rstd.to(torch.float32)


def group_norm_apply(
    x: torch.Tensor,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    weight: Optional[torch.Tensor],
    bias: Optional[torch.Tensor],
    num_groups: int,
    silu: bool = False,
) -> torch.Tensor:
    """``(x - mean) * rstd * weight + bias`` per group (then SiLU if ``silu``), same dtype as ``x``.

    ``mean`` / ``rstd`` are (N, G) (e.g. from :func:`group_norm_finalize` of the whole tensor, so that a
    tile is normalised exactly as the whole); ``weight`` / ``bias`` are (C,) or None. With the statistics of
    ``x`` itself this equals ``F.group_norm(x, G, weight, bias, eps)`` (+ ``F.silu``) on x's device: for a
    16-bit ``x`` on CUDA the statistics are first rounded to x's dtype, as torch's CUDA kernel does
    (:func:`model_stats_dtype`). One fused Triton kernel
    (fp32 math) on CUDA; any strides. When a gradient is needed the differentiable torch path runs instead.
    """
    check_groups(x, num_groups)
    check_stats(x, mean, rstd, num_groups)
    check_affine(x, weight, bias)
    if not isinstance(silu, bool):
        raise TypeError(f"silu must be a bool, got {silu!r}")
    if needs_grad(x, mean, rstd, weight, bias, op="group_norm_apply"):
        return group_norm_apply_torch(x, mean, rstd, weight, bias, num_groups, silu)
    return _apply_op(x, mean, rstd, weight, bias, num_groups, silu)
