"""Compression Ratio of the Diffusion-4K paper (docs/ops.md, GLCM Score and Compression Ratio).

From files, as the paper's eval.py::

    CR = (size * size * 3 bytes) * n_images / sum(file size in bytes)

i.e. the raw 8-bit RGB bytes of a ``size x size`` image over the bytes stored on disk (the
generation script saved JPEG at quality 95 with Pillow). Higher = more compressible = less fine
detail. ``size=None`` uses each image's own width x height (read from the file header) instead.

From tensors: each image is encoded in memory with Pillow as JPEG at quality 95 (Pillow's other
defaults, as the generation script's ``image.save(path, quality=95)``), and
``CR = sum(H * W * 3) / sum(JPEG bytes)``.
"""
from __future__ import annotations

import io
import os
from typing import Iterable, List, Optional, Sequence, Union

import numpy as np
import torch

from .._checks import check_int, check_tensor
from .gray import channel_axis

__all__ = ["compression_ratio", "compression_ratio_files", "compression_ratio_tensor", "jpeg_bytes", "to_uint8_hwc"]

PathLike = Union[str, "os.PathLike[str]"]


def _as_file_list(files) -> List[str]:
    if isinstance(files, (str, os.PathLike)):
        p = os.fspath(files)
        if os.path.isdir(p):
            from .io import list_images

            return list_images(p)[0]
        return [p]
    return [os.fspath(f) for f in files]


def compression_ratio_files(files: Union[PathLike, Iterable[PathLike]], size: Optional[int] = 2048) -> float:
    """The paper's Compression Ratio of image files (a list, one path, or a directory's images).

    ``size``: the nominal square size in pixels (2048 / 4096 in the paper); None -> each file's
    own width x height from its header."""
    paths = _as_file_list(files)
    if not paths:
        raise ValueError("compression_ratio needs at least one file, got none")
    if size is not None:
        check_int(size, "size", lo=1)
    total = 0
    raw = 0
    for p in paths:
        if not os.path.isfile(p):
            raise FileNotFoundError(f"{p!r} is not a file")
        nbytes = os.path.getsize(p)
        if nbytes == 0:
            raise ValueError(f"{p!r} is empty (0 bytes)")
        total += nbytes
        if size is None:
            from .io import image_size

            w, h = image_size(p)
            raw += w * h * 3
        else:
            raw += size * size * 3
    return raw / total


def to_uint8_hwc(images: torch.Tensor, channels: Optional[str] = None) -> List[np.ndarray]:
    """A list of ``uint8 (H, W, 3)`` RGB numpy arrays from an image tensor / batch.

    uint8 tensors are taken as they are; float tensors must be in [0, 1] and are converted as
    diffusers' ``numpy_to_pil`` does: ``round(x * 255)`` (after clamping to [0, 1]).
    Layouts as :func:`d4k_kernels.metrics.gray.rgb_to_gray`."""
    check_tensor(images, "images", dtypes=(torch.uint8, torch.float32, torch.float64, torch.float16, torch.bfloat16))
    axis = channel_axis(images, channels)
    x = images.detach()
    if x.dim() == 3:
        x = x.unsqueeze(0)
        axis += 1
    if axis == 1:
        x = x.permute(0, 2, 3, 1)
    if x.dtype != torch.uint8:
        x = (x.float().clamp(0, 1) * 255).round().to(torch.uint8)
    x = x.cpu().contiguous().numpy()
    return [x[i] for i in range(x.shape[0])]


def jpeg_bytes(image_hwc: np.ndarray, quality: int = 95) -> int:
    """Size in bytes of ``image_hwc`` (uint8 RGB) saved by Pillow as JPEG at ``quality``."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image_hwc, "RGB").save(buf, format="JPEG", quality=quality)
    return buf.getbuffer().nbytes


def compression_ratio_tensor(images: torch.Tensor, quality: int = 95, channels: Optional[str] = None) -> float:
    """Compression Ratio of RGB image tensors by in-memory Pillow JPEG at ``quality`` (95)."""
    check_int(quality, "quality", lo=1, hi=100)
    arrs = to_uint8_hwc(images, channels)
    raw = sum(a.shape[0] * a.shape[1] * 3 for a in arrs)
    enc = sum(jpeg_bytes(a, quality) for a in arrs)
    return raw / enc


def compression_ratio(
    images: Union[torch.Tensor, PathLike, Sequence[PathLike]],
    size: Optional[int] = 2048,
    quality: int = 95,
    channels: Optional[str] = None,
) -> float:
    """Compression Ratio of files (the paper's, from bytes on disk) or of RGB tensors (JPEG q=95).

    * path / list of paths / directory -> :func:`compression_ratio_files` (``size``);
    * tensor (uint8 or float in [0, 1]; (H, W, 3), (3, H, W), (N, H, W, 3), (N, 3, H, W)) ->
      :func:`compression_ratio_tensor` (``quality``, ``channels``)."""
    if isinstance(images, torch.Tensor):
        return compression_ratio_tensor(images, quality=quality, channels=channels)
    if isinstance(images, np.ndarray):
        raise TypeError("compression_ratio takes a torch.Tensor or file paths; wrap arrays with torch.from_numpy")
    return compression_ratio_files(images, size=size)
