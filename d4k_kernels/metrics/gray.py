"""OpenCV-exact 8-bit gray conversion on tensors (any device).

OpenCV's ``cvtColor(BGR2GRAY)`` on uint8 is, for every one of the 2^24 colours,

    gray = (3735 * B + 19235 * G + 9798 * R + 16384) >> 15

(fixed-point BT.601 weights 0.114 / 0.587 / 0.299 scaled by 2^15, rounded half up). This module
computes exactly that in int32 arithmetic, so a GPU tensor gets the same gray as the paper's
eval.py without a round trip through OpenCV.

Layouts (``channels``):
    (H, W, 3)        channels last  (an image as loaded by OpenCV / Pillow)
    (N, H, W, 3)     channels last  (a batch)
    (3, H, W)        channels first (a single torch image)
    (N, 3, H, W)     channels first (a torch batch)
``channels=None`` infers it: 3-D -> last if the last dim is 3, else first if dim 0 is 3;
4-D -> last if only the last dim is 3, first if only dim 1 is 3; if both are 3 it is ambiguous
and you must pass ``channels="last"`` or ``"first"``.
The result drops the channel axis: (H, W) or (N, H, W), uint8, same device.
"""
from __future__ import annotations

from typing import Optional, Union

import numpy as np
import torch

from .._checks import check_choice, check_tensor

__all__ = ["rgb_to_gray", "bgr_to_gray", "channel_axis", "GRAY_WEIGHTS_Q15"]

#: (B, G, R) fixed-point weights of OpenCV's BGR2GRAY for 8-bit images, and the rounding term
GRAY_WEIGHTS_Q15 = (3735, 19235, 9798)
_ROUND = 1 << 14
_SHIFT = 15


def channel_axis(x: torch.Tensor, channels: Optional[str]) -> int:
    """The dim of ``x`` that holds the 3 colour channels, by the layout rules of the module docstring
    (``channels``: "last", "first" or None to infer); ValueError naming the shape otherwise."""
    if x.dim() not in (3, 4):
        raise ValueError(
            f"image must have shape (H, W, 3), (3, H, W), (N, H, W, 3) or (N, 3, H, W); got {tuple(x.shape)}"
        )
    if channels is not None:
        check_choice(channels, "channels", ("last", "first"))
        axis = x.dim() - 1 if channels == "last" else x.dim() - 3
        if x.shape[axis] != 3:
            raise ValueError(
                f"channels={channels!r} needs 3 channels on dim {axis}, got shape {tuple(x.shape)}"
            )
        return axis
    first = x.dim() - 3  # 0 for (3, H, W), 1 for (N, 3, H, W)
    last_is3, first_is3 = x.shape[-1] == 3, x.shape[first] == 3
    if last_is3 and first_is3 and x.dim() == 4:
        raise ValueError(
            f"ambiguous layout for shape {tuple(x.shape)}: pass channels='last' (N, H, W, 3) "
            "or channels='first' (N, 3, H, W)"
        )
    if last_is3:
        return x.dim() - 1
    if first_is3:
        return first
    raise ValueError(f"image has no channel axis of size 3 (last or {first}): shape {tuple(x.shape)}")


def rgb_to_gray(
    x: Union[torch.Tensor, np.ndarray],
    order: str = "rgb",
    channels: Optional[str] = None,
) -> Union[torch.Tensor, np.ndarray]:
    """OpenCV-exact gray of a uint8 colour image / batch; ``order`` is "rgb" or "bgr".

    Works on any device; a numpy array in gives a numpy array out (computed with torch on the
    CPU, zero-copy in). Raises TypeError for a non-uint8 input and ValueError for a bad layout."""
    check_choice(order, "order", ("rgb", "bgr"))
    is_np = isinstance(x, np.ndarray)
    t = torch.from_numpy(x) if is_np else x
    check_tensor(t, "image", dtypes=(torch.uint8,))
    axis = channel_axis(t, channels)
    c0, c1, c2 = t.unbind(axis)
    b, g, r = (c2, c1, c0) if order == "rgb" else (c0, c1, c2)
    wb, wg, wr = GRAY_WEIGHTS_Q15
    acc = b.to(torch.int32) * wb
    acc.add_(g.to(torch.int32), alpha=wg)
    acc.add_(r.to(torch.int32), alpha=wr)
    acc.add_(_ROUND).bitwise_right_shift_(_SHIFT)
    out = acc.to(torch.uint8)
    return out.numpy() if is_np else out


def bgr_to_gray(x, channels: Optional[str] = None):
    """:func:`rgb_to_gray` with ``order="bgr"`` (OpenCV's channel order)."""
    return rgb_to_gray(x, order="bgr", channels=channels)
