"""Benchmark cases for attention at head dims up to 512 (ops/attention.py): d4k beside torch SDPA's
backends (``torch.nn.attention.sdpa_kernel``: flash, memory-efficient, cuDNN, math) and flash-attn
where it is installed. A backend that cannot run a shape (flash and cuDNN stop at head dim 256; math
holds the whole score matrix) is left out of that group, found by a probe call on a tiny input.

CUDA, bf16: the VAE mid-block (one head of 512) at a 4096^2 Flux image (a 512^2 latent, N = 262144)
      and at 8192^2 (N = 1048576, timed on 1/16 of the queries against all the keys: the same kernel,
      16x shorter), (1, 1, 16384, 512) in bf16 and fp32, DiT-like heads (1, 8, 16384, 128) and
      (1, 4, 16384, 256); at the 4096^2 shape also the kernel's other tilings ("d4k cfg ...") and
      d4k with the head dim split in one program ("d4k split=1").
CPU:  (1, 1, 1024, 512) and (1, 4, 1024, 64) fp32 (the d4k CPU path is chunked SDPA).
quick: (1, 1, 64, 512) and (1, 2, 96, 64) fp32.

:func:`flops` gives a group's matrix FLOPs (4 * M * N * D per head), from which bench_attention.py
reports TFLOP/s; bench/NOTES_attention.md has the roofline.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F

from . import Case

_FLOPS: Dict[str, float] = {}


def flops(group: str) -> Optional[float]:
    """The matrix FLOPs of one call in ``group`` (None for a group not made by :func:`cases`)."""
    return _FLOPS.get(group)


def _sdpa(backend_name: Optional[str]) -> Callable:
    """F.scaled_dot_product_attention restricted to one SDPA backend (None: torch's own choice)."""
    if backend_name is None:
        return F.scaled_dot_product_attention
    from torch.nn.attention import SDPBackend, sdpa_kernel

    which = getattr(SDPBackend, backend_name)

    def run(q, k, v):
        with sdpa_kernel(which):
            return F.scaled_dot_product_attention(q, k, v)

    return run


def _runs(fn: Callable, D: int, dtype: torch.dtype, device: torch.device) -> bool:
    """Whether ``fn`` accepts (1, 1, 16, D) inputs of this dtype on this device (a backend's shape limits)."""
    t = torch.zeros(1, 1, 16, D, dtype=dtype, device=device)
    try:
        fn(t, t, t)
    except RuntimeError:   # "No available kernel" / "No viable backend": this backend cannot run the shape
        return False
    return True


def _flash_attn():
    """flash-attn's (B, N, H, D) function taking (B, H, N, D) views, or None when not installed."""
    try:
        from flash_attn import flash_attn_func
    except ImportError:
        return None
    return lambda q, k, v: flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)


def _group(label: str, B: int, H: int, M: int, N: int, D: int, dtype: torch.dtype, device: torch.device,
           peers: List[Optional[str]], extra_d4k: bool = False) -> List[Case]:
    from ..ops import _attention_triton as AT
    from ..ops.attention import attention

    gen = torch.Generator(device="cpu").manual_seed(0)
    q = torch.randn(B, H, M, D, generator=gen).to(device, dtype)
    k = torch.randn(B, H, N, D, generator=gen).to(device, dtype)
    v = torch.randn(B, H, N, D, generator=gen).to(device, dtype)
    name = str(dtype).replace("torch.", "")
    group = f"{label} attention q{(B, H, M, D)} kv{(B, H, N, D)} {name}"
    _FLOPS[group] = 4.0 * B * H * M * N * D
    size = q.element_size()
    moved = (2 * B * H * M * D + 2 * B * H * N * D) * size     # q and o once, k and v once
    note = f"{_FLOPS[group] / 1e12:.2f} TFLOP"
    out = [Case(group, "d4k", lambda: attention(q, k, v), moved, note, graph=False)]
    if extra_d4k and device.type == "cuda":
        scale = 1.0 / math.sqrt(D)
        base = AT.config_for(D, dtype, device)
        for cfg in (AT.Config(128, 16, 8, 3, 2), AT.Config(128, 32, 8, 1, 2), AT.Config(128, 64, 8, 1, 2),
                    AT.Config(64, 32, 8, 2, 1), AT.Config(64, 16, 8, 2, 1)):
            if cfg != base:
                tag = "split=1" if cfg.split == 1 else "cfg"
                out.append(Case(group, f"d4k {tag} {tuple(cfg)[:5]}", lambda c=cfg: AT.attention_triton(q, k, v, scale, c),
                                moved, note, graph=False))
    for peer in peers:
        fn = _flash_attn() if peer == "flash-attn" else _sdpa(peer)
        if fn is not None and _runs(fn, D, dtype, device):
            impl = "flash-attn" if peer == "flash-attn" else "sdpa" if peer is None else f"sdpa {peer.lower()}"
            out.append(Case(group, impl, lambda f=fn: f(q, k, v), moved, note, graph=False))
    return out


def cases(device: torch.device, quick: bool = False) -> List[Case]:
    if device.type == "cuda" and not quick:
        bf = torch.bfloat16
        gpu_peers = ["FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "flash-attn"]
        return (
            _group("VAE mid-block 4096^2", 1, 1, 262144, 262144, 512, bf, device, gpu_peers, extra_d4k=True)
            + _group("VAE mid-block 8192^2 (1/16 of the queries)", 1, 1, 65536, 1048576, 512, bf, device, gpu_peers)
            + _group("head 512", 1, 1, 16384, 16384, 512, bf, device, gpu_peers + ["MATH"])
            + _group("head 512", 1, 1, 16384, 16384, 512, torch.float32, device, ["EFFICIENT_ATTENTION", "MATH"])
            + _group("head 128", 1, 8, 16384, 16384, 128, bf, device, gpu_peers)
            + _group("head 256", 1, 4, 16384, 16384, 256, bf, device, gpu_peers)
        )
    cpu_peers = [None, "FLASH_ATTENTION", "MATH"]
    if quick:
        return (_group("tiny", 1, 1, 64, 64, 512, torch.float32, device, cpu_peers)
                + _group("tiny", 1, 2, 96, 96, 64, torch.float32, device, cpu_peers))
    return (_group("CPU", 1, 1, 1024, 1024, 512, torch.float32, device, cpu_peers)
            + _group("CPU", 1, 4, 1024, 1024, 64, torch.float32, device, cpu_peers))

