"""Small helpers shared by the ops and the layers above them (one copy each)."""
from __future__ import annotations

import re
from typing import Optional, Union

import torch

__all__ = ["cdiv", "next_pow2", "acc_dtype", "resolve_device", "parse_memory", "format_bytes"]


def cdiv(a: int, b: int) -> int:
    """Ceil division on the host (``triton.cdiv`` is a constexpr function: ~3 us per call)."""
    return -(-a // b)


def next_pow2(n: int) -> int:
    """The smallest power of two >= ``n`` (1 for n <= 1)."""
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def acc_dtype(*ts) -> torch.dtype:
    """The accumulation dtype of an op over ``ts`` (tensors, dtypes or None): float64 when any of
    them is float64, else float32 (16-bit inputs accumulate in float32)."""
    for t in ts:
        dt = t.dtype if isinstance(t, torch.Tensor) else t
        if dt == torch.float64:
            return torch.float64
    return torch.float32


def resolve_device(device: Union[str, torch.device, None] = "auto") -> torch.device:
    """``"auto"`` / None -> cuda when a GPU is visible, else cpu. ``"cuda"`` without a GPU and any
    device other than cpu / cuda raise ValueError naming the value."""
    if device is None or (isinstance(device, str) and device.strip().lower() == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}") from None
    if dev.type not in ("cuda", "cpu"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {str(device)!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} was asked for, but CUDA is not available (torch sees no GPU)")
    return dev


_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9, "t": 1e12, "tb": 1e12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_memory(v: Union[int, float, str, None], name: str = "max_memory") -> Optional[int]:
    """Bytes from 8589934592, "8GiB", "8 GB", "512MiB" (None stays None); ValueError / TypeError
    naming ``name`` and the value otherwise."""
    if v is None:
        return None
    if isinstance(v, bool):
        raise TypeError(f"{name} must be bytes (int) or a string like '8GiB', got {v!r}")
    if isinstance(v, (int, float)):
        if not v > 0 or v != v or v == float("inf"):
            raise ValueError(f"{name} must be a positive number of bytes, got {v!r}")
        return int(v)
    if isinstance(v, str):
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", v)
        if m and m.group(2).lower() in _UNITS and float(m.group(1)) > 0:
            return int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    raise ValueError(f"{name} must be bytes (int) or a string like '8GiB' / '512MB', got {v!r}")


def format_bytes(n: Optional[int]) -> str:
    """``"6.49 GiB"``-style text for a byte count."""
    if n is None:
        return "unbounded"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"
