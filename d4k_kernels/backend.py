"""Which implementation runs for a tensor.

Rules (DESIGN.md "Dispatch on the device of the input"):

* CUDA tensor            -> ``"triton"`` (the Triton kernels), unless a CPU-style path is forced.
* CPU tensor             -> ``"cpu"`` (the op's compiled C++ kernel or vectorised torch code),
  unless the Triton interpreter is on *and* Triton is preferred, in which case the Triton kernels
  run on the CPU tensor under the interpreter (that is how the test suite checks every kernel
  without a GPU).

The Triton interpreter is on when ``TRITON_INTERPRET=1`` (or ``D4K_TRITON_INTERPRET=1``, which
d4k_kernels turns into ``TRITON_INTERPRET=1`` before Triton is imported). With the interpreter on,
CPU tensors go to the Triton kernels by default; ``prefer("cpu")`` / ``prefer("triton")`` (a
context manager) or ``D4K_BACKEND=cpu|triton`` overrides the choice, so a test can run both paths
in one process.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import os
from typing import Iterator, Optional

import torch

__all__ = [
    "HAS_TRITON",
    "BACKENDS",
    "interpreter_enabled",
    "select",
    "use_triton",
    "prefer",
    "triton_available_for",
]

BACKENDS = ("triton", "cpu")

_TRUE = ("1", "true", "yes", "on")


def interpreter_enabled() -> bool:
    """True when Triton kernels are run by the Triton interpreter (on the CPU)."""
    return (
        os.environ.get("TRITON_INTERPRET", "0").lower() in _TRUE
        or os.environ.get("D4K_TRITON_INTERPRET", "0").lower() in _TRUE
    )


if os.environ.get("D4K_TRITON_INTERPRET", "0").lower() in _TRUE:
    # Must happen before triton is imported: @triton.jit reads it when a kernel is defined.
    os.environ["TRITON_INTERPRET"] = "1"


@functools.lru_cache(maxsize=None)
def _has_triton() -> bool:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # ImportError, or a broken install
        return False
    return True


HAS_TRITON: bool = _has_triton()

_preferred: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar("d4k_backend", default=None)


def _check_name(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; expected one of {BACKENDS}")
    return name


@contextlib.contextmanager
def prefer(name: str) -> Iterator[None]:
    """Prefer backend ``name`` ("triton" or "cpu") inside the ``with`` block.

    ``prefer("triton")`` on CPU tensors needs the Triton interpreter (``TRITON_INTERPRET=1``
    before d4k_kernels is imported); :func:`select` raises otherwise. ``prefer("cpu")`` on CUDA
    tensors runs the op's device-generic torch path."""
    token = _preferred.set(_check_name(name))
    try:
        yield
    finally:
        _preferred.reset(token)


def _preference() -> Optional[str]:
    p = _preferred.get()
    if p is not None:
        return p
    env = os.environ.get("D4K_BACKEND")
    if env:
        return _check_name(env.strip().lower())
    return None


def triton_available_for(device: torch.device) -> bool:
    """Whether Triton kernels can run on tensors of ``device``."""
    if not HAS_TRITON:
        return False
    if device.type == "cuda":
        return True
    if device.type == "cpu":
        return interpreter_enabled()
    return False


def select(x: torch.Tensor) -> str:
    """The backend ("triton" or "cpu") that runs an op whose main input is ``x``."""
    pref = _preference()
    dev = x.device
    if pref == "cpu":
        return "cpu"
    if pref == "triton":
        if not triton_available_for(dev):
            why = (
                "triton is not installed"
                if not HAS_TRITON
                else f"tensors on {dev.type} need the Triton interpreter (set TRITON_INTERPRET=1 "
                "before importing d4k_kernels)"
            )
            raise RuntimeError(f"backend 'triton' was requested but cannot run here: {why}")
        return "triton"
    if dev.type == "cuda" and HAS_TRITON:
        return "triton"
    if dev.type == "cpu" and HAS_TRITON and interpreter_enabled():
        return "triton"
    return "cpu"


def use_triton(x: torch.Tensor) -> bool:
    return select(x) == "triton"
