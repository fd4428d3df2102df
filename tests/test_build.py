"""The compiled-extension loader (d4k_kernels._build): source lookup (repo and wheel layouts), the
build cache, D4K_NO_EXT, and the warning/fallback path when a build fails."""
import platform
import sys
import warnings

import pytest
import torch

from d4k_kernels import _build
from conftest import setenv


@pytest.fixture(autouse=True)
def _fresh_loader():
    """Each test sees the loader's memo empty and leaves it as it found it."""
    saved = (dict(_build._loaded), dict(_build._failed))
    _build._reset_for_tests()
    yield
    _build._loaded.clear()
    _build._failed.clear()
    _build._loaded.update(saved[0])
    _build._failed.update(saved[1])


def test_find_source_repo_layout():
    p = _build.find_source("csrc/glcm.cpp")
    assert p.is_file() and p.parent.name == "csrc"
    assert _build.find_source("bindings/glcm.cpp").parent.name == "bindings"
    with pytest.raises(ValueError, match="csrc/ or bindings/"):
        _build.find_source("elsewhere/x.cpp")
    with pytest.raises(_build.ExtensionError, match="nope.cpp"):
        _build.find_source("csrc/nope.cpp")


def test_find_source_wheel_layout(tmp_path, monkeypatch):
    """In an installed wheel the sources live in the packages d4k_kernels._csrc / ._bindings."""
    pkg = tmp_path / "fake_d4k_csrc"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "k.cpp").write_text("// shipped source\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(_build, "_REPO_ROOT", tmp_path / "no_repo_here")
    monkeypatch.setitem(_build._PKG_FOR_DIR, "csrc", "fake_d4k_csrc")
    p = _build.find_source("csrc/k.cpp")
    assert p.read_text() == "// shipped source\n"
    sys.modules.pop("fake_d4k_csrc", None)


def test_cache_dir_env(monkeypatch, tmp_path):
    setenv(monkeypatch, "D4K_EXT_DIR", str(tmp_path / "a"))
    assert str(_build.cache_dir()).startswith(str(tmp_path / "a"))
    setenv(monkeypatch, "D4K_EXT_DIR")
    setenv(monkeypatch, "TORCH_EXTENSIONS_DIR", str(tmp_path / "b"))
    d = _build.cache_dir()
    assert str(d).startswith(str(tmp_path / "b" / "d4k_kernels"))
    assert torch.__version__.split("+")[0].replace(".", "") in d.name


def test_disabled_by_env(monkeypatch):
    setenv(monkeypatch, "D4K_NO_EXT", "1")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _build.load_extension("glcm", ["csrc/glcm.cpp", "bindings/glcm.cpp"], warn=False) is None
        # D4K_NO_EXT=1 is the user's choice: no "set D4K_NO_EXT=1 to silence this" warning either
        assert _build.load_extension("glcm_off", ["csrc/glcm.cpp", "bindings/glcm.cpp"]) is None
    assert "D4K_NO_EXT" in _build.failure("glcm")
    with pytest.raises(_build.ExtensionError, match="D4K_NO_EXT"):
        _build.load_extension("glcm", ["csrc/glcm.cpp", "bindings/glcm.cpp"], required=True)


def test_failed_build_warns_once_and_returns_none(monkeypatch, tmp_path):
    setenv(monkeypatch, "D4K_NO_EXT")
    setenv(monkeypatch, "CXX", str(tmp_path / "no-such-compiler"))
    with pytest.warns(RuntimeWarning, match="no-such-compiler"):
        assert _build.load_extension("glcm_t", ["csrc/glcm.cpp", "bindings/glcm.cpp"]) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # second call: remembered, silent
        assert _build.load_extension("glcm_t", ["csrc/glcm.cpp", "bindings/glcm.cpp"]) is None


def test_compile_error_is_reported(monkeypatch, tmp_path):
    setenv(monkeypatch, "D4K_NO_EXT")
    setenv(monkeypatch, "D4K_EXT_DIR", str(tmp_path / "cache"))
    bad = tmp_path / "csrc"
    bad.mkdir()
    (bad / "broken.cpp").write_text("this is not C++;\n")
    monkeypatch.setattr(_build, "_REPO_ROOT", tmp_path)
    with pytest.raises(_build.ExtensionError, match="broken"):
        _build.load_extension("broken", ["csrc/broken.cpp"], required=True)


def test_glcm_extension_is_built_once_and_cached(monkeypatch):
    setenv(monkeypatch, "D4K_NO_EXT")
    try:
        mod = _build.load_extension("glcm", ["csrc/glcm.cpp", "bindings/glcm.cpp"], ops_namespace="d4k_glcm",
                                      openmp=True, required=True)
    except _build.ExtensionError as e:
        pytest.skip(f"no working compiler here: {e}")
    so = mod.__file__
    assert so.startswith(str(_build.cache_dir()))
    assert hasattr(mod, "glcm_counts") and hasattr(mod, "glcm_scores")
    # a second load (new process state) reuses the cached build: same shared object, no rebuild
    _build._reset_for_tests()
    mod2 = _build.load_extension("glcm", ["csrc/glcm.cpp", "bindings/glcm.cpp"], ops_namespace="d4k_glcm",
                                 openmp=True, required=True)
    assert mod2.__file__ == so
    # the kernel runs: counts of a tiny image (offset (0, 1), 2 levels)
    g = torch.tensor([[[0, 1], [1, 1]]], dtype=torch.uint8)
    c = mod2.glcm_counts(g, 2, torch.tensor([[0, 1]], dtype=torch.int32), 2, 1)
    assert c.tolist() == [[[[0, 1], [0, 1]]]]


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86 flags")
@pytest.mark.parametrize("variant,flags", [
    ("portable", ["-mno-avx2", "-mno-avx512f"]),     # scalar scan
    ("avx2", ["-mno-avx512f"]),                      # AVX2 scan
    ("nopopcnt", ["-mno-avx512vpopcntdq"]),          # AVX-512 range scan, no bitmap path
])
def test_glcm_portable_build_matches(monkeypatch, seed, variant, flags):
    """The C++ kernel built for older instruction sets gives the same scores."""
    import numpy as np

    from d4k_kernels.ops import glcm as G

    setenv(monkeypatch, "D4K_NO_EXT")
    ns = f"d4k_glcm_{variant}"
    try:
        lib = _build.load_extension(
            f"glcm_{variant}", ["csrc/glcm.cpp", "bindings/glcm.cpp"], ops_namespace=ns,
            extra_cflags=flags + [f"-DD4K_GLCM_NS={ns}"], required=True)
    except _build.ExtensionError as e:
        pytest.skip(f"no working compiler here: {e}")
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (3, 128, 128)).astype(np.uint8)
    img[1] = (np.add.outer(np.arange(128), np.arange(128)) // 9).astype(np.uint8)  # smooth: counts >= 4
    img[2] = (rng.choice([40, 48, 60, 72], size=(128, 128)) + rng.integers(0, 4, (128, 128))).astype(np.uint8)
    g = torch.from_numpy(img)
    plan = G._plan(64, tuple(G.offsets_of(G.PAPER_DISTANCES, G.PAPER_ANGLES)), 64)
    kt, mult, flog, offs = G._device_tables(plan, torch.device("cpu"))
    got = lib.glcm_scores(g, 64, offs, mult, kt, flog, 64, 4, plan.nkeys)
    ref = G._torch_scores(g, plan, 4).reshape(-1)
    assert torch.allclose(got, ref, rtol=0, atol=1e-12)
