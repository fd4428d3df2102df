"""Scaled dot-product attention for head dims up to 512 (the VAE mid-block's single 512-wide head).

    o = attention(q, k, v, scale=None)     # softmax(q @ k^T * scale) @ v, scale = 1/sqrt(D) by default

q is (B, H, M, D), k and v (B, H, N, D); any strides; float32, bfloat16, float16 or float64. torch's
flash backend stops at head dim 256, so at D = 512 ``F.scaled_dot_product_attention`` runs its
memory-efficient kernel; this op runs a flash kernel made for D = 512 instead
(``ops/_attention_triton.py``: online softmax, fp32 accumulation, the whole head dim per program).

Dispatch (:func:`d4k_kernels.backend.choose`, op ``"attention"``): CUDA tensors run the Triton kernel
(bf16 / fp16 / fp32, D <= 512); CPU tensors, float64 inputs and head dims above 512 the torch path:
``F.scaled_dot_product_attention`` over chunks of query rows, each chunk's scores held to
``SCORE_BYTES`` (at the Flux VAE's 512^2 latent, N = 262144: 256 query rows at a time instead of the
whole 256 GiB N x N matrix). The op is registered as ``d4k::attention`` with its fake, so
``torch.compile`` sees one op. Decoding is inference: the kernel has no backward, and when a gradient
is needed (grad mode on, an input requires grad) the differentiable torch path runs instead.

docs/ops.md, "Attention (head dim up to 512)" has the numerics; bench/NOTES_attention.md the roofline.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from .. import backend
from .._checks import check_same, check_tensor
from ._attention_triton import MAX_HEAD_DIM, attention_triton

__all__ = ["attention", "SCORE_BYTES"]

SCORE_BYTES = 256 * 2**20    # the torch path's scores of one query chunk stay below this (fp32 bytes)
_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def _check(q, k, v, scale) -> float:
    for t, n in ((q, "q"), (k, "k"), (v, "v")):
        check_tensor(t, n, dtypes=_DTYPES, ndim=4)
    check_same((q, k, v), ("q", "k", "v"), shape=False, dtype=True)
    check_same((k, v), ("k", "v"))
    if q.shape[:2] != k.shape[:2]:
        raise ValueError(f"q and k must share (batch, heads): q has shape {tuple(q.shape)}, k {tuple(k.shape)}")
    if q.shape[3] != k.shape[3]:
        raise ValueError(f"q and k must share the head dim: q has shape {tuple(q.shape)}, k {tuple(k.shape)}")
    if q.shape[3] < 1:
        raise ValueError(f"the head dim must be >= 1, got q of shape {tuple(q.shape)}")
    if k.shape[2] < 1:
        raise ValueError(f"k and v need at least one key, got k of shape {tuple(k.shape)}")
    if scale is None:
        return 1.0 / math.sqrt(q.shape[3])
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"scale must be a finite float or None, got {scale!r}")
    return float(scale)


def _chunk_rows(q: torch.Tensor, k: torch.Tensor) -> int:
    """Query rows per torch-path chunk: the chunk's fp32 scores (B * H * rows * N) within SCORE_BYTES."""
    B, H, M, _ = q.shape
    return max(1, min(M, SCORE_BYTES // (4 * B * H * k.shape[2])))


def _attention_torch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """SDPA over chunks of query rows (bounded memory; differentiable)."""
    rows = _chunk_rows(q, k)
    if rows >= q.shape[2]:
        return F.scaled_dot_product_attention(q, k, v, scale=scale).contiguous()
    parts = [F.scaled_dot_product_attention(q[:, :, i:i + rows], k, v, scale=scale)
             for i in range(0, q.shape[2], rows)]
    return torch.cat(parts, dim=2)


# First use of the Triton kernel for a (device, dtype, head dim) on a GPU: it is checked once against the
# torch path on a small random problem (ragged sizes, so every edge mask runs). A kernel that fails to
# compile or disagrees warns once and that configuration runs the torch path from then on: a new GPU,
# driver or Triton version never gives a silently wrong decode.
_CHECKED: dict = {}
_SELF_CHECK_TOL = {torch.float32: 2e-3, torch.bfloat16: 3e-2, torch.float16: 5e-3}


def self_check(device: torch.device, dtype: torch.dtype, head_dim: int, kernel=None) -> bool:
    """Whether ``kernel`` (default: the Triton kernel) agrees with the torch path for this configuration,
    checked once per (device, dtype, head dim) and remembered; warns once when it does not."""
    key = (str(device), dtype, head_dim)
    ok = _CHECKED.get(key)
    if ok is not None:
        return ok
    gen = torch.Generator(device="cpu").manual_seed(0)
    q, k, v = (torch.randn(1, 2, n, head_dim, generator=gen).to(device=device, dtype=dtype) for n in (77, 131, 131))
    why = ""
    try:
        got = (kernel or attention_triton)(q, k, v, 1.0 / math.sqrt(head_dim)).float()
        want = _attention_torch(q.float(), k.float(), v.float(), 1.0 / math.sqrt(head_dim))
        err = (got - want).abs().max().item()
        ok = math.isfinite(err) and err <= _SELF_CHECK_TOL.get(dtype, 1e-6)
        if not ok:
            why = f"max abs error {err:.3g} against the torch path"
    except (RuntimeError, ValueError) as e:  # a compile / launch failure (triton raises RuntimeError subclasses)
        ok, why = False, f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
    if not ok:
        import warnings

        warnings.warn(f"d4k attention: the Triton kernel failed its first-use check on {device} "
                      f"({str(dtype).replace('torch.', '')}, head dim {head_dim}: {why}); this configuration "
                      "runs torch's scaled_dot_product_attention instead", RuntimeWarning, stacklevel=3)
    _CHECKED[key] = ok
    return ok


@torch.library.custom_op("d4k::attention", mutates_args=())
def _attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    if q.shape[3] <= MAX_HEAD_DIM and backend.choose("attention", q) == "triton":
        if q.device.type != "cuda" or self_check(q.device, q.dtype, q.shape[3]):
            return attention_triton(q, k, v, scale)
    return _attention_torch(q, k, v, scale)


@_attention_op.register_fake
def _(q, k, v, scale):
    return q.new_empty(q.shape)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: Optional[float] = None) -> torch.Tensor:
    """``softmax(q @ k^T * scale) @ v`` (no mask, no dropout), a contiguous (B, H, M, D) tensor in q's dtype.

    ``q``: (B, H, M, D); ``k``, ``v``: (B, H, N, D), N >= 1; one dtype (float32, bfloat16, float16,
    float64) and device for all three; any strides. ``scale``: defaults to ``1 / sqrt(D)``, as
    ``F.scaled_dot_product_attention``. On CUDA the flash kernel for D <= 512 (fp32 accumulation; fp32
    inputs in IEEE fp32); elsewhere chunked SDPA with bounded memory (see the module docstring).
    """
    s = _check(q, k, v, scale)
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        return _attention_torch(q, k, v, s)
    return _attention_op(q, k, v, s)
