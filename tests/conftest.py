"""Test setup.

Without a CUDA GPU the Triton kernels run under the Triton interpreter: TRITON_INTERPRET=1 must be
set before triton is imported, so it is set here, before anything imports d4k_kernels. Set
D4K_TEST_INTERPRET=0 to turn that off (e.g. on a GPU machine, where CUDA tensors run the compiled
kernels; the interpreter is still used for CPU tensors only when it is on).

Fixtures:
  backend_device  -> (backend, device) pairs every op test should run on:
                     ("cpu", cpu) always; ("triton", cpu) under the interpreter;
                     ("triton", cuda) when a GPU is present.
  run_on          -> context manager selecting a backend (d4k_kernels.backend.prefer).
"""
import os

import torch

_HAS_CUDA = torch.cuda.is_available()
if os.environ.get("D4K_TEST_INTERPRET", "0" if _HAS_CUDA else "1") == "1":
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from d4k_kernels import backend as _backend  # noqa: E402
from d4k_kernels import settings as _settings  # noqa: E402

_PAIRS = [("cpu", "cpu")]
if _backend.HAS_TRITON and _backend.interpreter_enabled():
    _PAIRS.append(("triton", "cpu"))
if _HAS_CUDA and _backend.HAS_TRITON:
    _PAIRS.append(("triton", "cuda"))


@pytest.fixture(params=_PAIRS, ids=[f"{b}-{d}" for b, d in _PAIRS])
def backend_device(request):
    """(backend name, torch.device); the backend is preferred for the duration of the test."""
    name, dev = request.param
    with _backend.prefer(name):
        yield name, torch.device(dev)


def pytest_collection_modifyitems(config, items):
    if _HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run bench/gpu_check.sh on one)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _settings_follow_env():
    """The library reads D4K_* variables once (d4k_kernels.settings): a test that changes the
    environment calls setenv() below (or settings.override); afterwards, with monkeypatch's changes
    undone, the settings are read again."""
    yield
    _settings.reload()


def setenv(monkeypatch, name, value=None):
    """monkeypatch.setenv (value None: delenv) followed by settings.reload()."""
    if value is None:
        monkeypatch.delenv(name, raising=False)
    else:
        monkeypatch.setenv(name, value)
    _settings.reload()


def fake_extensions(monkeypatch, **fakes):
    """backend.extension answers ``fakes[name]`` (a stand-in module, or None: "cannot be built") for the
    names given, the real extensions for the others."""
    real = _backend.extension
    monkeypatch.setattr(_backend, "extension",
                        lambda name, device=None: fakes[name] if name in fakes else real(name, device))


@pytest.fixture
def seed():
    """A fresh seed per test run, printed so that a failure can be replayed (D4K_SEED=...)."""
    s = int(os.environ.get("D4K_SEED", torch.seed() % (2**31)))
    torch.manual_seed(s)
    print(f"seed={s}")
    return s


@pytest.fixture
def no_tf32():
    """fp32 means fp32: cuDNN convolutions default to TF32 on Ampere and later (so do pytorch_wavelets'
    DWTs, which are convolutions), and then two fp32 computations whose convs run on different shapes
    or algorithms differ at TF32 rounding (~1e-3: 1.06e-3 between a tiled and an untiled decode on an
    H200, bench/NOTES_vae.md). Tests that compare fp32 results on CUDA turn it off."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old
