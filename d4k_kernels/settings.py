"""Every ``D4K_*`` environment variable the library reads, read in one place.

    from d4k_kernels import settings
    settings.current().no_ext                 # the value in force
    with settings.override(glcm_cuda=False):  # change values for a block (tests, benchmarks)
        ...
    settings.reload()                         # re-read os.environ (after changing it in-process)

The environment is read once, at the first :func:`current` call (``import d4k_kernels`` makes it),
and a bad value raises ``ValueError`` naming the variable and the value. :data:`VARIABLES` is the
table of them (docs/settings.md lists the same; a test keeps the two equal). ``TRITON_INTERPRET`` is
Triton's own variable; ``D4K_TRITON_INTERPRET=1`` sets it before Triton is imported.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
from dataclasses import dataclass
from typing import Callable, Iterator, NamedTuple, Optional, Tuple

__all__ = ["Settings", "Variable", "VARIABLES", "current", "reload", "override"]

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


class Variable(NamedTuple):
    env: str                 # the environment variable
    field: str               # its Settings field
    default: str             # its value when unset (as text)
    parse: Callable[[str, str], object]
    doc: str


def _bool(name: str, v: str) -> bool:
    s = v.strip().lower()
    if s in _TRUE:
        return True
    if s in _FALSE:
        return False
    raise ValueError(f"{name} must be 1/0 (or true/false, yes/no, on/off), got {v!r}")


def _text(name: str, v: str) -> Optional[str]:
    return v or None


def _pow2(name: str, v: str) -> int:
    try:
        n = int(v)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {v!r}") from None
    if n < 1 or n & (n - 1):
        raise ValueError(f"{name} must be a power of two, got {n}")
    return n


def _tile(name: str, v: str) -> Tuple[int, int]:
    try:
        rows, cols = (int(p) for p in v.lower().split("x"))
    except ValueError:
        raise ValueError(f"{name} must look like 32x128 (rows x cols), got {v!r}") from None
    for n, what in ((rows, "rows"), (cols, "cols")):
        if n < 1 or n & (n - 1):
            raise ValueError(f"{name} {what} must be a power of two, got {n}")
    return rows, cols


def _int_choice(*choices: int):
    def parse(name: str, v: str) -> int:
        try:
            n = int(v)
        except ValueError:
            n = None
        if n not in choices:
            raise ValueError(f"{name} must be one of {', '.join(map(str, choices))}, got {v!r}")
        return n
    return parse


def _choice(*choices: str):
    def parse(name: str, v: str) -> Optional[str]:
        s = v.strip().lower()
        if not s:
            return None
        if s not in choices:
            raise ValueError(f"{name} must be one of {', '.join(choices)}, got {v!r}")
        return s
    return parse


VARIABLES: Tuple[Variable, ...] = (
    Variable("D4K_TRITON_INTERPRET", "triton_interpret", "0", _bool,
             "run the Triton kernels on CPU tensors under the Triton interpreter (sets TRITON_INTERPRET=1 "
             "before Triton is imported; TRITON_INTERPRET=1 does the same)"),
    Variable("D4K_BACKEND", "backend", "", _choice("cpu", "triton"),
             "prefer a backend for every op: cpu (the C++ / torch paths, on any device) or triton"),
    Variable("D4K_NO_EXT", "no_ext", "0", _bool,
             "never build or load the compiled C++ / CUDA kernels (the torch paths run)"),
    Variable("D4K_EXT_DIR", "ext_dir", "", _text,
             "where compiled kernels are cached (default $TORCH_EXTENSIONS_DIR/d4k_kernels, else "
             "~/.cache/d4k_kernels/ext)"),
    Variable("D4K_EXT_VERBOSE", "ext_verbose", "0", _bool, "show the compiler's output when a kernel is built"),
    Variable("D4K_HAAR_TILE", "haar_tile", "32x128", _tile,
             "Haar DWT/IDWT Triton tile, input pixels per program (GPU tuning)"),
    Variable("D4K_HAAR_WARPS", "haar_warps", "4", _pow2, "Haar DWT/IDWT Triton warps per program"),
    Variable("D4K_WLF_TILE", "wlf_tile", "8x64", _tile,
             "wavelet-loss Triton tile, LL coefficients per program (GPU tuning)"),
    Variable("D4K_WLF_WARPS", "wlf_warps", "4", _pow2, "wavelet-loss Triton warps per program"),
    Variable("D4K_GLCM_CUDA", "glcm_cuda", "1", _bool,
             "GLCM Score on CUDA tensors: the compiled CUDA kernel (1) or always the Triton kernels (0)"),
    Variable("D4K_GLCM_CUDA_THREADS", "glcm_cuda_threads", "512", _int_choice(256, 512, 1024),
             "threads per block of the GLCM CUDA kernel"),
    Variable("D4K_GLCM_CUDA_NACC16", "glcm_cuda_nacc16", "1", _bool,
             "let the GLCM CUDA kernel keep value multiplicities in 16 bits where that is exact"),
    Variable("D4K_GLCM_KERNEL", "glcm_kernel", "", _choice("hist", "dot"),
             "GLCM Triton counting kernel: hist (tl.histogram) or dot (one-hot int8 dot); default dot "
             "on a GPU, hist under the interpreter"),
    Variable("D4K_GLCM_G", "glcm_g", "1", _pow2, "GLCM Triton dot kernel: offsets sharing one one-hot tile"),
    Variable("D4K_GLCM_WARPS", "glcm_warps", "8", _pow2, "GLCM Triton dot kernel: warps per program"),
    Variable("D4K_GLCM_BK", "glcm_bk", "64", _pow2, "GLCM Triton dot kernel: pixels per one-hot tile on a GPU"),
)


@dataclass(frozen=True)
class Settings:
    """The values in force; one field per entry of :data:`VARIABLES`."""

    triton_interpret: bool
    backend: Optional[str]
    no_ext: bool
    ext_dir: Optional[str]
    ext_verbose: bool
    haar_tile: Tuple[int, int]
    haar_warps: int
    wlf_tile: Tuple[int, int]
    wlf_warps: int
    glcm_cuda: bool
    glcm_cuda_threads: int
    glcm_cuda_nacc16: bool
    glcm_kernel: Optional[str]
    glcm_g: int
    glcm_warps: int
    glcm_bk: int

    @property
    def interpreter(self) -> bool:
        """Whether Triton kernels run under the interpreter (D4K_TRITON_INTERPRET or TRITON_INTERPRET)."""
        return self.triton_interpret or _triton_interpret_env()


def _triton_interpret_env() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in _TRUE


def _read(environ=None) -> Settings:
    env = os.environ if environ is None else environ
    values = {}
    for var in VARIABLES:
        raw = env.get(var.env)
        values[var.field] = var.parse(var.env, var.default if raw is None else raw)
    return Settings(**values)


_lock = threading.Lock()
_current: Optional[Settings] = None


def current() -> Settings:
    """The settings in force (the environment, read once, with any :func:`override` applied)."""
    s = _current
    if s is None:
        s = reload()
    return s


def reload() -> Settings:
    """Read the ``D4K_*`` variables of ``os.environ`` again and make them current."""
    global _current
    s = _read()
    with _lock:
        _current = s
    if s.triton_interpret:
        # must happen before triton is imported: @triton.jit reads it when a kernel is defined
        os.environ["TRITON_INTERPRET"] = "1"
    return s


@contextlib.contextmanager
def override(**changes) -> Iterator[Settings]:
    """Change settings (by field name) inside the ``with`` block; the old ones come back after it."""
    global _current
    old = current()
    bad = sorted(set(changes) - {f.name for f in dataclasses.fields(Settings)})
    if bad:
        raise TypeError(f"unknown setting(s) {', '.join(bad)}; known: "
                        f"{', '.join(f.name for f in dataclasses.fields(Settings))}")
    new = dataclasses.replace(old, **changes)
    with _lock:
        _current = new
    try:
        yield new
    finally:
        with _lock:
            _current = old
