"""Per-patch gray-level co-occurrence matrices (GLCM), the paper's GLCM Score, graycoprops.

Public API
----------
``glcm(q, patch=64, distances=(1,2,3,4), angles=(0, pi/4, pi/2, 3pi/4), levels=64, symmetric=False, normed=False)``
    Co-occurrence counts of non-overlapping ``patch x patch`` patches (row-major order) of an integer
    image ``(H, W)`` or batch ``(N, H, W)`` with values in ``[0, levels)``:
    ``(N, P, len(distances), len(angles), levels, levels)`` int32 (float64 with ``normed=True``);
    an unbatched ``(H, W)`` input drops the leading ``N``. Same offsets and layout (per slice) as
    ``skimage.feature.graycomatrix``: offset ``(round(sin a * d), round(cos a * d))``, halves away from 0.
``glcm_score(gray, size=2048, patch=64, levels=64, reduction="mean", distances=..., angles=...)``
    The paper's GLCM Score (docs/ops.md, GLCM Score and Compression Ratio) of 8-bit gray images ``(H, W)`` / ``(N, H, W)``:
    quantise ``g // (256 // levels)``, top-left ``size x size``, per patch the distinct-value entropy
    of the normed GLCM (skimage ``shannon_entropy``), computed exactly with integers (histogram of
    counts per slice, merged across slices by the reduced fraction ``c/N``); float64 ``(N,)``
    (``reduction="mean"``) or ``(N, P)`` (``"none"``); 0-d / ``(P,)`` for an unbatched input.
``graycoprops(P, prop, average=None)``  skimage 0.26's features of counts or normed GLCMs ``(..., L, L)``
    -> ``(...)``; ``average="distances" | "angles" | "all"`` averages over those axes.
``glcm_entropy(P, base=2, average=None)``  the true entropy ``-sum p log p`` of each normed slice.

Registered ops ``d4k::glcm_counts`` and ``d4k::glcm_patch_scores`` (torch.compile sees one opaque op
each; integer inputs, so no autograd). Each picks its implementation with
:func:`d4k_kernels.backend.choose` from ``backend.OPS``: Triton kernels (CUDA, or CPU under the
interpreter; ops/_glcm_triton.py), the compiled C++ kernel (csrc/glcm.cpp, OpenMP over patches via
at::parallel_for) for CPU tensors, and a vectorised torch fallback (any device) when the extension
cannot be built. On CUDA the score runs the compiled CUDA kernel (csrc/glcm_cuda.cu: one thread
block per patch, shared-memory atomics; built at first use) when it builds and the configuration
fits shared memory (:func:`cuda_choice`), else Triton.

Settings (d4k_kernels.settings): ``D4K_GLCM_CUDA=0`` never uses (or builds) the CUDA kernel;
``D4K_GLCM_CUDA_THREADS=256|512|1024`` (default 512) threads per block; ``D4K_GLCM_CUDA_NACC16=0``
keeps the per-patch multiplicities in 32 bits even where 16 bits are exact (see the .cu file).
``D4K_GLCM_KERNEL=hist|dot`` picks the Triton counting kernel (:func:`counting_kernel`).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch

from .. import backend, settings
from .._checks import check_choice, check_int, check_tensor

__all__ = ["glcm", "glcm_score", "graycoprops", "glcm_entropy", "offsets_of", "counting_kernel", "cuda_choice",
           "PAPER_DISTANCES", "PAPER_ANGLES"]

PAPER_DISTANCES = (1, 2, 3, 4)
PAPER_ANGLES = (0.0, math.pi / 4, math.pi / 2, 3 * math.pi / 4)

_INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
PROPS = ("contrast", "dissimilarity", "homogeneity", "energy", "correlation", "ASM", "mean", "variance", "std",
         "entropy")


# ----------------------------------------------------------------------------------------------
# offsets and the exact-entropy plan
# ----------------------------------------------------------------------------------------------
def _round_half_away(x: float) -> int:
    a = abs(x)
    r = math.floor(a)
    if a - r >= 0.5:  # exact: a - floor(a) has no rounding error
        r += 1
    return int(r) if x >= 0 else -int(r)


def offsets_of(distances: Sequence[float], angles: Sequence[float]) -> List[Tuple[int, int]]:
    """(row, col) offset of each slice, distances outer, angles inner (skimage's rounding)."""
    out = []
    for d in distances:
        for a in angles:
            out.append((_round_half_away(math.sin(float(a)) * float(d)), _round_half_away(math.cos(float(a)) * float(d))))
    return out


def _as_floats(v, name: str) -> Tuple[float, ...]:
    if isinstance(v, torch.Tensor):
        v = v.tolist()
    try:
        vals = tuple(float(x) for x in (v if isinstance(v, (list, tuple, np.ndarray)) else [v]))
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a sequence of numbers, got {v!r}") from None
    if not vals:
        raise ValueError(f"{name} must not be empty")
    if any(not math.isfinite(x) for x in vals):
        raise ValueError(f"{name} must be finite, got {vals}")
    return vals


@dataclass(frozen=True, eq=False)  # hashed by identity: plans are cached by _plan
class _Plan:
    patch: int
    levels: int
    slice_offsets: Tuple[Tuple[int, int], ...]   # per slice (S)
    uoffsets: Tuple[Tuple[int, int], ...]        # distinct offsets (U)
    slice_to_u: Tuple[int, ...]                  # S -> U
    mult: Tuple[int, ...]                        # slices per distinct offset
    totals: Tuple[int, ...]                      # pairs per distinct offset, N_u
    keytab: np.ndarray                           # (U, Nmax+1) int32: id of the reduced fraction c/N_u
    nkeys: int                                   # K (key 0 is the value 0)

    @property
    def cells(self) -> int:                      # T = levels^2 * slices
        return self.levels * self.levels * len(self.slice_offsets)


@functools.lru_cache(maxsize=64)
def _plan(patch: int, slice_offsets: Tuple[Tuple[int, int], ...], levels: int) -> _Plan:
    uoff: List[Tuple[int, int]] = []
    s2u = []
    for o in slice_offsets:
        if o not in uoff:
            uoff.append(o)
        s2u.append(uoff.index(o))
    mult = [s2u.count(u) for u in range(len(uoff))]
    totals = [max(0, patch - abs(dr)) * max(0, patch - abs(dc)) for dr, dc in uoff]
    nmax = max(totals)
    num = np.zeros((len(uoff), nmax + 1), dtype=np.int64)
    den = np.ones((len(uoff), nmax + 1), dtype=np.int64)
    valid = np.zeros((len(uoff), nmax + 1), dtype=bool)
    for u, n in enumerate(totals):
        c = np.arange(n + 1, dtype=np.int64)
        if n == 0:
            c = c[:1]
        g = np.gcd(c, max(n, 1))
        num[u, : len(c)] = c // g
        den[u, : len(c)] = max(n, 1) // g
        valid[u, : len(c)] = True
    code = num * (nmax + 2) + den                       # unique per reduced fraction (num, den <= nmax)
    code[~valid] = 1                                    # unused entries: the value 0 (0/1)
    uniq, inv = np.unique(code, return_inverse=True)    # uniq[0] == code of 0/1 == 1
    assert uniq[0] == 1
    keytab = inv.reshape(code.shape).astype(np.int32)
    return _Plan(patch, levels, tuple(slice_offsets), tuple(uoff), tuple(s2u), tuple(mult), tuple(totals),
                 keytab, int(len(uniq)))


@functools.lru_cache(maxsize=64)
def _device_tables(plan: _Plan, device: torch.device):
    """keytab (U, Nmax+1) int32, mult (U,) int32, flog (T+1,) float64 with flog[n] = n log2 n,
    offsets (U, 2) int32, on ``device``."""
    n = torch.arange(plan.cells + 1, dtype=torch.float64)
    flog = n * torch.log2(n.clamp_min(1))
    return (
        torch.from_numpy(plan.keytab).to(device),
        torch.tensor(plan.mult, dtype=torch.int32, device=device),
        flog.to(device),
        torch.tensor(plan.uoffsets, dtype=torch.int32, device=device).reshape(-1, 2),
    )


def _flat(offs) -> List[int]:
    return [int(v) for o in offs for v in o]


def _unflat(flat: Sequence[int]) -> Tuple[Tuple[int, int], ...]:
    return tuple((int(flat[i]), int(flat[i + 1])) for i in range(0, len(flat), 2))


class ScoreTables(NamedTuple):
    """What the Triton and CUDA score kernels read: the distinct offsets that can pair inside a patch
    (the others count nothing), their rows of the fraction-id table and their multiplicities."""

    count: int                 # number of such offsets (0: every offset reaches past the patch)
    offsets: torch.Tensor      # (max(count, 1), 2) int32
    keytab: torch.Tensor       # (max(count, 1), Nmax+1) int32
    mult: torch.Tensor         # (max(count, 1),) int32
    zeros_extra: int           # cells of the dropped offsets' slices: all hold the value 0


_SCORE_TABLES: dict = {}


def _score_tables(plan: _Plan, device: torch.device) -> ScoreTables:
    """The plan's :class:`ScoreTables` on ``device`` (cached per plan and device: no host-to-device
    copies per call)."""
    key = (id(plan), str(device))
    hit = _SCORE_TABLES.get(key)
    if hit is not None and hit[0] is plan:
        return hit[1]
    keytab, mult, _, _ = _device_tables(plan, device)
    kept = [u for u, (dr, dc) in enumerate(plan.uoffsets) if abs(dr) < plan.patch and abs(dc) < plan.patch]
    kidx = torch.tensor(kept or [0], dtype=torch.long, device=device)
    zeros_extra = sum(plan.mult[u] for u in range(len(plan.uoffsets)) if u not in kept) * plan.levels * plan.levels
    val = ScoreTables(
        count=len(kept),
        offsets=torch.tensor([plan.uoffsets[u] for u in kept] or [(0, 0)], dtype=torch.int32, device=device),
        keytab=keytab.index_select(0, kidx).contiguous(),
        mult=mult.index_select(0, kidx).contiguous(),
        zeros_extra=zeros_extra,
    )
    _SCORE_TABLES[key] = (plan, val)
    return val


# ----------------------------------------------------------------------------------------------
# torch fallback (any device)
# ----------------------------------------------------------------------------------------------
def _patches(q: torch.Tensor, patch: int) -> torch.Tensor:
    n, h, w = q.shape
    return q.reshape(n, h // patch, patch, w // patch, patch).permute(0, 1, 3, 2, 4).reshape(-1, patch, patch)


def _torch_counts_chunk(x: torch.Tensor, plan: _Plan) -> torch.Tensor:
    """x: (B, p, p) int64 quantised patches -> (B, U, L*L) int64 counts (one bincount)."""
    b, p, _ = x.shape
    L = plan.levels
    U = len(plan.uoffsets)
    pair = x * L                                           # q1 * L, shared by every offset
    codes = []
    for u, (dr, dc) in enumerate(plan.uoffsets):
        r0, r1 = max(0, -dr), min(p, p - dr)
        c0, c1 = max(0, -dc), min(p, p - dc)
        if r1 <= r0 or c1 <= c0:
            continue
        base = ((torch.arange(b, device=x.device) * U + u) * (L * L)).view(b, 1, 1)
        codes.append((base + pair[:, r0:r1, c0:c1] + x[:, r0 + dr:r1 + dr, c0 + dc:c1 + dc]).reshape(-1))
    if not codes:
        return torch.zeros(b, U, L * L, dtype=torch.int64, device=x.device)
    return torch.bincount(torch.cat(codes), minlength=b * U * L * L).view(b, U, L * L)


def _chunk_size(plan: _Plan, device: torch.device) -> int:
    """Patches per chunk: on the CPU the temporaries of a chunk should stay in cache (~2 MB each;
    4 patches measured ~1.8x faster than 48 here), on a GPU large chunks amortise launches."""
    per = len(plan.uoffsets) * plan.levels * plan.levels * 8
    budget = (2 << 20) if device.type == "cpu" else (64 << 20)
    return max(1, min(256, budget // per))


def _torch_counts(g: torch.Tensor, plan: _Plan, qdiv: int) -> torch.Tensor:
    x = _patches(g.to(torch.int64) // qdiv, plan.patch)
    L = plan.levels
    out = torch.empty(x.shape[0], len(plan.uoffsets), L * L, dtype=torch.int32, device=g.device)
    cs = _chunk_size(plan, g.device)
    for s in range(0, x.shape[0], cs):
        out[s:s + cs] = _torch_counts_chunk(x[s:s + cs], plan)
    return out.view(g.shape[0], _num_patches(g, plan.patch), len(plan.uoffsets), L, L)


def _entropy_from_counts(cnt: torch.Tensor, plan: _Plan, flog: torch.Tensor) -> torch.Tensor:
    """cnt: (B, U, L*L) integer counts of distinct offsets -> (B,) float64 distinct-value entropy.

    Each cell's count c of offset u maps to the id of the reduced fraction c/N_u (a table gather);
    one weighted bincount over (patch, id) gives the multiplicity of every merged value."""
    b, U, LL = cnt.shape
    K = plan.nkeys
    dev = cnt.device
    keys = torch.gather(_keytab_long(plan, dev).unsqueeze(0).expand(b, -1, -1), 2, cnt)        # (B, U, LL)
    keys += (torch.arange(b, device=dev) * K).view(b, 1, 1)
    n = torch.bincount(keys.reshape(-1), minlength=b * K)
    for m in sorted(set(plan.mult) - {1}):                  # offsets shared by m slices count m times
        us = [u for u in range(U) if plan.mult[u] == m]
        n += (m - 1) * torch.bincount(keys[:, us].reshape(-1), minlength=b * K)
    s = flog[n].view(b, K).sum(1)
    T = plan.cells
    return math.log2(T) - s / T


@functools.lru_cache(maxsize=64)
def _keytab_long(plan: _Plan, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(plan.keytab.astype(np.int64)).to(device)


def _torch_scores(g: torch.Tensor, plan: _Plan, qdiv: int) -> torch.Tensor:
    flog = _device_tables(plan, g.device)[2]
    x = _patches(g.to(torch.int64) // qdiv, plan.patch)
    out = torch.empty(x.shape[0], dtype=torch.float64, device=g.device)
    cs = _chunk_size(plan, g.device)
    for s in range(0, x.shape[0], cs):
        out[s:s + cs] = _entropy_from_counts(_torch_counts_chunk(x[s:s + cs], plan), plan, flog)
    return out.view(g.shape[0], _num_patches(g, plan.patch))


# ----------------------------------------------------------------------------------------------
# compiled CPU path
# ----------------------------------------------------------------------------------------------
def _cpp_counts(g, plan, qdiv):
    ext = backend.extension("glcm")
    _, _, _, offs = _device_tables(plan, g.device)
    out = ext.glcm_counts(_as_u8(g), plan.patch, offs, plan.levels, qdiv)
    return out.view(g.shape[0], _num_patches(g, plan.patch), len(plan.uoffsets), plan.levels, plan.levels)


def _cpp_scores(g, plan, qdiv):
    ext = backend.extension("glcm")
    keytab, mult, flog, offs = _device_tables(plan, g.device)
    out = ext.glcm_scores(_as_u8(g), plan.patch, offs, mult, keytab, flog, plan.levels, qdiv, plan.nkeys)
    return out.view(g.shape[0], _num_patches(g, plan.patch))


def _as_u8(g: torch.Tensor) -> torch.Tensor:
    return g if g.dtype == torch.uint8 else g.to(torch.uint8)


# ----------------------------------------------------------------------------------------------
# Triton path
# ----------------------------------------------------------------------------------------------
def counting_kernel() -> str:
    """The Triton counting kernel in force: "hist" (tl.histogram) or "dot" (one-hot int8 dot). Dot on
    GPUs (about twice as fast on an H200, bench/NOTES_glcm.md), hist under the interpreter, unless
    D4K_GLCM_KERNEL says otherwise. (The dot kernel also runs where hist's bins would not fit.)"""
    cfg = settings.current()
    return cfg.glcm_kernel or ("hist" if cfg.interpreter else "dot")


def _triton_counts(g, plan, qdiv):
    from ._glcm_triton import triton_counts

    offs = _device_tables(plan, g.device)[3]
    return triton_counts(g, plan, qdiv, offs, counting_kernel()).view(g.shape[0], _num_patches(g, plan.patch), len(plan.uoffsets),
                                                   plan.levels, plan.levels)


def _triton_scores(g, plan, qdiv):
    from ._glcm_triton import triton_scores

    out = triton_scores(g, plan, qdiv, _device_tables(plan, g.device)[2], _score_tables(plan, g.device),
                        counting_kernel())
    return out.view(g.shape[0], _num_patches(g, plan.patch))


# ----------------------------------------------------------------------------------------------
# CUDA kernel for the score (csrc/glcm_cuda.cu + bindings/glcm_cuda.cpp), built at first use
# ----------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=64)
def _nacc16_exact(plan: _Plan) -> bool:
    """Whether no value multiplicity of a patch can exceed 65535 (16-bit counters are exact): the
    zeros are at most T minus one cell per slice that has pairs, the cells of any other value at
    most sum over slices of min(L*L, N_s) (one cell per pair at most)."""
    cells = plan.levels * plan.levels
    ns = [plan.totals[u] for u in plan.slice_to_u]
    bound = max(plan.cells - sum(1 for n in ns if n > 0), sum(min(cells, n) for n in ns))
    return bound <= 0xFFFF


_SMEM: dict = {}


def _fits(impl: str, device: torch.device, plan: _Plan, ext) -> bool:
    """Whether the CUDA kernel can compute the score of ``plan`` on ``device`` (other implementations
    always can): the patch's tables fit the device's shared memory per block (opt-in limit) and its
    indices fit 32 bits."""
    if impl != "cuda":
        return True
    if plan.cells >= 2 ** 31 or plan.nkeys >= 2 ** 30:
        return False
    nacc16 = _cuda_nacc16(plan)
    idx = device.index if device.index is not None else torch.cuda.current_device()
    key = (idx, plan.patch, plan.levels, plan.nkeys, nacc16)
    fits = _SMEM.get(key)
    if fits is None:
        need = int(ext.smem_bytes(plan.patch, plan.levels, plan.nkeys, nacc16))
        fits = _SMEM[key] = need <= int(ext.max_smem(idx))
    return fits


def _cuda_nacc16(plan: _Plan) -> bool:
    return _nacc16_exact(plan) and settings.current().glcm_cuda_nacc16


def _score_impl(device: torch.device, plan: _Plan) -> str:
    """The implementation of ``d4k::glcm_patch_scores`` for ``plan`` on ``device``."""
    return backend.choose("glcm_patch_scores", device, fits=lambda impl, ext: _fits(impl, device, plan, ext))


def _cuda_config(device: torch.device, plan: _Plan):
    return backend.extension("glcm_cuda", device), settings.current().glcm_cuda_threads, _cuda_nacc16(plan)


def cuda_choice(device: torch.device, plan: _Plan):
    """(extension, threads per block, 16-bit multiplicities) when the CUDA kernel computes the score
    of ``plan`` on ``device`` (what :func:`d4k_kernels.backend.choose` picks for it), else None (the
    Triton kernel runs, or a CPU path for a CPU device)."""
    return _cuda_config(device, plan) if _score_impl(device, plan) == "cuda" else None


def _cuda_scores(g, plan, qdiv, choice):
    ext, threads, nacc16 = choice
    flog = _device_tables(plan, g.device)[2]
    t = _score_tables(plan, g.device)   # the same offset selection and tables as the Triton path
    with torch.cuda.device(g.device):
        stream = torch.cuda.current_stream(g.device).cuda_stream
        s = ext.glcm_scores(_as_u8(g), plan.patch, t.offsets, t.count, t.mult, t.keytab, flog, plan.levels, qdiv,
                            plan.nkeys, t.zeros_extra, threads, nacc16, stream)
    T = plan.cells
    out = math.log2(T) - s / T        # the same finishing step as the Triton path
    return out.view(g.shape[0], _num_patches(g, plan.patch))


# ----------------------------------------------------------------------------------------------
# registered ops (torch.compile sees one opaque op; integer outputs carry no gradient)
# ----------------------------------------------------------------------------------------------
def _num_patches(g: torch.Tensor, patch: int) -> int:
    return (g.shape[-2] // patch) * (g.shape[-1] // patch)


@torch.library.custom_op("d4k::glcm_counts", mutates_args=())
def _glcm_counts_op(g: torch.Tensor, patch: int, offsets: List[int], levels: int, qdiv: int) -> torch.Tensor:
    """(N, H, W) integer image -> (N, P, U, L, L) int32 counts of the distinct offsets."""
    plan = _plan(patch, _unflat(offsets), levels)
    impl = backend.choose("glcm_counts", g)
    if impl == "triton":
        return _triton_counts(g, plan, qdiv)
    return _cpp_counts(g, plan, qdiv) if impl == "cpp" else _torch_counts(g, plan, qdiv)


@_glcm_counts_op.register_fake
def _(g, patch, offsets, levels, qdiv):
    u = len(set(_unflat(offsets)))
    return g.new_empty((g.shape[0], _num_patches(g, patch), u, levels, levels), dtype=torch.int32)


@torch.library.custom_op("d4k::glcm_patch_scores", mutates_args=())
def _glcm_scores_op(g: torch.Tensor, patch: int, offsets: List[int], levels: int, qdiv: int) -> torch.Tensor:
    """(N, H, W) integer image -> (N, P) float64 distinct-value GLCM entropy per patch."""
    plan = _plan(patch, _unflat(offsets), levels)
    impl = _score_impl(g.device, plan)
    if impl == "cuda":
        return _cuda_scores(g, plan, qdiv, _cuda_config(g.device, plan))
    if impl == "triton":
        return _triton_scores(g, plan, qdiv)
    return _cpp_scores(g, plan, qdiv) if impl == "cpp" else _torch_scores(g, plan, qdiv)


@_glcm_scores_op.register_fake
def _(g, patch, offsets, levels, qdiv):
    return g.new_empty((g.shape[0], _num_patches(g, patch)), dtype=torch.float64)


# ----------------------------------------------------------------------------------------------
# public functions
# ----------------------------------------------------------------------------------------------
def _check_image(x, name: str) -> Tuple[torch.Tensor, bool]:
    check_tensor(x, name, dtypes=_INT_DTYPES)
    if x.dim() not in (2, 3):
        raise ValueError(f"{name} must be (H, W) or (N, H, W), got shape {tuple(x.shape)}")
    unbatched = x.dim() == 2
    return (x.unsqueeze(0) if unbatched else x), unbatched


def _check_range(x: torch.Tensor, name: str, hi: int, what: str) -> None:
    if x.numel() == 0:
        return
    lo_v, hi_v = torch.aminmax(x)
    lo_v, hi_v = int(lo_v), int(hi_v)
    if lo_v < 0:
        raise ValueError(f"{name} has value {lo_v} < 0; {what} must be in [0, {hi})")
    if hi_v >= hi:
        raise ValueError(f"{name} has value {hi_v} >= {hi}; {what} must be in [0, {hi})")


def _check_patch_geometry(h: int, w: int, patch: int, name: str) -> None:
    if h % patch or w % patch:
        raise ValueError(f"{name} has size {h}x{w}, which is not a multiple of patch={patch}")


def _check_config(patch, levels, distances, angles):
    check_int(patch, "patch", lo=1)
    check_int(levels, "levels", lo=1, hi=256)
    d = _as_floats(distances, "distances")
    a = _as_floats(angles, "angles")
    return tuple(offsets_of(d, a)), len(d), len(a)


def glcm(
    q: torch.Tensor,
    patch: int = 64,
    distances: Sequence[float] = PAPER_DISTANCES,
    angles: Sequence[float] = PAPER_ANGLES,
    levels: int = 64,
    symmetric: bool = False,
    normed: bool = False,
) -> torch.Tensor:
    """Per-patch co-occurrence counts, ``(N, P, nd, na, levels, levels)`` (see the module doc)."""
    x, unbatched = _check_image(q, "q")
    offs, nd, na = _check_config(patch, levels, distances, angles)
    _check_patch_geometry(x.shape[-2], x.shape[-1], patch, "q")
    _check_range(x, "q", levels, f"values of q (levels={levels})")
    plan = _plan(patch, offs, levels)
    cu = _glcm_counts_op(x, patch, _flat(offs), levels, 1)                      # (N, P, U, L, L)
    idx = torch.tensor(plan.slice_to_u, device=cu.device)
    c = cu.index_select(2, idx).view(cu.shape[0], cu.shape[1], nd, na, levels, levels)
    if symmetric:
        c = c + c.transpose(-1, -2)
    if normed:
        c = c.to(torch.float64)
        s = c.sum((-2, -1), keepdim=True)
        c = c / torch.where(s == 0, torch.ones_like(s), s)
    return c[0] if unbatched else c


def glcm_score(
    gray: torch.Tensor,
    size: int = 2048,
    patch: int = 64,
    levels: int = 64,
    reduction: str = "mean",
    distances: Sequence[float] = PAPER_DISTANCES,
    angles: Sequence[float] = PAPER_ANGLES,
) -> torch.Tensor:
    """The paper's GLCM Score of 8-bit gray images (see the module doc), float64 on gray's device."""
    x, unbatched = _check_image(gray, "gray")
    check_int(size, "size", lo=1)
    offs, _, _ = _check_config(patch, levels, distances, angles)
    check_choice(reduction, "reduction", ("mean", "none"))
    if 256 % levels:
        raise ValueError(f"levels must divide 256 (quantisation g // (256 // levels)), got levels={levels}")
    if size % patch:
        raise ValueError(f"size={size} is not a multiple of patch={patch}")
    h, w = x.shape[-2], x.shape[-1]
    if h < size or w < size:
        raise ValueError(f"gray is {h}x{w}, smaller than size={size}x{size}")
    if x.dtype != torch.uint8:
        _check_range(x, "gray", 256, "8-bit gray values")
    x = x[:, :size, :size]
    s = _glcm_scores_op(x, patch, _flat(offs), levels, 256 // levels)            # (N, P)
    if reduction == "mean":
        s = s.mean(1)
    return s[0] if unbatched else s


def _normed(P: torch.Tensor) -> torch.Tensor:
    check_tensor(P, "P", min_dim=2)
    if P.shape[-1] != P.shape[-2]:
        raise ValueError(f"P must end in (levels, levels), got shape {tuple(P.shape)}")
    if P.is_complex():
        raise TypeError(f"P has dtype {P.dtype}; expected real counts or probabilities")
    P = P.to(torch.float64)
    s = P.sum((-2, -1), keepdim=True)
    return P / torch.where(s == 0, torch.ones_like(s), s)


_AVERAGE = {None: (), "distances": (-2,), "angles": (-1,), "all": (-2, -1)}


def _average(x: torch.Tensor, average: Optional[str]) -> torch.Tensor:
    dims = _AVERAGE[average]
    if dims and x.dim() < 2:
        raise ValueError(f"average={average!r} needs (..., nd, na) GLCMs, got result shape {tuple(x.shape)}")
    return x.mean(dims) if dims else x


def graycoprops(P: torch.Tensor, prop: str = "contrast", average: Optional[str] = None) -> torch.Tensor:
    """skimage 0.26 ``graycoprops`` of counts / normed GLCMs shaped ``(..., L, L)`` -> ``(...)`` float64.

    (skimage's own layout is (L, L, nd, na); here the matrices are the last two dims, as ``glcm``
    returns them, so the result is (..., nd, na).) ``entropy`` is skimage's: natural log.
    ``average``: None, "distances", "angles" or "all" (mean over those axes of (..., nd, na))."""
    check_choice(prop, "prop", PROPS)
    check_choice(average, "average", tuple(_AVERAGE))
    return _average(_graycoprops(_normed(P), prop), average)


def _graycoprops(P: torch.Tensor, prop: str) -> torch.Tensor:
    L = P.shape[-1]
    I = torch.arange(L, dtype=torch.float64, device=P.device).view(L, 1)
    J = torch.arange(L, dtype=torch.float64, device=P.device).view(1, L)
    if prop == "contrast":
        return (P * (I - J) ** 2).sum((-2, -1))
    if prop == "dissimilarity":
        return (P * (I - J).abs()).sum((-2, -1))
    if prop == "homogeneity":
        return (P / (1.0 + (I - J) ** 2)).sum((-2, -1))
    if prop == "ASM":
        return (P * P).sum((-2, -1))
    if prop == "energy":
        return (P * P).sum((-2, -1)).sqrt()
    mean_i = (I * P).sum((-2, -1))
    if prop == "mean":
        return mean_i
    if prop in ("variance", "std"):
        var = (P * (I - mean_i[..., None, None]) ** 2).sum((-2, -1))
        return var if prop == "variance" else var.sqrt()
    if prop == "entropy":
        return -(P * torch.where(P > 0, torch.log(P), torch.zeros_like(P))).sum((-2, -1))
    # correlation
    di = I - mean_i[..., None, None]
    dj = J - (J * P).sum((-2, -1))[..., None, None]
    std_i = (P * di ** 2).sum((-2, -1)).sqrt()
    std_j = (P * dj ** 2).sum((-2, -1)).sqrt()
    cov = (P * di * dj).sum((-2, -1))
    flat = (std_i < 1e-15) | (std_j < 1e-15)
    return torch.where(flat, torch.ones_like(cov), cov / torch.where(flat, torch.ones_like(std_i), std_i * std_j))


def glcm_entropy(P: torch.Tensor, base: float = 2.0, average: Optional[str] = None) -> torch.Tensor:
    """True entropy ``-sum p log_base p`` of each normed GLCM ``(..., L, L)`` -> ``(...)`` float64
    (``average`` as in :func:`graycoprops`)."""
    check_choice(average, "average", tuple(_AVERAGE))
    P = _normed(P)
    lp = torch.where(P > 0, torch.log2(P), torch.zeros_like(P))
    h = -(P * lp).sum((-2, -1))
    return _average(h if base == 2 else h / math.log2(base), average)
