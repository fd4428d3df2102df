"""Shared by tests/test_glcm.py and tests/test_glcm_gpu.py: the implementation paths a GLCM test runs
on (the ``use_path`` fixture), test images, the skimage reference scores, and failing builds."""
import numpy as np
import pytest
import torch
from skimage import data

from d4k_kernels import _build, backend
from conftest import fake_extensions, setenv
from d4k_kernels.reference import glcm as R

HAS_CUDA = torch.cuda.is_available()
INTERP = backend.HAS_TRITON and backend.interpreter_enabled()


# ------------------------------------------------------------------------------------------------
# paths: "cpp" (compiled CPU kernel), "torch" (fallback), "triton" (interpreter / CUDA), "cuda" (the
# compiled CUDA score kernel; counts still run the Triton kernel)
# ------------------------------------------------------------------------------------------------
def cpp_available():
    return backend.extension("glcm") is not None


def require_cuda_kernel():
    """The CUDA extension must build on a GPU machine: a failure is reported, not skipped."""
    if backend.extension("glcm_cuda", torch.device("cuda")) is None:
        pytest.fail(f"the CUDA GLCM kernel did not build/load: {_build.failure('glcm_cuda')}")


@pytest.fixture
def use_path(monkeypatch):
    """use_path(name) -> device; selects the implementation for the rest of the test."""
    stack = []

    def select(name):
        if name == "cpp":
            if not cpp_available():
                pytest.skip("compiled CPU extension unavailable here")
            ctx = backend.prefer("cpu")
            dev = torch.device("cpu")
        elif name == "torch":
            fake_extensions(monkeypatch, glcm=None)
            ctx = backend.prefer("cpu")
            dev = torch.device("cuda" if HAS_CUDA else "cpu")
        elif name == "triton":
            if HAS_CUDA:
                dev = torch.device("cuda")
            elif INTERP:
                dev = torch.device("cpu")
            else:
                pytest.skip("no Triton interpreter / GPU")
            setenv(monkeypatch, "D4K_GLCM_CUDA", "0")   # the Triton kernels, not the CUDA score kernel
            ctx = backend.prefer("triton")
        elif name == "cuda":
            if not HAS_CUDA:
                pytest.skip("needs a CUDA GPU")
            setenv(monkeypatch, "D4K_GLCM_CUDA", "1")
            require_cuda_kernel()
            dev = torch.device("cuda")
            ctx = backend.prefer("triton")
        else:
            raise ValueError(name)
        ctx.__enter__()
        stack.append(ctx)
        return dev

    yield select
    for ctx in reversed(stack):
        ctx.__exit__(None, None, None)


FULL_PATHS = ["cpp", "torch"] + (["triton", "cuda"] if HAS_CUDA else [])
ALL_PATHS = ["cpp", "torch", "triton"] + (["cuda"] if HAS_CUDA else [])


# ------------------------------------------------------------------------------------------------
# helpers / images
# ------------------------------------------------------------------------------------------------
def natural_image(size: int) -> np.ndarray:
    """skimage sample images (8-bit gray) tiled up to size x size."""
    cam = data.camera()
    ast = data.astronaut()
    ast_gray = ((ast[..., 0].astype(np.int32) * 9798 + ast[..., 1].astype(np.int32) * 19235
                 + ast[..., 2].astype(np.int32) * 3735 + 16384) >> 15).astype(np.uint8)
    coins = np.pad(data.coins(), ((0, 512 - 303), (0, 512 - 384)), mode="reflect")
    tile = np.concatenate([np.concatenate([cam, ast_gray], 1), np.concatenate([coins, cam[::-1]], 1)], 0)
    reps = -(-size // tile.shape[0])
    return np.ascontiguousarray(np.tile(tile, (reps, reps))[:size, :size])


def mixed_image(rng, n_side=2) -> np.ndarray:
    """64k x 64k image whose patches are random, few-level, constant, smooth, natural."""
    kinds = []
    nat = data.camera()
    for i in range(n_side * n_side):
        k = i % 5
        if k == 0:
            p = rng.integers(0, 256, (64, 64))
        elif k == 1:
            p = rng.choice(rng.integers(0, 256, 3), size=(64, 64))
        elif k == 2:
            p = np.full((64, 64), rng.integers(0, 256))
        elif k == 3:
            yy, xx = np.mgrid[0:64, 0:64]
            p = (yy * rng.integers(1, 4) + xx * rng.integers(0, 3)) % 256
        else:
            r, c = rng.integers(0, 448, 2)
            p = nat[r:r + 64, c:c + 64]
        kinds.append(p.astype(np.uint8))
    rows = [np.concatenate(kinds[r * n_side:(r + 1) * n_side], 1) for r in range(n_side)]
    return np.concatenate(rows, 0)


def ref_scores(gray: np.ndarray, size: int, **kw) -> np.ndarray:
    return R.patch_scores(gray, size=size, **kw)


def failing_builds(monkeypatch, reason):
    """Every extension build fails with ``reason`` (a fresh load/failure record, restored after the
    test); returns the (name, sources, ops_namespace) of each build tried."""
    calls = []

    def failing_build(name, sources, cflags, cuda_cflags, ldflags, ops_namespace=None):
        calls.append((name, tuple(sources), ops_namespace))
        raise RuntimeError(reason)

    monkeypatch.setattr(_build, "_build", failing_build)
    monkeypatch.setattr(_build, "_loaded", {})
    monkeypatch.setattr(_build, "_failed", {})
    return calls
