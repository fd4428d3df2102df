"""Compiled extensions built at first use (torch.utils.cpp_extension + ninja) and cached.

``load_extension(name, sources)`` finds the C++/CUDA sources both in the repository layout
(``csrc/``, ``bindings/`` beside the package) and in an installed wheel (packages
``d4k_kernels._csrc`` / ``d4k_kernels._bindings``, see setup.py), builds them once per source
version / torch / Python / CPU into a cache directory and imports the module.

:data:`EXTENSIONS` names the library's own extensions (sources, namespace, what falls back), and
``extension(name)`` loads one of them; :func:`d4k_kernels.backend.choose` is its caller.

Cache directory (first that is set):
    $D4K_EXT_DIR, $TORCH_EXTENSIONS_DIR/d4k_kernels, ~/.cache/d4k_kernels/ext  (+ a per-ABI tag)
Settings (d4k_kernels.settings): D4K_NO_EXT=1 never builds or loads compiled extensions (the torch
paths run); D4K_EXT_VERBOSE=1 shows the compiler output.

A failure (no compiler, no ninja, a compile error) returns ``None`` with one warning per
extension, unless ``required=True`` (then :class:`ExtensionError` is raised with the reason).
"""
from __future__ import annotations

import hashlib
import importlib.resources
import os
import platform
import shutil
import sys
import threading
import warnings
from pathlib import Path
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from . import settings

__all__ = ["ExtensionError", "TorchLibrary", "Extension", "EXTENSIONS", "extension", "load_extension",
           "find_source", "cache_dir", "ext_disabled", "failure"]

_PKG_FOR_DIR = {"csrc": "d4k_kernels._csrc", "bindings": "d4k_kernels._bindings"}
_REPO_ROOT = Path(__file__).resolve().parent.parent

_lock = threading.Lock()
_loaded: Dict[str, object] = {}
_failed: Dict[str, str] = {}


class ExtensionError(RuntimeError):
    """A compiled extension could not be built or loaded."""


def ext_disabled() -> bool:
    return settings.current().no_ext


def find_source(rel: str) -> Path:
    """Path of a source such as ``"csrc/glcm.cpp"``: the repository file, else the wheel's copy."""
    top, _, fname = rel.partition("/")
    if top not in _PKG_FOR_DIR or not fname:
        raise ValueError(f"source {rel!r} must be under csrc/ or bindings/")
    p = _REPO_ROOT / top / fname
    if p.is_file():
        return p
    try:
        res = importlib.resources.files(_PKG_FOR_DIR[top]).joinpath(fname)
        if res.is_file():
            return Path(str(res))
    except (ModuleNotFoundError, FileNotFoundError, TypeError):
        pass
    raise ExtensionError(f"source file {rel!r} not found (looked in {_REPO_ROOT / top} and package {_PKG_FOR_DIR[top]})")


def _cpu_tag() -> str:
    """Builds use -march=native: key the cache on the CPU's feature flags too."""
    info = platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features", "model name")):
                    info += line
                if line.strip() == "":
                    break
    except OSError:
        pass
    return hashlib.sha1(info.encode()).hexdigest()[:8]


def cache_dir() -> Path:
    base = settings.current().ext_dir
    if base:
        root = Path(base)
    elif os.environ.get("TORCH_EXTENSIONS_DIR"):
        root = Path(os.environ["TORCH_EXTENSIONS_DIR"]) / "d4k_kernels"
    else:
        root = Path(os.path.expanduser("~")) / ".cache" / "d4k_kernels" / "ext"
    tv = torch.__version__.split("+")[0].replace(".", "")
    tag = f"py{sys.version_info[0]}{sys.version_info[1]}_torch{tv}_{platform.machine()}_{_cpu_tag()}"
    return root / tag


def failure(name: str) -> Optional[str]:
    """Why extension ``name`` is unavailable (None when it loaded or was never tried)."""
    return _failed.get(name)


def _default_cflags() -> List[str]:
    flags = ["-O3"]
    if platform.machine() in ("x86_64", "AMD64", "aarch64", "arm64"):
        flags.append("-march=native")
    return flags


class TorchLibrary:
    """A loaded TORCH_LIBRARY extension: attribute access gives ``torch.ops.<namespace>.<op>``."""

    def __init__(self, namespace: str, path: str):
        self.namespace = namespace
        self.__file__ = path

    def __getattr__(self, op: str):
        return getattr(getattr(torch.ops, self.namespace), op)

    def __repr__(self):
        return f"<d4k extension torch.ops.{self.namespace} from {self.__file__}>"


def load_extension(
    name: str,
    sources: Sequence[str],
    *,
    ops_namespace: Optional[str] = None,
    openmp: bool = False,
    extra_cflags: Sequence[str] = (),
    extra_cuda_cflags: Sequence[str] = (),
    extra_ldflags: Sequence[str] = (),
    required: bool = False,
    warn: bool = True,
    what: Optional[str] = None,
    fallback: str = "the slower torch fallback",
    silence: str = "Set D4K_NO_EXT=1 to silence this.",
    stacklevel: int = 3,
):
    """Build (once) and import extension ``name`` from ``sources`` (paths like ``"csrc/x.cpp"``).

    ``openmp=True`` compiles with -fopenmp (Linux): ATen's ``at::parallel_for`` is an inline OpenMP
    loop, serial unless the extension itself is built with OpenMP; the loader then resolves
    libgomp.so.1 to the copy torch already loaded, so ``torch.set_num_threads`` applies.
    With ``ops_namespace`` the sources register ops with ``TORCH_LIBRARY(<ops_namespace>, m)`` and a
    :class:`TorchLibrary` is returned; otherwise they define a pybind11 module, which is returned.
    ``None`` when building is disabled or fails, unless ``required``. A failed build warns once per
    name (``warn``): "<what> is unavailable (<reason>); using <fallback>. <silence>" at ``stacklevel``
    (as :func:`warnings.warn` counts it from this function); D4K_NO_EXT=1 is a choice, not a failure,
    and warns nothing."""
    with _lock:
        if name in _loaded:
            return _loaded[name]
        if name in _failed and not required:
            return None
        try:
            omp = ["-fopenmp"] if openmp and sys.platform.startswith("linux") else []
            mod = _build(name, sources, omp + list(extra_cflags), list(extra_cuda_cflags), omp + list(extra_ldflags),
                         ops_namespace)
        except Exception as e:  # noqa: BLE001 - any failure means "use the fallback"
            reason = f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"
            _failed[name] = reason
            if required:
                raise ExtensionError(f"d4k extension {name!r} is unavailable: {reason}") from e
            if warn and not ext_disabled():
                warnings.warn(
                    f"d4k_kernels: {what or f'compiled extension {name!r}'} is unavailable ({reason}); "
                    f"using {fallback}. {silence}",
                    RuntimeWarning,
                    stacklevel=stacklevel,
                )
            return None
        _loaded[name] = mod
        return mod


def _build(name, sources, cflags, cuda_cflags, ldflags, ops_namespace=None):
    if ext_disabled():
        raise ExtensionError("disabled by D4K_NO_EXT=1")
    paths = [find_source(s) for s in sources]
    with_cuda = any(p.suffix == ".cu" for p in paths)
    if with_cuda and not torch.cuda.is_available():
        raise ExtensionError("CUDA sources need a CUDA build of torch and a GPU")
    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None:
        raise ExtensionError(f"no C++ compiler ({cxx!r} not on PATH)")
    from torch.utils import cpp_extension

    if not cpp_extension.is_ninja_available():
        raise ExtensionError("ninja is not installed (pip install ninja)")
    cflags = _default_cflags() + cflags
    h = hashlib.sha1()
    for p in paths:
        h.update(p.read_bytes())
    for d in sorted({p.parent for p in paths}):  # headers next to the sources
        for hdr in sorted(list(d.glob("*.h")) + list(d.glob("*.cuh"))):
            h.update(hdr.name.encode() + hdr.read_bytes())
    h.update(" ".join(cflags + cuda_cflags + ldflags).encode())
    modname = f"d4k_{name}_{h.hexdigest()[:10]}"
    bdir = cache_dir() / modname
    bdir.mkdir(parents=True, exist_ok=True)
    verbose = settings.current().ext_verbose
    # ninja names objects after the source's base name: copy the sources under unique names
    # (csrc/glcm.cpp and bindings/glcm.cpp would both make glcm.o); headers stay where they are.
    sdir = bdir / "src"
    sdir.mkdir(exist_ok=True)
    local = []
    for p in paths:
        dst = sdir / f"{p.parent.name.lstrip('_')}_{p.name}"
        data = p.read_bytes()
        if not dst.is_file() or dst.read_bytes() != data:
            tmp = dst.with_suffix(dst.suffix + f".tmp{os.getpid()}")
            tmp.write_bytes(data)
            os.replace(tmp, dst)
        local.append(str(dst))
    res = cpp_extension.load(
        name=modname,
        sources=local,
        extra_cflags=cflags,
        extra_cuda_cflags=["-O3"] + cuda_cflags,
        extra_ldflags=ldflags,
        build_directory=str(bdir),
        extra_include_paths=sorted({str(p.parent) for p in paths}),
        with_cuda=with_cuda,
        verbose=verbose,
        is_python_module=ops_namespace is None,
    )
    if ops_namespace is None:
        return res
    so = res if isinstance(res, str) else str(bdir / f"{modname}.so")
    return TorchLibrary(ops_namespace, so)


def cuda_arch_flags(device: Optional[torch.device] = None) -> List[str]:
    """nvcc flags for the GPU at hand (torch adds none of its own when one names an arch)."""
    major, minor = torch.cuda.get_device_capability(device)
    cc = f"{major}{minor}"
    if (major, minor) == (9, 0):
        cc = "90a"
    return [f"-gencode=arch=compute_{cc},code=sm_{cc}"]


@dataclass(frozen=True)
class Extension:
    """One of the library's compiled extensions."""

    sources: Tuple[str, ...]
    ops_namespace: str
    what: str                                   # for the warning when it cannot be built
    fallback: str                               # what runs instead
    openmp: bool = False
    cuda: bool = False                          # needs a GPU; built for its compute capability
    silence: str = "Set D4K_NO_EXT=1 to silence this."


EXTENSIONS: Dict[str, Extension] = {
    "haar": Extension(("csrc/haar.cpp", "bindings/haar.cpp"), "d4k_haar", "the compiled Haar CPU levels",
                      "the vectorised torch path", openmp=True),
    "glcm": Extension(("csrc/glcm.cpp", "bindings/glcm.cpp"), "d4k_glcm", "the compiled GLCM CPU kernel",
                      "the vectorised torch fallback (slower)", openmp=True),
    "glcm_cuda": Extension(("bindings/glcm_cuda.cpp", "csrc/glcm_cuda.cu"), "d4k_glcm_cuda",
                           "the GLCM CUDA score kernel", "the Triton kernel", cuda=True,
                           silence="Set D4K_GLCM_CUDA=0 to silence this."),
}


def extension(name: str, device: Optional[torch.device] = None):
    """Extension ``name`` of :data:`EXTENSIONS`, built at first use and cached; None where it cannot be
    built (one warning). A CUDA extension is built once per process, for the compute capability of
    the first GPU it is used on (``device``)."""
    spec = EXTENSIONS[name]
    loaded = _loaded.get(name)
    if loaded is not None:
        return loaded
    if spec.cuda and not torch.cuda.is_available():
        return None
    flags = cuda_arch_flags(device) if spec.cuda else []
    return load_extension(name, spec.sources, ops_namespace=spec.ops_namespace, openmp=spec.openmp,
                          extra_cuda_cflags=flags, what=spec.what, fallback=spec.fallback, silence=spec.silence,
                          stacklevel=6)


def _reset_for_tests() -> None:
    """Forget loaded/failed extensions (tests of the cache / fallback behaviour)."""
    with _lock:
        _loaded.clear()
        _failed.clear()
