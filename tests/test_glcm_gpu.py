"""The GLCM GPU kernels: every Triton counting variant (under the interpreter without a GPU), the
Triton kernels compiled for sm_90 (no GPU needed), the Triton path on 4K images (GPU), and the compiled
CUDA score kernel (csrc/glcm_cuda.cu): its routing and build fallback (CPU, with a stand-in
extension) and its equality with the Triton kernel, the torch path and the skimage loop (GPU)."""
import math
import warnings

import numpy as np
import pytest
import torch

skimage = pytest.importorskip("skimage")
from skimage import data  # noqa: E402
from skimage.feature import graycomatrix  # noqa: E402
from skimage.measure import shannon_entropy  # noqa: E402

from d4k_kernels import _build, backend  # noqa: E402
from conftest import fake_extensions, setenv  # noqa: E402
from d4k_kernels.ops import glcm as G  # noqa: E402
from d4k_kernels.reference import glcm as R  # noqa: E402
from glcm_support import (  # noqa: E402,F401  (use_path is a fixture)
    failing_builds, natural_image, ref_scores, require_cuda_kernel, use_path)

_COMPILE_SCRIPT = r"""
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from d4k_kernels import settings
from d4k_kernels.ops import _glcm_triton as GT
ptr = {"g_ptr": "*u8", "off_ptr": "*i32", "out_ptr": "*i32", "key_ptr": "*i32", "mult_ptr": "*i32",
       "nacc_ptr": "*i32", "flog_ptr": "*fp64"}
def comp(kern, const, over=None):
    names = kern.arg_names
    sig = {n: "constexpr" if n in const else ptr.get(n, "i64" if n.startswith("s_") else "i32") for n in names}
    sig.update(over or {})
    consts = {(names.index(n),): v for n, v in const.items()}
    k = triton.compile(ASTSource(fn=kern, signature=sig, constexprs=consts),
                       target=GPUTarget("cuda", 90, 32), options={"num_warps": settings.current().glcm_warps})
    assert "ptx" in k.asm
for score in (True, False):
    for L, P in ((64, 64), (256, 32), (10, 16)):
        bl, nb = GT._tiles(L)
        for g in (1, 2):
            comp(GT._glcm_tile_kernel, dict(P=P, L=L, BL=bl, BK=GT._bk(P, __import__("torch").device("cuda")),
                                            NB=nb, SCORE=score, G=g))
comp(GT._flog_sum_kernel, dict(BLOCK=1024), {"out_ptr": "*fp64"})
for score in (True, False):
    for L, P in ((64, 64), (10, 16), (128, 32)):
        plan = __import__("d4k_kernels.ops.glcm", fromlist=["_plan"])._plan(P, ((0, 1), (1, 1), (3, -3)), L)
        llb, nb, bk = GT._hist_sizes(plan)
        comp(GT._glcm_hist_kernel, dict(P=P, L=L, LLB=llb, NB=nb, BK=bk, SCORE=score))
print("compiled")
"""


@pytest.mark.skipif(not backend.HAS_TRITON, reason="needs triton")
def test_triton_kernels_compile_for_sm90():
    """The GPU compiler (sm_90, no GPU needed) accepts the kernels the interpreter runs: the int8
    one-hot dot, the integer atomics and the float64 table sum."""
    from gpu_compile import assert_compiles_for_sm90

    assert_compiles_for_sm90(_COMPILE_SCRIPT)


@pytest.mark.cuda
def test_cuda_triton_matches_other_paths_large(monkeypatch):
    """4096^2 and a batch of 16 2048^2 natural images on the GPU: the Triton kernels equal the
    vectorised torch path run on the same CUDA tensors, and the skimage loop on sampled patches."""
    setenv(monkeypatch, "D4K_GLCM_CUDA", "0")   # Triton here; the CUDA kernel has its own test below
    img = natural_image(4096)
    x = torch.from_numpy(img).cuda()
    with backend.prefer("triton"):
        gpu = G.glcm_score(x, size=4096, reduction="none")
        counts = G.glcm(x[:512, :512] // 4)
    with backend.prefer("cpu"):
        other = G.glcm_score(x, size=4096, reduction="none")   # torch fallback on CUDA
        counts_other = G.glcm(x[:512, :512] // 4)
    np.testing.assert_allclose(gpu.cpu().numpy(), other.cpu().numpy(), rtol=0, atol=1e-12)
    np.testing.assert_array_equal(counts.cpu().numpy(), counts_other.cpu().numpy())
    rng = np.random.default_rng(0)
    q = img // 4
    for i in rng.choice(4096, 16, replace=False):
        r, c = divmod(int(i), 64)
        p = q[r * 64:(r + 1) * 64, c * 64:(c + 1) * 64]
        ref = shannon_entropy(graycomatrix(p, [1, 2, 3, 4], list(G.PAPER_ANGLES), levels=64, normed=True))
        assert abs(float(gpu[i]) - ref) <= 1e-12
    batch = torch.from_numpy(np.stack([np.roll(natural_image(2048), 7 * i, 1) for i in range(16)])).cuda()
    with backend.prefer("triton"):
        s = G.glcm_score(batch)
    with backend.prefer("cpu"):
        s_other = G.glcm_score(batch)
    np.testing.assert_allclose(s.cpu().numpy(), s_other.cpu().numpy(), rtol=0, atol=1e-12)


@pytest.mark.parametrize("kernel,g", [("hist", 1), ("dot", 1), ("dot", 2)])
def test_triton_kernel_variants(use_path, monkeypatch, kernel, g, seed):
    """Every Triton variant: the histogram kernel, the one-hot dot kernel with one or two offsets per
    program (sharing the one-hot tile), with an odd number of distinct offsets."""
    dev = use_path("triton")
    setenv(monkeypatch, "D4K_GLCM_G", str(g))
    setenv(monkeypatch, "D4K_GLCM_KERNEL", kernel)
    assert G.counting_kernel() == kernel
    rng = np.random.default_rng(seed)
    q = rng.integers(0, 10, (1, 32, 48)).astype(np.uint8)
    dist, ang = (1, 2), (0.0, math.pi / 2, math.pi / 4)   # 5 distinct offsets
    assert len(set(G.offsets_of(dist, ang))) % 2 == 1
    c = G.glcm(torch.from_numpy(q).to(dev), patch=16, distances=dist, angles=ang, levels=10)
    np.testing.assert_array_equal(c.cpu().numpy()[0], R.glcm_counts(q[0], 16, dist, ang, 10))
    img = (q[0, :32, :32] * 25).astype(np.uint8)
    s = G.glcm_score(torch.from_numpy(img).to(dev), size=32, patch=16, levels=16, distances=dist, angles=ang,
                     reduction="none")
    ref = ref_scores(img, 32, patch=16, levels=16, distances=dist, angles=ang)
    np.testing.assert_allclose(s.cpu().numpy(), ref, rtol=0, atol=1e-12)
    # the paper's configuration on a constant and a natural patch
    two = np.concatenate([np.full((64, 64), 77, np.uint8), data.camera()[200:264, 300:364]], 1)
    s2 = G.glcm_score(torch.from_numpy(two).to(dev), size=64, reduction="none")
    s2b = G.glcm_score(torch.from_numpy(np.ascontiguousarray(two[:, 64:])).to(dev), size=64, reduction="none")
    np.testing.assert_allclose(s2.cpu().numpy(), ref_scores(two, 64), rtol=0, atol=1e-12)
    np.testing.assert_allclose(s2b.cpu().numpy(), ref_scores(two[:, 64:], 64), rtol=0, atol=1e-12)


# ------------------------------------------------------------------------------------------------
# the CUDA score kernel (csrc/glcm_cuda.cu): routing and fallback (CPU), equality with Triton (GPU)
# ------------------------------------------------------------------------------------------------
_PAPER_PLAN = G._plan(64, tuple(G.offsets_of(G.PAPER_DISTANCES, G.PAPER_ANGLES)), 64)


class _FakeCudaExt:
    """Stands in for torch.ops.d4k_glcm_cuda in routing tests (no GPU needed)."""

    def __init__(self, limit=232448):
        self.limit = limit

    def max_smem(self, device):
        return self.limit

    def smem_bytes(self, patch, levels, nkeys, nacc16):  # the layout of csrc/glcm_cuda.cu
        return 4 * levels * levels + 4 * ((nkeys + 1) // 2 if nacc16 else nkeys) + -(-patch * patch // 16) * 16 + 256


def test_cuda_routing_env_fit_and_fallback(monkeypatch):
    """cuda_choice: the CUDA kernel for CUDA tensors when enabled, built and fitting shared memory;
    None (-> Triton) with D4K_GLCM_CUDA=0, a failed build, too little shared memory, or a CPU tensor."""
    fake = _FakeCudaExt()
    fake_extensions(monkeypatch, glcm_cuda=fake)
    monkeypatch.setattr(G, "_SMEM", {})
    for var in ("D4K_GLCM_CUDA", "D4K_GLCM_CUDA_THREADS", "D4K_GLCM_CUDA_NACC16"):
        setenv(monkeypatch, var)
    cuda0 = torch.device("cuda", 0)
    plan = _PAPER_PLAN
    assert G.cuda_choice(cuda0, plan) == (fake, 512, True)
    assert G.cuda_choice(torch.device("cpu"), plan) is None
    setenv(monkeypatch, "D4K_GLCM_CUDA_THREADS", "256")
    setenv(monkeypatch, "D4K_GLCM_CUDA_NACC16", "0")
    assert G.cuda_choice(cuda0, plan) == (fake, 256, False)
    setenv(monkeypatch, "D4K_GLCM_CUDA", "0")
    assert G.cuda_choice(cuda0, plan) is None
    setenv(monkeypatch, "D4K_GLCM_CUDA", "1")
    # 32-bit multiplicities of the paper's plan need ~127 KB, 16-bit ones ~74 KB
    monkeypatch.setattr(G, "_SMEM", {})
    fake.limit = 100 * 1024
    assert G.cuda_choice(cuda0, plan) is None
    setenv(monkeypatch, "D4K_GLCM_CUDA_NACC16")
    assert G.cuda_choice(cuda0, plan) == (fake, 256, True)
    monkeypatch.setattr(G, "_SMEM", {})
    fake.limit = 48 * 1024
    assert G.cuda_choice(cuda0, plan) is None
    fake_extensions(monkeypatch, glcm_cuda=None)   # build failed / no GPU
    assert G.cuda_choice(cuda0, plan) is None


def test_cuda_build_failure_warns_once(monkeypatch):
    """A failed build of the CUDA extension warns once and leaves the score to Triton."""
    setenv(monkeypatch, "D4K_NO_EXT")
    setenv(monkeypatch, "D4K_GLCM_CUDA")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(_build, "cuda_arch_flags", lambda device=None: [])
    calls = failing_builds(monkeypatch, "nvcc exploded")
    monkeypatch.setattr(G, "_SMEM", {})
    with pytest.warns(RuntimeWarning, match="CUDA score kernel is unavailable.*nvcc exploded.*Triton"):
        assert backend.extension("glcm_cuda", torch.device("cuda", 0)) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert G.cuda_choice(torch.device("cuda", 0), _PAPER_PLAN) is None
    assert calls[0] == ("glcm_cuda", ("bindings/glcm_cuda.cpp", "csrc/glcm_cuda.cu"), "d4k_glcm_cuda")


def test_cuda_sources_are_found_and_torch_free():
    """The CUDA sources ship like the CPU ones; the .cu does not include torch headers, the binding no
    c10/cuda header (so it builds with torch/library.h only)."""
    from d4k_kernels import _build

    cu = _build.find_source("csrc/glcm_cuda.cu").read_text()
    bind = _build.find_source("bindings/glcm_cuda.cpp").read_text()
    assert "#include <torch" not in cu and "#include <ATen" not in cu and "#include <c10" not in cu
    includes = [ln for ln in bind.splitlines() if ln.startswith("#include")]
    assert not any("cuda" in ln for ln in includes), includes
    assert "TORCH_LIBRARY(d4k_glcm_cuda" in bind


def test_nacc16_exact_bound():
    """16-bit multiplicities only where no value can occur more than 65535 times in a patch."""
    assert G._nacc16_exact(_PAPER_PLAN)                       # T = 65536: zeros <= 65520
    assert G._nacc16_exact(G._plan(16, ((0, 1), (1, 0)), 8))
    assert not G._nacc16_exact(G._plan(64, ((0, 1), (1, 0), (1, 1), (0, 2), (2, 0)), 256))  # T = 327680
    # 16 slices of one offset on 64x64 patches, 64 levels: zeros <= T - 16, any other value in at most
    # 16 * 4032 cells; 17 slices: T - 17 > 65535
    assert G._nacc16_exact(G._plan(64, ((0, 1),) * 16, 64))
    assert not G._nacc16_exact(G._plan(64, ((0, 1),) * 17, 64))


def _cuda_scores_both(x, monkeypatch, **kw):
    """(CUDA kernel, Triton kernel) scores of the same CUDA tensor."""
    setenv(monkeypatch, "D4K_GLCM_CUDA", "1")
    with backend.prefer("triton"):
        a = G.glcm_score(x, reduction="none", **kw)
    setenv(monkeypatch, "D4K_GLCM_CUDA", "0")
    with backend.prefer("triton"):
        b = G.glcm_score(x, reduction="none", **kw)
    setenv(monkeypatch, "D4K_GLCM_CUDA", "1")
    return a, b


@pytest.mark.cuda
def test_cuda_kernel_equals_triton_and_references(monkeypatch, seed):
    """Random configurations (levels 1..256, odd patches, distances past the patch, random angles),
    batches, non-contiguous views, constant and few-level images: the CUDA kernel equals the Triton
    kernel, the torch path on the same CUDA tensors and the skimage loop to 1e-12, for every
    thread count and both widths of the multiplicities."""
    require_cuda_kernel()
    dev = torch.device("cuda")
    rng = np.random.default_rng(seed)
    used = 0
    for trial in range(24):
        levels = int(rng.choice([1, 2, 4, 8, 16, 32, 64, 128]))
        patch = int(rng.choice([5, 16, 17, 31, 33, 64]))
        nd, na = int(rng.integers(1, 4)), int(rng.integers(1, 5))
        dist = [float(v) for v in rng.choice([0, 1, 2, 2.5, 3, 7, 40, 70], nd, replace=False)]
        ang = [float(v) for v in rng.uniform(-math.pi, 2 * math.pi, na)]
        n, side = int(rng.integers(1, 4)), int(rng.integers(1, 4))
        size = patch * side
        x = rng.integers(0, 256, (n, size + 3, size + 5)).astype(np.uint8)
        if trial % 3 == 0:
            x = (x // 85 * 85).astype(np.uint8)          # few levels
        if trial % 4 == 1:
            x[:, : size // 2] = x[:, :1]                  # flat rows
        if trial % 6 == 2:
            x[:] = x[0, 0, 0]                             # constant
        xt = torch.from_numpy(x).to(dev)
        if trial % 2:
            xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 2, 1))).to(dev).transpose(1, 2)
            assert not xt.is_contiguous()
        kw = dict(size=size, patch=patch, levels=levels, distances=dist, angles=ang)
        plan = G._plan(patch, tuple(G.offsets_of(dist, ang)), levels)
        used += G.cuda_choice(dev, plan) is not None
        for threads, n16 in ((512, "1"), (256, "0"), (1024, "1")):
            setenv(monkeypatch, "D4K_GLCM_CUDA_THREADS", str(threads))
            setenv(monkeypatch, "D4K_GLCM_CUDA_NACC16", n16)
            a, b = _cuda_scores_both(xt, monkeypatch, **kw)
            np.testing.assert_allclose(a.cpu().numpy(), b.cpu().numpy(), rtol=0, atol=1e-12)
        with backend.prefer("cpu"):
            c = G.glcm_score(xt, reduction="none", **kw)
        np.testing.assert_allclose(a.cpu().numpy(), c.cpu().numpy(), rtol=0, atol=1e-12)
        if trial < 8:
            ref = np.stack([ref_scores(im, size, patch=patch, levels=levels, distances=dist, angles=ang)
                            for im in xt.cpu().numpy()])
            np.testing.assert_allclose(a.cpu().numpy(), ref, rtol=0, atol=1e-12)
    assert used >= 12, "the CUDA kernel was not chosen for most configurations"


@pytest.mark.cuda
def test_cuda_kernel_natural_4096_and_batch(monkeypatch):
    """The paper's configuration on a natural 4096^2 image and 16 2048^2 images: the CUDA kernel equals
    the Triton kernel and the torch path (<= 1e-12; float64 summation order only), the skimage loop on
    sampled patches, and gives the same bits on a second run (fixed-order reduction)."""
    require_cuda_kernel()
    dev = torch.device("cuda")
    assert G.cuda_choice(dev, _PAPER_PLAN) is not None
    img = natural_image(4096)
    x = torch.from_numpy(img).to(dev)
    a, b = _cuda_scores_both(x, monkeypatch, size=4096)
    np.testing.assert_allclose(a.cpu().numpy(), b.cpu().numpy(), rtol=0, atol=1e-12)
    with backend.prefer("cpu"):
        c = G.glcm_score(x, size=4096, reduction="none")
    np.testing.assert_allclose(a.cpu().numpy(), c.cpu().numpy(), rtol=0, atol=1e-12)
    with backend.prefer("triton"):
        assert torch.equal(a, G.glcm_score(x, size=4096, reduction="none"))
    q = img // 4
    for i in np.random.default_rng(0).choice(4096, 16, replace=False):
        r, cc = divmod(int(i), 64)
        p = q[r * 64:(r + 1) * 64, cc * 64:(cc + 1) * 64]
        ref = shannon_entropy(graycomatrix(p, [1, 2, 3, 4], list(G.PAPER_ANGLES), levels=64, normed=True))
        assert abs(float(a[i]) - ref) <= 1e-12
    batch = torch.from_numpy(np.stack([np.roll(natural_image(2048), 7 * i, 1) for i in range(16)])).to(dev)
    a, b = _cuda_scores_both(batch, monkeypatch)
    np.testing.assert_allclose(a.cpu().numpy(), b.cpu().numpy(), rtol=0, atol=1e-12)


@pytest.mark.cuda
def test_cuda_kernel_disabled_or_missing_falls_back_to_triton(monkeypatch, seed):
    """D4K_GLCM_CUDA=0 or a failed build (loader returns None): the Triton kernel computes the score."""
    dev = torch.device("cuda")
    img = torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (128, 128)).astype(np.uint8)).to(dev)
    ref = ref_scores(img.cpu().numpy(), 128)

    def boom(*a, **k):
        raise AssertionError("the CUDA kernel ran")

    monkeypatch.setattr(G, "_cuda_scores", boom)
    setenv(monkeypatch, "D4K_GLCM_CUDA", "0")
    with backend.prefer("triton"):
        s = G.glcm_score(img, size=128, reduction="none")
    np.testing.assert_allclose(s.cpu().numpy(), ref, rtol=0, atol=1e-12)
    setenv(monkeypatch, "D4K_GLCM_CUDA", "1")
    fake_extensions(monkeypatch, glcm_cuda=None)
    with backend.prefer("triton"):
        s = G.glcm_score(img, size=128, reduction="none")
    np.testing.assert_allclose(s.cpu().numpy(), ref, rtol=0, atol=1e-12)
