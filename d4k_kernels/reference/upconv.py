"""Plain float64 references for the decoder tail and GroupNorm (no polyphase trick, no shared code).

    tail_reference(x, gn_weight, gn_bias, conv_weight, conv_bias, num_groups, eps, partitioned)
        F.group_norm -> F.silu -> F.interpolate(nearest, x2) -> conv3x3, written as docs/ops.md (SC-VAE and
        exact tiled decoding) states it:
        plain:        conv2d(u, w, b, padding=1)
        partitioned:  conv2d(F.pad(u, (2, 0, 2, 0)), w, b)   (valid conv: shifted one pixel down/right)
    tail_reference_stats(...) the same with given (mean, rstd) instead of F.group_norm's own statistics.
    group_stats_reference(x, G) -> (N, G, 2) float64 [sum, sum of squares].
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

__all__ = ["tail_reference", "tail_reference_stats", "group_stats_reference", "torch_tail"]


def _d(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if t is None else t.detach().to(torch.float64)


def _up_conv(a: torch.Tensor, conv_weight, conv_bias, partitioned: bool) -> torch.Tensor:
    u = F.interpolate(a, scale_factor=2, mode="nearest")
    if partitioned:
        return F.conv2d(F.pad(u, (2, 0, 2, 0)), conv_weight, conv_bias)
    return F.conv2d(u, conv_weight, conv_bias, padding=1)


def tail_reference(x, gn_weight, gn_bias, conv_weight, conv_bias, num_groups: int, eps: float = 1e-6,
                   partitioned: bool = True) -> torch.Tensor:
    """float64: GroupNorm (the tensor's own statistics) -> SiLU -> nearest x2 -> conv3x3."""
    a = F.silu(F.group_norm(x.to(torch.float64), num_groups, _d(gn_weight), _d(gn_bias), eps))
    return _up_conv(a, _d(conv_weight), _d(conv_bias), partitioned)


def tail_reference_stats(x, mean, rstd, gn_weight, gn_bias, conv_weight, conv_bias, num_groups: int,
                         partitioned: bool = True) -> torch.Tensor:
    """float64 tail with GIVEN per-(sample, group) mean / rstd (what a tile of a larger tensor sees)."""
    N, C, H, W = x.shape
    v = x.to(torch.float64).reshape(N, num_groups, -1)
    v = (v - _d(mean)[..., None]) * _d(rstd)[..., None]
    v = v.reshape(N, C, H, W)
    if gn_weight is not None:
        v = v * _d(gn_weight)[None, :, None, None]
    if gn_bias is not None:
        v = v + _d(gn_bias)[None, :, None, None]
    return _up_conv(F.silu(v), _d(conv_weight), _d(conv_bias), partitioned)


def group_stats_reference(x: torch.Tensor, num_groups: int) -> torch.Tensor:
    v = x.detach().to(torch.float64).reshape(x.shape[0], num_groups, -1)
    return torch.stack([v.sum(-1), (v * v).sum(-1)], dim=-1)


def torch_tail(x, gn_weight, gn_bias, conv_weight, conv_bias, num_groups: int, eps: float = 1e-6,
               partitioned: bool = True) -> torch.Tensor:
    """The tail as a model runs it in x's dtype (the benchmark peer): GN -> SiLU -> interpolate -> conv."""
    a = F.silu(F.group_norm(x, num_groups, gn_weight, gn_bias, eps))
    return _up_conv(a, conv_weight, conv_bias, partitioned)
