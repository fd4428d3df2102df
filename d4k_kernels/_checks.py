"""Input checks shared by every op: clear errors that name the offending value."""
from __future__ import annotations

from typing import Iterable, Optional, Sequence

import torch

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def check_tensor(
    x,
    name: str,
    *,
    dtypes: Optional[Sequence[torch.dtype]] = None,
    min_dim: Optional[int] = None,
    ndim: Optional[int] = None,
) -> torch.Tensor:
    """Raise TypeError/ValueError unless ``x`` is a tensor with an allowed dtype and rank."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if dtypes is not None and x.dtype not in dtypes:
        allowed = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name} has dtype {str(x.dtype).replace('torch.', '')}; supported: {allowed}")
    if ndim is not None and x.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(x.shape)}")
    if min_dim is not None and x.dim() < min_dim:
        raise ValueError(f"{name} must have at least {min_dim} dimensions, got shape {tuple(x.shape)}")
    return x


def check_same(tensors: Iterable[torch.Tensor], names: Sequence[str], *, shape=True, device=True, dtype=False):
    """Raise ValueError unless all tensors share shape / device (/ dtype)."""
    ts = list(tensors)
    first, n0 = ts[0], names[0]
    for t, n in zip(ts[1:], names[1:]):
        if shape and t.shape != first.shape:
            raise ValueError(f"{n} has shape {tuple(t.shape)} but {n0} has shape {tuple(first.shape)}")
        if device and t.device != first.device:
            raise ValueError(f"{n} is on {t.device} but {n0} is on {first.device}")
        if dtype and t.dtype != first.dtype:
            raise TypeError(f"{n} has dtype {t.dtype} but {n0} has dtype {first.dtype}")


def check_int(v, name: str, *, lo: Optional[int] = None, hi: Optional[int] = None) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"{name} must be an int, got {v!r}")
    if lo is not None and v < lo:
        raise ValueError(f"{name} must be >= {lo}, got {v}")
    if hi is not None and v > hi:
        raise ValueError(f"{name} must be <= {hi}, got {v}")
    return v


def check_choice(v, name: str, choices: Sequence[str]) -> str:
    if v not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {v!r}")
    return v
