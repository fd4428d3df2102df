"""The ops a tile program calls: GroupNorm statistics / finalize / apply and the SC-VAE tail.

Two tables with one interface. Both take GroupNorm from ops/groupnorm.py (the package's one GroupNorm):

* :data:`TORCH_OPS` (``name == "torch"``) runs its torch path on any device (``backend.prefer("cpu")``),
  and the tail as the model computes it (GroupNorm apply, activation, nearest x2, conv);
* :data:`KERNEL_OPS` (``name == "d4k"``) lets ``backend.choose`` pick (the Triton kernels on CUDA) and
  runs the SC-VAE tail fused (ops/upconv.py) when its activation is SiLU.

:func:`get_ops` picks one for a device: the kernels on CUDA, torch elsewhere, unless told.
"""
from __future__ import annotations

import contextlib
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ... import backend
from ...ops.groupnorm import group_norm_apply, group_norm_finalize, group_norm_stats
from ...ops.upconv import upconv_tail

__all__ = ["TorchOps", "KernelOps", "TORCH_OPS", "KERNEL_OPS", "get_ops", "up2_conv"]


def up2_conv(y: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], partitioned: bool) -> torch.Tensor:
    """nearest x2 -> 3x3 conv of ``y``, zero padded as the SC-VAE tail: partitioned pads (top 2, left 2)
    of the upsampled map (a valid conv), plain pads 1 all round."""
    y = F.interpolate(y, scale_factor=2.0, mode="nearest")
    y = F.pad(y, (2, 0, 2, 0) if partitioned else (1, 1, 1, 1))
    return F.conv2d(y, weight, bias)


class TorchOps:
    """GroupNorm's torch path and the plain torch tail (the reference path of the tiler)."""

    name = "torch"

    def _dispatch(self):
        return backend.prefer("cpu")  # the torch implementation of the registered ops, on any device

    def stats(self, x: torch.Tensor, num_groups: int, out: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(N, G, 2) float64 [sum, sum of squares] of x per (sample, group); added into ``out``."""
        with self._dispatch():
            return group_norm_stats(x, num_groups, out=out)

    @staticmethod
    def finalize(stats: torch.Tensor, count: int, eps: float):
        return group_norm_finalize(stats, count, eps)

    def apply(self, x, mean, rstd, weight, bias, num_groups, act: Optional[nn.Module] = None) -> torch.Tensor:
        """GroupNorm with the given statistics, then ``act`` on the x.dtype result (as the diffusers
        decoder computes it); SiLU is fused into the GroupNorm apply."""
        silu = isinstance(act, nn.SiLU)
        with self._dispatch():
            y = group_norm_apply(x, mean, rstd, weight, bias, num_groups, silu=silu)
        return y if silu or act is None else act(y)

    def upconv_tail(self, x, mean, rstd, gn_weight, gn_bias, conv_weight, conv_bias, num_groups,
                    act: Optional[nn.Module] = None, partitioned: bool = True) -> torch.Tensor:
        """GN-apply -> act -> nearest x2 -> conv3x3 over the 2x grid of x (see :func:`up2_conv`)."""
        y = self.apply(x, mean, rstd, gn_weight, gn_bias, num_groups, act=act)
        return up2_conv(y, conv_weight, conv_bias, partitioned)


class KernelOps(TorchOps):
    """The d4k kernels where they apply: ``backend.choose`` picks each op's implementation."""

    name = "d4k"

    def _dispatch(self):
        return contextlib.nullcontext()

    def upconv_tail(self, x, mean, rstd, gn_weight, gn_bias, conv_weight, conv_bias, num_groups,
                    act: Optional[nn.Module] = None, partitioned: bool = True) -> torch.Tensor:
        if not isinstance(act, nn.SiLU):  # the fused tail is GroupNorm + SiLU
            return super().upconv_tail(x, mean, rstd, gn_weight, gn_bias, conv_weight, conv_bias, num_groups,
                                       act=act, partitioned=partitioned)
        return upconv_tail(x, mean, rstd, gn_weight, gn_bias, conv_weight, conv_bias, num_groups,
                           partitioned=partitioned)


TORCH_OPS = TorchOps()
KERNEL_OPS = KernelOps()


def get_ops(device: torch.device, use_kernels: Optional[bool] = None) -> TorchOps:
    """:data:`KERNEL_OPS` when ``use_kernels`` (default: the tensors are on CUDA), else :data:`TORCH_OPS`."""
    if use_kernels is None:
        use_kernels = device.type == "cuda"
    if not isinstance(use_kernels, bool):
        raise TypeError(f"use_kernels must be True, False or None, got {use_kernels!r}")
    return KERNEL_OPS if use_kernels else TORCH_OPS
