"""Benchmark cases for the decoder tail (ops/upconv.py) and GroupNorm statistics/apply (ops/groupnorm.py).

CUDA: the SC-VAE tail at a 4096^2 output, x (1, 128, 2048, 2048) bf16 -> (1, 3, 4096, 4096), both tails,
      d4k (statistics + fused tail; and the fused tail alone with given statistics) beside the torch tail
      (GN -> SiLU -> interpolate -> pad/conv) and torch.compile of it; GroupNorm stats + apply on
      (1, 128, 2048, 2048) bf16 beside F.group_norm (+ torch.compile).
CPU:  (1, 128, 64, 64) fp32 (the d4k CPU path is the torch polyphase path).
quick: (1, 32, 16, 16) fp32, no torch.compile peers.
"""
from __future__ import annotations

from typing import List

import torch
import torch.nn.functional as F

from . import Case


def _tail_cases(x, G, Cout, partitioned, quick, label) -> List[Case]:
    from ..ops.groupnorm import group_norm_finalize, group_norm_stats
    from ..ops.upconv import upconv_tail
    from ..reference.upconv import torch_tail

    N, C, H, W = x.shape
    dev, dt = x.device, x.dtype
    gw = torch.randn(C, device=dev, dtype=dt)
    gb = torch.randn(C, device=dev, dtype=dt)
    cw = torch.randn(Cout, C, 3, 3, device=dev, dtype=dt) / (3 * C ** 0.5)
    cb = torch.randn(Cout, device=dev, dtype=dt)
    count = (C // G) * H * W
    mean, rstd = group_norm_finalize(group_norm_stats(x, G), count)

    def d4k_full():
        m, r = group_norm_finalize(group_norm_stats(x, G), count)
        return upconv_tail(x, m, r, gw, gb, cw, cb, G, partitioned=partitioned)

    def d4k_given():
        return upconv_tail(x, mean, rstd, gw, gb, cw, cb, G, partitioned=partitioned)

    def torch_fn():
        return torch_tail(x, gw, gb, cw, cb, G, 1e-6, partitioned)

    xb = x.numel() * x.element_size()
    yb = N * Cout * 4 * H * W * x.element_size()
    group = f"{label} tail {'partitioned' if partitioned else 'plain'} {tuple(x.shape)}->{(N, Cout, 2 * H, 2 * W)} " \
            f"{str(dt).replace('torch.', '')}"
    cases = [
        Case(group, "d4k", d4k_full, 2 * xb + yb, "GN stats pass + fused tail"),
        Case(group, "d4k (given stats)", d4k_given, xb + yb, "fused tail only"),
        Case(group, "torch", torch_fn, 2 * xb + yb, "GN -> SiLU -> interpolate -> conv"),
    ]
    if not quick and (partitioned or x.device.type != "cuda"):  # one compile peer on CUDA: keep gpu_check short
        compiled = torch.compile(lambda: torch_tail(x, gw, gb, cw, cb, G, 1e-6, partitioned))
        cases.append(Case(group, "torch.compile", compiled, 2 * xb + yb))
    return cases


def _gn_cases(x, G, quick, label) -> List[Case]:
    from ..ops.groupnorm import group_norm_apply, group_norm_finalize, group_norm_stats

    N, C, H, W = x.shape
    dev, dt = x.device, x.dtype
    w = torch.randn(C, device=dev, dtype=dt)
    b = torch.randn(C, device=dev, dtype=dt)
    count = (C // G) * H * W

    def d4k():
        m, r = group_norm_finalize(group_norm_stats(x, G), count)
        return group_norm_apply(x, m, r, w, b, G)

    xb = x.numel() * x.element_size()
    group = f"{label} GroupNorm stats+apply {tuple(x.shape)} G={G} {str(dt).replace('torch.', '')}"
    cases = [
        Case(group, "d4k", d4k, 3 * xb, "stats pass + apply pass"),
        Case(group, "d4k stats only", lambda: group_norm_stats(x, G), xb),
        Case(group, "torch", lambda: F.group_norm(x, G, w, b, 1e-6), 3 * xb),
    ]
    if not quick:
        compiled = torch.compile(lambda: F.group_norm(x, G, w, b, 1e-6))
        cases.append(Case(group, "torch.compile", compiled, 3 * xb))
    return cases


def cases(device: torch.device, quick: bool = False) -> List[Case]:
    gen = torch.Generator(device="cpu").manual_seed(0)
    if device.type == "cuda" and not quick:
        shape, dt, label = (1, 128, 2048, 2048), torch.bfloat16, "SC-VAE 4096^2"
    elif quick:
        shape, dt, label = (1, 32, 16, 16), torch.float32, "tiny"
    else:
        shape, dt, label = (1, 128, 64, 64), torch.float32, "CPU"
    G = 32
    x = torch.randn(shape, generator=gen).to(device=device, dtype=dt)
    out: List[Case] = []
    out += _tail_cases(x, G, 3, True, quick, label)
    out += _tail_cases(x, G, 3, False, quick, label)
    out += _gn_cases(x, G, quick, label)
    return out
