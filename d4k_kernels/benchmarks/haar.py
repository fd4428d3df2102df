"""Benchmark cases for the Haar DWT / IDWT (ops/haar.py): d4k beside pytorch_wavelets, ptwt (fp32
only), plain torch and (on CUDA) plain torch under torch.compile.

CUDA (``CUDA_SHAPES``): 4K latent batches in bf16 at J = 1 and 3, an fp32 4096^2 image, one latent,
and the J = 1 inverse. CPU: (1, 16, 512, 512) fp32, J=1 and J=3, and the J=1 inverse (d4k runs its
"cpu" path there). quick: (1, 4, 64, 64) fp32 and no torch.compile peers.
bytes_moved = the input read once + every output written once.
"""
from __future__ import annotations

from typing import Callable, List, Tuple

import torch

from . import Case
from .. import backend
from ..reference.peers import optional


# ----------------------------------------------------------------------------------------------
# plain torch, as a user would write it (computes in the input dtype)
# ----------------------------------------------------------------------------------------------
def torch_dwt2(x: torch.Tensor, levels: int):
    yh = []
    ll = x
    for _ in range(levels):
        a, b = ll[..., 0::2, 0::2], ll[..., 0::2, 1::2]
        c, d = ll[..., 1::2, 0::2], ll[..., 1::2, 1::2]
        yh.append(torch.stack([(a + b - c - d) / 2, (a - b + c - d) / 2, (a - b - c + d) / 2], dim=-3))
        ll = (a + b + c + d) / 2
    return ll, yh


def torch_idwt2(yl: torch.Tensor, yh):
    ll = yl
    for d in reversed(yh):
        lh, hl, hh = d.unbind(-3)
        top = torch.stack([ll + lh + hl + hh, ll + lh - hl - hh], dim=-1) / 2
        bot = torch.stack([ll - lh + hl - hh, ll - lh - hl + hh], dim=-1) / 2
        ll = torch.stack([top, bot], dim=-3).flatten(-2).flatten(-3, -2)
    return ll


def _nbytes(shape, dtype) -> int:
    n = 1
    for s in shape:
        n *= s
    return n * torch.empty((), dtype=dtype).element_size()


def _coeff_bytes(shape, levels, dtype) -> int:
    lead, (h, w) = shape[:-2], shape[-2:]
    total = 0
    for _ in range(levels):
        h, w = (h + 1) // 2, (w + 1) // 2
        total += _nbytes(tuple(lead) + (3, h, w), dtype)
    return total + _nbytes(tuple(lead) + (h, w), dtype)


def _dname(dtype) -> str:
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def _d4k(fn: Callable, device: torch.device) -> Callable:
    if device.type == "cpu":       # the CPU path, even if the interpreter is on in this process
        def run():
            with backend.prefer("cpu"):
                return fn()
        return run
    return fn


def _dwt_cases(shape, levels, dtype, device, compile_peers) -> List[Case]:
    from ..ops.haar import dwt2

    group = f"dwt2 J={levels} ({','.join(map(str, shape))}) {_dname(dtype)}"
    x = torch.randn(shape, device=device).to(dtype)
    nbytes = _nbytes(shape, dtype) + _coeff_bytes(shape, levels, dtype)
    out = [Case(group, "d4k", _d4k(lambda: dwt2(x, levels, "zero"), device), nbytes)]
    ptw = optional("pytorch_wavelets")
    if ptw is not None:
        m = ptw.DWTForward(J=levels, wave="haar", mode="zero").to(device=device, dtype=dtype)
        out.append(Case(group, "pytorch_wavelets", lambda: m(x), nbytes))
    ptwt = optional("ptwt")
    if ptwt is not None and dtype == torch.float32:
        out.append(Case(group, "ptwt", lambda: ptwt.wavedec2(x, "haar", mode="zero", level=levels), nbytes))
    out.append(Case(group, "torch", lambda: torch_dwt2(x, levels), nbytes))
    if compile_peers:
        cf = torch.compile(torch_dwt2, dynamic=False)   # static shapes: no automatic-dynamic recompile
        out.append(Case(group, "torch.compile", lambda: cf(x, levels), nbytes))
    return out


def _idwt_cases(shape, levels, dtype, device, compile_peers) -> List[Case]:
    from ..ops.haar import dwt2, idwt2

    group = f"idwt2 J={levels} ({','.join(map(str, shape))}) {_dname(dtype)}"
    x = torch.randn(shape, device=device).to(dtype)
    with backend.prefer("cpu"):
        yl, yh = dwt2(x, levels)
    nbytes = _nbytes(shape, dtype) + _coeff_bytes(shape, levels, dtype)
    out = [Case(group, "d4k", _d4k(lambda: idwt2((yl, yh)), device), nbytes)]
    ptw = optional("pytorch_wavelets")
    if ptw is not None:
        m = ptw.DWTInverse(wave="haar", mode="zero").to(device=device, dtype=dtype)
        out.append(Case(group, "pytorch_wavelets", lambda: m((yl, yh)), nbytes))
    ptwt = optional("ptwt")
    if ptwt is not None and dtype == torch.float32:
        from ..ops.haar import to_pywt

        pc = to_pywt(yl, yh)
        out.append(Case(group, "ptwt", lambda: ptwt.waverec2(pc, "haar"), nbytes))
    out.append(Case(group, "torch", lambda: torch_idwt2(yl, yh), nbytes))
    if compile_peers:
        cf = torch.compile(torch_idwt2, dynamic=False)
        out.append(Case(group, "torch.compile", lambda: cf(yl, yh), nbytes))
    return out


# (kind, shape, levels, dtype)
CUDA_SHAPES: List[Tuple[str, tuple, int, torch.dtype]] = [
    ("dwt", (8, 16, 512, 512), 1, torch.bfloat16),
    ("dwt", (8, 16, 512, 512), 3, torch.bfloat16),
    ("dwt", (1, 3, 4096, 4096), 1, torch.float32),
    ("dwt", (1, 16, 512, 512), 1, torch.bfloat16),
    ("idwt", (8, 16, 512, 512), 1, torch.bfloat16),
]
CPU_SHAPES = [
    ("dwt", (1, 16, 512, 512), 1, torch.float32),
    ("dwt", (1, 16, 512, 512), 3, torch.float32),
    ("idwt", (1, 16, 512, 512), 1, torch.float32),
]
QUICK_SHAPES = [
    ("dwt", (1, 4, 64, 64), 1, torch.float32),
    ("idwt", (1, 4, 64, 64), 1, torch.float32),
]


def cases(device: torch.device, quick: bool = False) -> List[Case]:
    if quick:
        table = QUICK_SHAPES
    else:
        table = CUDA_SHAPES if device.type == "cuda" else CPU_SHAPES
    compile_peers = device.type == "cuda" and not quick
    out: List[Case] = []
    for kind, shape, levels, dtype in table:
        make = _dwt_cases if kind == "dwt" else _idwt_cases
        out.extend(make(shape, levels, dtype, device, compile_peers))
    return out
