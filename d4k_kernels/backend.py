"""Which implementation of an op runs for a tensor: the one place that decides.

Every registered op (``torch.ops.d4k.*``) has up to four implementations:

* ``"triton"``: the Triton kernels (CUDA tensors; CPU tensors under the Triton interpreter);
* ``"cuda"``: a compiled CUDA kernel (the GLCM Score), built with nvcc at first use;
* ``"cpp"``: a compiled C++ CPU kernel (Haar levels, GLCM counting), built with ninja at first use;
* ``"torch"``: vectorised torch code, which runs on any device (the fallback of the others).

:data:`OPS` lists, per op, the implementations in order of preference for CUDA and for CPU tensors;
:func:`choose` walks that list and takes the first that can run (its extension builds and loads,
its dtype is supported, the op's own ``fits`` check passes). The rules:

* CUDA tensor -> the op's CUDA list (``"cuda"`` then ``"triton"`` for the GLCM Score, else ``"triton"``).
* CPU tensor -> the op's CPU list (``"cpp"`` where the op has a C++ kernel, then ``"torch"``), unless the
  Triton interpreter is on (``TRITON_INTERPRET=1`` or ``D4K_TRITON_INTERPRET=1`` before import): then
  the Triton kernels run on the CPU tensor, which is how the test suite checks every kernel.
* ``with prefer("cpu"):`` (or ``D4K_BACKEND=cpu``) takes the CPU list on any device (``"cpp"`` only for
  CPU tensors); ``prefer("triton")`` (``D4K_BACKEND=triton``) the Triton kernels, and raises where they
  cannot run. Float64 inputs take ``"torch"`` for ops whose kernels have no float64 path.

docs/architecture.md shows where this sits in a call from a diffusers pipeline down to a kernel.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, Optional, Tuple

import torch

from . import settings

__all__ = [
    "HAS_TRITON", "BACKENDS", "IMPLS", "OPS", "OpBackends",
    "interpreter_enabled", "select", "choose", "use_triton", "prefer", "triton_available_for",
]

BACKENDS = ("triton", "cpu")            # what prefer() / D4K_BACKEND take
IMPLS = ("triton", "cuda", "cpp", "torch")  # what choose() returns

settings.current()  # reads the environment (and sets TRITON_INTERPRET) before triton is imported


def interpreter_enabled() -> bool:
    """True when Triton kernels are run by the Triton interpreter (on the CPU)."""
    return settings.current().interpreter


@functools.lru_cache(maxsize=None)
def _has_triton() -> bool:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # ImportError, or a broken install
        return False
    return True


HAS_TRITON: bool = _has_triton()


@dataclass(frozen=True)
class OpBackends:
    """The implementations of one op, in order of preference per device type."""

    cuda: Tuple[str, ...]
    cpu: Tuple[str, ...]
    ext: Optional[str] = None            # the C++ extension behind "cpp" (a name in _build.EXTENSIONS)
    cuda_ext: Optional[str] = None       # the CUDA extension behind "cuda"
    cuda_setting: Optional[str] = None   # a bool field of settings.Settings that turns "cuda" off
    triton_float64: bool = True          # the Triton kernels take float64 inputs


_HAAR = OpBackends(cuda=("triton",), cpu=("cpp", "torch"), ext="haar")
_WLF = OpBackends(cuda=("triton",), cpu=("torch",))
_VAE = OpBackends(cuda=("triton",), cpu=("torch",), triton_float64=False)

OPS: Dict[str, OpBackends] = {
    "haar_dwt2": _HAAR,
    "haar_idwt2": _HAAR,
    "wavelet_energy": _WLF,
    "wavelet_energy_backward": _WLF,
    "glcm_counts": OpBackends(cuda=("triton",), cpu=("cpp", "torch"), ext="glcm"),
    "glcm_patch_scores": OpBackends(cuda=("cuda", "triton"), cpu=("cpp", "torch"), ext="glcm",
                                    cuda_ext="glcm_cuda", cuda_setting="glcm_cuda"),
    "group_norm_stats": _VAE,
    "group_norm_apply": _VAE,
    "upconv_tail": _VAE,
    "attention": _VAE,
}

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
    return p if p is not None else settings.current().backend


def triton_available_for(device: torch.device) -> bool:
    """Whether Triton kernels can run on tensors of ``device``."""
    if not HAS_TRITON:
        return False
    if device.type == "cuda":
        return True
    if device.type == "cpu":
        return interpreter_enabled()
    return False


def select(x) -> str:
    """The backend family ("triton" or "cpu") for a tensor (or a device), before any op's own list:
    the device rule of :func:`choose`."""
    pref = _preference()
    dev = x if isinstance(x, torch.device) else x.device
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
    return "triton" if triton_available_for(dev) else "cpu"


def use_triton(x: torch.Tensor) -> bool:
    return select(x) == "triton"


def choose(op: str, x, *, fits: Optional[Callable[[str, object], bool]] = None) -> str:
    """The implementation ("triton", "cuda", "cpp" or "torch") that runs registered op ``op`` whose
    main input is the tensor ``x`` (or a ``torch.device``: then its dtype is taken as not float64).
    ``fits(impl, extension)``, when given, may refuse "cuda" / "cpp" for this call (e.g. tables that
    do not fit the GPU's shared memory); the next implementation in the list runs."""
    try:
        spec = OPS[op]
    except KeyError:
        raise ValueError(f"unknown op {op!r}; known: {', '.join(sorted(OPS))}") from None
    dev = x if isinstance(x, torch.device) else x.device
    f64 = isinstance(x, torch.Tensor) and x.dtype == torch.float64
    if select(dev) == "triton":
        order = spec.cuda if dev.type == "cuda" else ("triton",)
    else:
        order = spec.cpu
    for impl in order:
        if impl == "triton":
            if f64 and not spec.triton_float64:
                continue
            return impl
        if impl == "torch":
            return impl
        if impl == "cpp":
            if dev.type != "cpu" or spec.ext is None:
                continue
            mod = extension(spec.ext)
        else:  # "cuda"
            if dev.type != "cuda" or spec.cuda_ext is None:
                continue
            if spec.cuda_setting and not getattr(settings.current(), spec.cuda_setting):
                continue
            mod = extension(spec.cuda_ext, dev)
        if mod is not None and (fits is None or fits(impl, mod)):
            return impl
    return "torch"


def extension(name: str, device: Optional[torch.device] = None):
    """The loaded compiled extension ``name`` (built at first use), or None where it cannot be built
    (no compiler, no GPU, ``D4K_NO_EXT=1``; a failed build warns once)."""
    from . import _build

    return _build.extension(name, device)
