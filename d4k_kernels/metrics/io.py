"""Image loading for the metrics: 8-bit colour arrays exactly as the paper's eval.py sees them.

Policy (the paper reads with ``cv2.imread(path)``, i.e. ``IMREAD_COLOR``; we reproduce it):

* Decoder: OpenCV first (PNG, JPEG, WebP, BMP, TIFF, ... whatever the installed OpenCV reads),
  Pillow as the fallback for files OpenCV cannot open (e.g. a format OpenCV was built without).
* Result: a C-contiguous ``numpy.uint8`` array ``(H, W, 3)`` in BGR order (``order="rgb"`` flips it).
* Grayscale files (``L``, ``LA``, 1-bit, palette) are replicated to three equal channels, so their
  OpenCV gray is the stored value itself.
* 16-bit files keep the high byte (``v >> 8``), which is what OpenCV's ``IMREAD_COLOR`` does.
* Alpha is dropped, NOT composited over a background (again as ``IMREAD_COLOR``).
* EXIF orientation is applied (OpenCV does so unless ``IMREAD_IGNORE_ORIENTATION``).
* A file neither decoder can read raises :class:`ImageLoadError` (an ``OSError``) with the path
  and the reason. Partly decodable files (a truncated JPEG) are returned as OpenCV decodes them,
  as the paper's script would score them.
"""
from __future__ import annotations

import os
import struct
from typing import List, Optional, Tuple, Union

import numpy as np

__all__ = [
    "ImageLoadError",
    "IMAGE_EXTENSIONS",
    "is_image_file",
    "list_images",
    "load_image",
    "image_size",
    "import_cv2",
]

PathLike = Union[str, "os.PathLike[str]"]

#: file name endings treated as images by :func:`list_images` (case-insensitive)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".jp2", ".ppm", ".pgm")


class ImageLoadError(OSError):
    """An image file could not be read (missing, unreadable, corrupt, unsupported)."""

    def __init__(self, path, reason: str):
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"cannot read image {self.path!r}: {reason}")


def is_image_file(path: PathLike) -> bool:
    return os.fspath(path).lower().endswith(IMAGE_EXTENSIONS)


def list_images(root: PathLike, recursive: bool = False) -> Tuple[List[str], List[str]]:
    """(image files, other files) under ``root``, each sorted by path.

    Hidden files (starting with '.') are ignored. Raises FileNotFoundError / NotADirectoryError."""
    root = os.fspath(root)
    if not os.path.exists(root):
        raise FileNotFoundError(f"directory {root!r} does not exist")
    if not os.path.isdir(root):
        raise NotADirectoryError(f"{root!r} is not a directory")
    images, others = [], []
    if recursive:
        walk = os.walk(root)
    else:
        walk = [(root, [], os.listdir(root))]
    for d, dirs, names in walk:
        dirs[:] = sorted(x for x in dirs if not x.startswith("."))
        for n in names:
            if n.startswith("."):
                continue
            p = os.path.join(d, n)
            if not os.path.isfile(p):
                continue
            (images if is_image_file(n) else others).append(p)
    return sorted(images), sorted(others)


_cv2 = None


def import_cv2():
    """OpenCV (``cv2``), imported once with its own file warnings silenced, or None when it is not
    installed (the callers then use Pillow / the torch gray conversion)."""
    global _cv2
    if _cv2 is None:
        try:
            import cv2
        except ImportError:  # pragma: no cover - depends on the install
            _cv2 = False
        else:
            # OpenCV's own "can't open/read file" warnings: we raise a clear error instead
            logging = getattr(getattr(cv2, "utils", None), "logging", None)
            if logging is not None:  # absent in some OpenCV builds
                logging.setLogLevel(logging.LOG_LEVEL_ERROR)
            _cv2 = cv2
    return _cv2 or None


def _load_cv2(path: str) -> Optional[np.ndarray]:
    cv2 = import_cv2()
    if cv2 is None:
        return None
    # cv2.imread as the paper's eval.py (it also decodes a truncated JPEG partially, imdecode does not);
    # from the bytes when imread fails (it cannot open non-ASCII paths on some platforms).
    img = cv2.imread(path, cv2.IMREAD_COLOR)
    if img is None:
        try:
            buf = np.fromfile(path, dtype=np.uint8)
        except OSError:
            return None
        if buf.size == 0:
            return None
        img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if img is None or img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        return None
    return img


def _pil_to_bgr(im) -> np.ndarray:
    from PIL import ImageOps

    im = ImageOps.exif_transpose(im)
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(im)
        a = (np.clip(a.astype(np.int64), 0, 65535) >> 8).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(a[:, :, None], 3, axis=2))
    if mode == "F":
        raise ValueError("floating-point images (mode F) are not supported")
    if mode in ("L", "LA", "1", "La"):
        a = np.asarray(im.convert("L"))
        return np.ascontiguousarray(np.repeat(a[:, :, None], 3, axis=2))
    rgb = np.asarray(im.convert("RGB"))  # RGBA/LA -> drop alpha; P/CMYK/YCbCr -> RGB
    return np.ascontiguousarray(rgb[:, :, ::-1])


def _load_pil(path: str) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        return _pil_to_bgr(im)


def load_image(path: PathLike, order: str = "bgr", decoder: str = "auto") -> np.ndarray:
    """Read an image file as ``uint8 (H, W, 3)``, BGR (default, as OpenCV) or RGB order.

    ``decoder``: "auto" (OpenCV, then Pillow), "cv2" or "pil". See the module docstring for
    grayscale / 16-bit / alpha handling. Raises :class:`ImageLoadError`."""
    if order not in ("bgr", "rgb"):
        raise ValueError(f"order must be 'bgr' or 'rgb', got {order!r}")
    if decoder not in ("auto", "cv2", "pil"):
        raise ValueError(f"decoder must be 'auto', 'cv2' or 'pil', got {decoder!r}")
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ImageLoadError(path, "file does not exist")
    if not os.path.isfile(path):
        raise ImageLoadError(path, "not a regular file")
    if os.path.getsize(path) == 0:
        raise ImageLoadError(path, "empty file (0 bytes)")
    img = None
    if decoder in ("auto", "cv2"):
        img = _load_cv2(path)
        if img is None and decoder == "cv2":
            raise ImageLoadError(path, "OpenCV cannot decode it (corrupt or unsupported format)")
    if img is None:
        try:
            img = _load_pil(path)
        except ImportError as e:  # pragma: no cover
            raise ImageLoadError(path, f"OpenCV cannot decode it and Pillow is missing ({e})") from e
        except Exception as e:  # PIL.UnidentifiedImageError, truncated data, ...
            why = "corrupt or not an image" if type(e).__name__ == "UnidentifiedImageError" else "corrupt"
            raise ImageLoadError(path, f"{why}: {type(e).__name__}: {e}") from e
    if order == "rgb":
        img = np.ascontiguousarray(img[:, :, ::-1])
    return img


def image_size(path: PathLike) -> Tuple[int, int]:
    """(width, height) from the file header (Pillow, no full decode); ImageLoadError if unreadable."""
    path = os.fspath(path)
    try:
        from PIL import Image

        with Image.open(path) as im:
            w, h = im.size
            try:
                orient = im.getexif().get(0x0112, 1)
            except (OSError, ValueError, SyntaxError, KeyError, struct.error):  # unreadable EXIF: as stored
                orient = 1
            return (h, w) if orient in (5, 6, 7, 8) else (w, h)
    except (ImportError, OSError, ValueError):
        img = load_image(path)  # formats Pillow does not know: decode (raises ImageLoadError)
        return img.shape[1], img.shape[0]
