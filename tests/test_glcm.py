"""GLCM counts, the paper's GLCM Score and graycoprops against skimage (graycomatrix, shannon_entropy,
graycoprops), on every path: the compiled C++ kernel, the torch fallback, the Triton kernels (under
the interpreter on the CPU: tiny images only; on CUDA when a GPU is present) and, with a GPU, the
compiled CUDA score kernel (csrc/glcm_cuda.cu), which must equal the Triton kernel and the references."""
import math
import warnings

import numpy as np
import pytest
import torch

skimage = pytest.importorskip("skimage")
from skimage import data  # noqa: E402
from skimage.feature import graycomatrix  # noqa: E402
from skimage.measure import shannon_entropy  # noqa: E402

import d4k_kernels  # noqa: E402
from d4k_kernels import backend  # noqa: E402
from d4k_kernels import _build  # noqa: E402
from conftest import fake_extensions, setenv  # noqa: E402
from d4k_kernels.ops import glcm as G  # noqa: E402
from d4k_kernels.reference import glcm as R  # noqa: E402

_HAS_CUDA = torch.cuda.is_available()
_INTERP = backend.HAS_TRITON and backend.interpreter_enabled()


# ------------------------------------------------------------------------------------------------
# paths: "cpp" (compiled CPU kernel), "torch" (fallback), "triton" (interpreter / CUDA), "cuda" (the
# compiled CUDA score kernel; counts still run the Triton kernel)
# ------------------------------------------------------------------------------------------------
def _cpp_available():
    return backend.extension("glcm") is not None


def _require_cuda_kernel():
    """The CUDA extension must build on a GPU machine: a failure is reported, not skipped."""
    if backend.extension("glcm_cuda", torch.device("cuda")) is None:
        pytest.fail(f"the CUDA GLCM kernel did not build/load: {_build.failure('glcm_cuda')}")


@pytest.fixture
def use_path(monkeypatch):
    """use_path(name) -> device; selects the implementation for the rest of the test."""
    stack = []

    def select(name):
        if name == "cpp":
            if not _cpp_available():
                pytest.skip("compiled CPU extension unavailable here")
            ctx = backend.prefer("cpu")
            dev = torch.device("cpu")
        elif name == "torch":
            fake_extensions(monkeypatch, glcm=None)
            ctx = backend.prefer("cpu")
            dev = torch.device("cuda" if _HAS_CUDA else "cpu")
        elif name == "triton":
            if _HAS_CUDA:
                dev = torch.device("cuda")
            elif _INTERP:
                dev = torch.device("cpu")
            else:
                pytest.skip("no Triton interpreter / GPU")
            setenv(monkeypatch, "D4K_GLCM_CUDA", "0")   # the Triton kernels, not the CUDA score kernel
            ctx = backend.prefer("triton")
        elif name == "cuda":
            if not _HAS_CUDA:
                pytest.skip("needs a CUDA GPU")
            setenv(monkeypatch, "D4K_GLCM_CUDA", "1")
            _require_cuda_kernel()
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


FULL_PATHS = ["cpp", "torch"] + (["triton", "cuda"] if _HAS_CUDA else [])
ALL_PATHS = ["cpp", "torch", "triton"] + (["cuda"] if _HAS_CUDA else [])


# ------------------------------------------------------------------------------------------------
# helpers / images
# ------------------------------------------------------------------------------------------------
def _natural(size: int) -> np.ndarray:
    """skimage sample images (8-bit gray) tiled up to size x size."""
    cam = data.camera()
    ast = data.astronaut()
    ast_gray = ((ast[..., 0].astype(np.int32) * 9798 + ast[..., 1].astype(np.int32) * 19235
                 + ast[..., 2].astype(np.int32) * 3735 + 16384) >> 15).astype(np.uint8)
    coins = np.pad(data.coins(), ((0, 512 - 303), (0, 512 - 384)), mode="reflect")
    tile = np.concatenate([np.concatenate([cam, ast_gray], 1), np.concatenate([coins, cam[::-1]], 1)], 0)
    reps = -(-size // tile.shape[0])
    return np.ascontiguousarray(np.tile(tile, (reps, reps))[:size, :size])


def _mixed(rng, n_side=2) -> np.ndarray:
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


def _ref_scores(gray: np.ndarray, size: int, **kw) -> np.ndarray:
    return R.patch_scores(gray, size=size, **kw)


# ------------------------------------------------------------------------------------------------
# offsets and counts
# ------------------------------------------------------------------------------------------------
def test_paper_offsets_follow_skimage_rounding():
    offs = G.offsets_of(G.PAPER_DISTANCES, G.PAPER_ANGLES)
    assert offs == [(0, 1), (1, 1), (1, 0), (1, -1), (0, 2), (1, 1), (2, 0), (1, -1),
                    (0, 3), (2, 2), (3, 0), (2, -2), (0, 4), (3, 3), (4, 0), (3, -3)]


@pytest.mark.parametrize("path", ALL_PATHS)
def test_counts_equal_skimage_random_settings(use_path, path, seed):
    dev = use_path(path)
    rng = np.random.default_rng(seed)
    tiny = path == "triton" and not _HAS_CUDA
    for trial in range(1 if tiny else 3):
        levels = int(rng.integers(2, 12 if tiny else 70))
        patch = int(rng.choice([8, 16] if tiny else [5, 16, 32]))
        nd, na = int(rng.integers(1, 3)), int(rng.integers(1, 4))
        distances = [float(x) for x in rng.choice([1, 2, 2.5, 3, 7, 40], nd, replace=False)]
        angles = [float(x) for x in rng.uniform(-math.pi, 2 * math.pi, na)]
        symmetric = bool(rng.integers(0, 2))
        n = 1 if tiny else 2
        q = rng.integers(0, levels, (n, patch * 2, patch * (1 if tiny else 3))).astype(np.uint8)
        qt = torch.from_numpy(q).to(dev)
        out = d4k_kernels.glcm(qt, patch=patch, distances=distances, angles=angles, levels=levels,
                               symmetric=symmetric)
        ref = np.stack([R.glcm_counts(x, patch, distances, angles, levels, symmetric) for x in q])
        assert out.dtype == torch.int32 and out.device.type == dev.type
        assert tuple(out.shape) == ref.shape
        np.testing.assert_array_equal(out.cpu().numpy(), ref)


@pytest.mark.parametrize("path", FULL_PATHS)
@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.int32, torch.int64])
def test_counts_paper_config_dtypes_and_normed(use_path, path, dtype, seed):
    dev = use_path(path)
    rng = np.random.default_rng(seed)
    q = rng.integers(0, 64, (128, 192)).astype(np.uint8)
    q[:64, :64] = 7  # constant patch
    qt = torch.from_numpy(q).to(dtype).to(dev)
    out = G.glcm(qt)
    assert out.shape == (6, 4, 4, 64, 64)  # unbatched input: no N
    ref = R.glcm_counts(q, 64, G.PAPER_DISTANCES, G.PAPER_ANGLES, 64)
    np.testing.assert_array_equal(out.cpu().numpy(), ref)
    normed = G.glcm(qt, normed=True)
    assert normed.dtype == torch.float64
    refn = np.stack([np.transpose(graycomatrix(p, [1, 2, 3, 4], list(G.PAPER_ANGLES), levels=64, normed=True),
                                  (2, 3, 0, 1)) for p in R.patch_grid(q, 64)])
    np.testing.assert_array_equal(normed.cpu().numpy(), refn)


def test_counts_non_contiguous_input(use_path, seed):
    use_path("cpp")
    rng = np.random.default_rng(seed)
    q = rng.integers(0, 16, (64, 96)).astype(np.uint8)
    qt = torch.from_numpy(np.ascontiguousarray(q.T)).t()  # a transposed view
    assert not qt.is_contiguous()
    out = G.glcm(qt, patch=32, levels=16)
    np.testing.assert_array_equal(out.numpy(), R.glcm_counts(q, 32, G.PAPER_DISTANCES, G.PAPER_ANGLES, 16))


# ------------------------------------------------------------------------------------------------
# the GLCM Score
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ALL_PATHS)
def test_score_mixed_patches_exact(use_path, path, seed):
    """random, few-level, constant, smooth and natural patches: <= 1e-12 from the skimage loop."""
    dev = use_path(path)
    rng = np.random.default_rng(seed)
    tiny = path == "triton" and not _HAS_CUDA
    img = _mixed(rng, n_side=1 if tiny else 4)
    if tiny:
        img = np.concatenate([img, _mixed(np.random.default_rng(seed + 2), 1)], 1)  # 2 patches
    size = img.shape[0]
    out = G.glcm_score(torch.from_numpy(img).to(dev), size=size, reduction="none")
    ref = _ref_scores(img, size)
    assert out.dtype == torch.float64 and out.device.type == dev.type
    np.testing.assert_allclose(out.cpu().numpy(), ref, rtol=0, atol=1e-12)
    mean = G.glcm_score(torch.from_numpy(img).to(dev), size=size)
    assert abs(float(mean) - ref.mean()) <= 1e-12


def _level_patch(rng, levels, layout: str) -> np.ndarray:
    """A 64 x 64 gray patch whose quantised levels (g // 4) are exactly ``levels``, each present."""
    levels = np.asarray(levels)
    if layout == "random":
        q = rng.choice(levels, size=(64, 64))
    elif layout == "bands":                                   # smooth: long runs, counts >= 4
        q = levels[(np.arange(64)[:, None] * len(levels) // 64 + np.zeros((1, 64), int))]
        q = np.where(rng.random((64, 64)) < 0.05, rng.choice(levels, size=(64, 64)), q)
    else:                                                     # "edges": rare levels on the borders only
        q = np.full((64, 64), levels[0])
        border = [(r, c) for r in (0, 1, 62, 63) for c in range(64)] + [(r, c) for c in (0, 63) for r in range(64)]
        for i, lv in enumerate(levels[1:]):
            r, c = border[(i * 37) % len(border)]
            q[r, c] = lv
    q[0, 0], q[63, 63] = levels.min(), levels.max()
    q.flat[rng.permutation(4096)[:len(levels)]] = levels     # every level present
    return (q * 4 + rng.integers(0, 4, q.shape)).astype(np.uint8)


@pytest.mark.parametrize("path", FULL_PATHS)
def test_score_level_count_and_range_cases(use_path, path, seed):
    """Patches around the C++ kernel's branch points: the bitmap path (<= 16 levels within a range of
    < 24), its fallback (17 levels in a narrow range), few levels over a wide range (table path, range
    scan), ranges of 32 / 33 / 64 levels (the scan's one- and two-vector rows), levels 0 and 63, and
    rare levels only on the patch borders (the bitmap shifts and zero rows). <= 1e-12 from skimage."""
    dev = use_path(path)
    rng = np.random.default_rng(seed)
    cases = []
    for p, lo, span in [(1, 20, 1), (2, 0, 2), (4, 60, 4), (15, 5, 23), (16, 40, 20), (16, 0, 16), (17, 3, 20),
                        (16, 0, 64), (5, 10, 32), (20, 31, 33), (33, 0, 33), (64, 0, 64), (8, 30, 24)]:
        lv = np.sort(rng.choice(np.arange(lo + 1, lo + span - 1), size=p - 2, replace=False)) if p > 2 else []
        levels = np.unique(np.concatenate([[lo, lo + span - 1][:p], lv]).astype(int))
        assert len(levels) == p and levels.max() - levels.min() + 1 == span
        for layout in ("random", "bands", "edges"):
            cases.append(_level_patch(rng, levels, layout))
    side = math.ceil(math.sqrt(len(cases)))
    cases += [rng.integers(0, 256, (64, 64)).astype(np.uint8) for _ in range(side * side - len(cases))]
    img = np.concatenate([np.concatenate(cases[r * side:(r + 1) * side], 1) for r in range(side)], 0)
    out = G.glcm_score(torch.from_numpy(img).to(dev), size=64 * side, reduction="none")
    ref = _ref_scores(img, 64 * side)
    assert out.shape == (side * side,)
    np.testing.assert_allclose(out.cpu().numpy(), ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("path", FULL_PATHS)
@pytest.mark.parametrize("patch", [2, 3, 5, 6])
def test_score_tiny_patches(use_path, path, patch, seed):
    """Patches so small that pair counts stop below the C++ scan's vector bins (counts 4..19): the key
    table is narrower than the bins and must not be read past its end. <= 1e-12 from skimage."""
    dev = use_path(path)
    rng = np.random.default_rng(seed)
    size = 4 * patch
    img = rng.integers(0, 256, (size, size)).astype(np.uint8)
    img[:patch, :patch] = 7                                     # a constant patch: every count maximal
    kw = dict(patch=patch, levels=8, distances=(1, 2), angles=G.PAPER_ANGLES)
    out = G.glcm_score(torch.from_numpy(img).to(dev), size=size, reduction="none", **kw)
    np.testing.assert_allclose(out.cpu().numpy(), _ref_scores(img, size, **kw), rtol=0, atol=1e-12)


def test_cpp_buffers_kept_between_calls(use_path, seed):
    """The C++ kernel keeps its per-thread tables between calls: calls with different configurations in
    a row (paper, other offsets with the same table layout, other levels, paper again) each equal the
    torch path, i.e. no call sees what an earlier one left in the tables."""
    rng = np.random.default_rng(seed)
    img = torch.from_numpy(np.stack([_mixed(rng, 2), rng.integers(0, 256, (128, 128)).astype(np.uint8)]))
    configs = [dict(), dict(distances=(1, 2, 3, 4), angles=(0.0, 0.2, 1.3, 2.9)), dict(levels=32),
               dict(patch=32), dict(), dict(distances=(1,), angles=(0.0,), levels=16)]
    got = []
    use_path("cpp")
    for kw in configs:
        got.append(G.glcm_score(img, size=128, reduction="none", **kw))
    use_path("torch")
    for kw, a in zip(configs, got):
        b = G.glcm_score(img, size=128, reduction="none", **kw).cpu()
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=0, atol=1e-12, err_msg=str(kw))


def _no_merge_entropy(patch_q: np.ndarray) -> float:
    """Entropy if equal fractions of different slices were NOT merged (a wrong variant)."""
    g = graycomatrix(patch_q, [1, 2, 3, 4], list(G.PAPER_ANGLES), levels=64)
    counts = []
    for d in range(4):
        for a in range(4):
            n = g[:, :, d, a].sum()
            _, c = np.unique(g[:, :, d, a], return_counts=True)
            counts.append((n, dict(zip(_, c))))
    ns = {}
    for n, dct in counts:
        for v, c in dct.items():
            key = (0, 0) if v == 0 else (int(n), int(v))
            ns[key] = ns.get(key, 0) + c
    arr = np.array(list(ns.values()), dtype=np.float64)
    p = arr / arr.sum()
    return float(-(p * np.log2(p)).sum())


@pytest.mark.parametrize("path", FULL_PATHS)
def test_score_merges_equal_fractions_across_slices(use_path, path):
    """Patches where c1/N1 == c2/N2 across slices (e.g. 31/3968 = 30/3840): the merge matters."""
    dev = use_path(path)
    rng = np.random.default_rng(1)
    found = 0
    for _ in range(40):
        p = rng.choice(rng.integers(0, 256, 2), size=(64, 64)).astype(np.uint8)
        p[rng.random((64, 64)) < 0.5] = p[0, 0]
        q = p // 4
        ref = shannon_entropy(graycomatrix(q, [1, 2, 3, 4], list(G.PAPER_ANGLES), levels=64, normed=True))
        got = float(G.glcm_score(torch.from_numpy(p).to(dev), size=64))
        assert abs(got - ref) <= 1e-12
        found += abs(_no_merge_entropy(q) - ref) > 1e-9
    assert found > 0, "no patch exercised a cross-slice merge"


@pytest.mark.parametrize("path", FULL_PATHS)
def test_score_natural_2048(use_path, path):
    dev = use_path(path)
    img = _natural(2048)
    ref = _natural_ref_2048()
    out = G.glcm_score(torch.from_numpy(img).to(dev), reduction="none")
    assert out.shape == (1024,)
    np.testing.assert_allclose(out.cpu().numpy(), ref, rtol=0, atol=1e-12)


_REF_CACHE = {}


def _natural_ref_2048():
    if "2048" not in _REF_CACHE:
        _REF_CACHE["2048"] = _ref_scores(_natural(2048), 2048)
    return _REF_CACHE["2048"]


@pytest.mark.slow
def test_score_natural_4096_cpp(use_path):
    use_path("cpp")
    img = _natural(4096 + 64)
    out = G.glcm_score(torch.from_numpy(img), size=4096, reduction="none")
    ref = _ref_scores(img, 4096)
    np.testing.assert_allclose(out.numpy(), ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("path", ALL_PATHS)
def test_score_batch_options_and_crop(use_path, path, seed):
    dev = use_path(path)
    rng = np.random.default_rng(seed)
    tiny = path == "triton" and not _HAS_CUDA
    h, w = (80, 70) if tiny else (200, 150)
    size, patch, levels = (32, 32, 16) if tiny else (128, 32, 32)
    imgs = rng.integers(0, 256, (2, h, w)).astype(np.uint8)
    imgs[1, :40] = imgs[1, :40] // 64 * 64  # few levels
    dist, ang = (1, 3), (0.0, math.pi / 2, 2.0)
    x = torch.from_numpy(imgs).to(dev)
    out = G.glcm_score(x, size=size, patch=patch, levels=levels, distances=dist, angles=ang, reduction="none")
    ref = np.stack([_ref_scores(im, size, patch=patch, levels=levels, distances=dist, angles=ang) for im in imgs])
    assert tuple(out.shape) == ref.shape
    np.testing.assert_allclose(out.cpu().numpy(), ref, rtol=0, atol=1e-12)
    mean = G.glcm_score(x, size=size, patch=patch, levels=levels, distances=dist, angles=ang)
    np.testing.assert_allclose(mean.cpu().numpy(), ref.mean(1), rtol=0, atol=1e-12)


def test_score_non_contiguous_and_int_dtypes(use_path, seed):
    use_path("cpp")
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (128, 128)).astype(np.uint8)
    img[:64] //= 32
    ref = _ref_scores(img, 128)
    t = torch.from_numpy(np.ascontiguousarray(img.T)).t()
    np.testing.assert_allclose(G.glcm_score(t, size=128, reduction="none").numpy(), ref, rtol=0, atol=1e-12)
    for dt in (torch.int16, torch.int32, torch.int64):
        got = G.glcm_score(torch.from_numpy(img).to(dt), size=128, reduction="none").numpy()
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12)


def test_paths_agree_on_random_config(use_path, seed):
    """C++ and torch fallback agree bit-for-bit-ish on an odd configuration (offset past the patch)."""
    rng = np.random.default_rng(seed)
    img = torch.from_numpy(rng.integers(0, 256, (2, 96, 96)).astype(np.uint8))
    kw = dict(size=96, patch=48, levels=8, distances=(1, 60), angles=(0.5, 3.0), reduction="none")
    use_path("cpp")
    a = G.glcm_score(img, **kw)
    ref = np.stack([_ref_scores(im, 96, patch=48, levels=8, distances=(1, 60), angles=(0.5, 3.0))
                    for im in img.numpy()])
    np.testing.assert_allclose(a.numpy(), ref, rtol=0, atol=1e-12)
    use_path("torch")
    b = G.glcm_score(img, **kw)
    np.testing.assert_allclose(b.cpu().numpy(), ref, rtol=0, atol=1e-12)


def test_torch_compile_fullgraph_cpu(use_path, seed):
    use_path("cpp")
    rng = np.random.default_rng(seed)
    img = torch.from_numpy(rng.integers(0, 256, (1, 128, 128)).astype(np.uint8))

    def f(x):
        return G.glcm_score(x, size=128) * 2.0

    torch._dynamo.reset()
    got = torch.compile(f, fullgraph=True, backend="eager")(img)
    np.testing.assert_allclose(got.numpy(), 2 * _ref_scores(img[0].numpy(), 128).mean(), rtol=0, atol=1e-12)


# ------------------------------------------------------------------------------------------------
# graycoprops / entropy
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("prop", G.PROPS)
def test_graycoprops_equal_skimage(prop, seed):
    from skimage.feature import graycoprops as sk_props

    rng = np.random.default_rng(seed)
    q = rng.integers(0, 8, (32, 64)).astype(np.uint8)
    q[:, :32] //= 4
    for symmetric in (False, True):
        dist, ang = [1, 2, 40], [0, math.pi / 4, 2.0]
        counts = G.glcm(torch.from_numpy(q), patch=32, distances=dist, angles=ang, levels=8, symmetric=symmetric)
        got = G.graycoprops(counts, prop).numpy()
        assert got.shape == (2, 3, 3)
        for i, p in enumerate(R.patch_grid(q, 32)):
            P = graycomatrix(p, dist, ang, levels=8, symmetric=symmetric)
            np.testing.assert_allclose(got[i], sk_props(P, prop), rtol=1e-10, atol=1e-10)
        normed = G.glcm(torch.from_numpy(q), patch=32, distances=dist, angles=ang, levels=8, symmetric=symmetric,
                        normed=True)
        np.testing.assert_allclose(G.graycoprops(normed, prop).numpy(), got, rtol=1e-12, atol=1e-12)


def test_glcm_entropy_is_true_entropy(seed):
    rng = np.random.default_rng(seed)
    q = rng.integers(0, 16, (64, 64)).astype(np.uint8)
    counts = G.glcm(torch.from_numpy(q), levels=16)
    got = G.glcm_entropy(counts).numpy()
    ref = np.zeros(got.shape)
    P = graycomatrix(q, [1, 2, 3, 4], list(G.PAPER_ANGLES), levels=16, normed=True)
    for d in range(4):
        for a in range(4):
            p = P[:, :, d, a].ravel()
            p = p[p > 0]
            ref[0, d, a] = -(p * np.log2(p)).sum()
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(G.glcm_entropy(counts, base=math.e).numpy(), ref * math.log(2), rtol=1e-12)
    np.testing.assert_allclose(G.glcm_entropy(counts, average="all").numpy(), ref.mean((-2, -1)), rtol=1e-12)
    np.testing.assert_allclose(G.graycoprops(counts, "contrast", average="angles").numpy(),
                               G.graycoprops(counts, "contrast").numpy().mean(-1), rtol=1e-12)
    np.testing.assert_allclose(G.graycoprops(counts, "ASM", average="distances").numpy(),
                               G.graycoprops(counts, "ASM").numpy().mean(-2), rtol=1e-12)
    with pytest.raises(ValueError, match="average"):
        G.graycoprops(counts, "ASM", average="patches")
    # the paper's score is a different quantity (distinct-value entropy)
    assert abs(float(G.glcm_score(torch.from_numpy(q * 16), size=64, levels=16)) - ref.mean()) > 1e-3


# ------------------------------------------------------------------------------------------------
# errors and the fallback warning
# ------------------------------------------------------------------------------------------------
def test_bad_inputs_name_the_value():
    q = torch.zeros(64, 64, dtype=torch.uint8)
    q[3, 5] = 64
    with pytest.raises(ValueError, match="64"):
        G.glcm(q)
    with pytest.raises(ValueError, match="-2"):
        G.glcm(torch.full((64, 64), -2, dtype=torch.int32))
    with pytest.raises(ValueError, match="not a multiple of patch=64"):
        G.glcm(torch.zeros(64, 70, dtype=torch.uint8))
    with pytest.raises(TypeError, match="float32"):
        G.glcm(torch.zeros(64, 64))
    with pytest.raises(ValueError, match="shape"):
        G.glcm(torch.zeros(1, 1, 64, 64, dtype=torch.uint8))
    with pytest.raises(ValueError, match="levels"):
        G.glcm(q, levels=300)
    g = torch.zeros(100, 120, dtype=torch.uint8)
    with pytest.raises(ValueError, match="100x120.*2048"):
        G.glcm_score(g)
    with pytest.raises(ValueError, match="reduction"):
        G.glcm_score(g, size=64, reduction="sum")
    with pytest.raises(ValueError, match="levels=48"):
        G.glcm_score(g, size=64, levels=48)
    with pytest.raises(ValueError, match="size=96"):
        G.glcm_score(g, size=96)
    with pytest.raises(ValueError, match="300"):
        G.glcm_score(torch.full((64, 64), 300, dtype=torch.int16), size=64)
    with pytest.raises(ValueError, match="prop"):
        G.graycoprops(torch.ones(4, 4), "bogus")
    with pytest.raises(ValueError, match="distances"):
        G.glcm(q // 2, distances=[])


def _failing_builds(monkeypatch, reason):
    """Every extension build fails with ``reason`` (a fresh load/failure record, restored after the
    test); returns the (name, sources, ops_namespace) of each build tried."""
    from d4k_kernels import _build

    calls = []

    def failing_build(name, sources, cflags, cuda_cflags, ldflags, ops_namespace=None):
        calls.append((name, tuple(sources), ops_namespace))
        raise RuntimeError(reason)

    monkeypatch.setattr(_build, "_build", failing_build)
    monkeypatch.setattr(_build, "_loaded", {})
    monkeypatch.setattr(_build, "_failed", {})
    return calls


def test_fallback_warns_once(monkeypatch, seed):
    setenv(monkeypatch, "D4K_NO_EXT")
    _failing_builds(monkeypatch, "no compiler here")
    img = torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (64, 64)).astype(np.uint8))
    with backend.prefer("cpu"):
        with pytest.warns(RuntimeWarning, match="torch fallback"):
            a = G.glcm_score(img, size=64)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            b = G.glcm_score(img, size=64)
    assert abs(float(a) - _ref_scores(img.numpy(), 64)[0]) <= 1e-12 and float(a) == float(b)


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
    img = _natural(4096)
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
    batch = torch.from_numpy(np.stack([np.roll(_natural(2048), 7 * i, 1) for i in range(16)])).cuda()
    with backend.prefer("triton"):
        s = G.glcm_score(batch)
    with backend.prefer("cpu"):
        s_other = G.glcm_score(batch)
    np.testing.assert_allclose(s.cpu().numpy(), s_other.cpu().numpy(), rtol=0, atol=1e-12)


def test_cpp_threads_give_same_result(use_path, seed):
    use_path("cpp")
    rng = np.random.default_rng(seed)
    img = torch.from_numpy(np.stack([_mixed(rng, 4), _natural(256)]))
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = G.glcm_score(img, size=256, reduction="none")
        c1 = G.glcm(img // 4)
        torch.set_num_threads(2)
        two = G.glcm_score(img, size=256, reduction="none")
        c2 = G.glcm(img // 4)
    finally:
        torch.set_num_threads(old)
    assert torch.equal(one, two) and torch.equal(c1, c2)


@pytest.mark.parametrize("kernel,g", [("hist", 1), ("dot", 1), ("dot", 2)])
def test_triton_kernel_variants(use_path, monkeypatch, kernel, g, seed):
    """Every Triton variant: the histogram kernel, the one-hot dot kernel with one or two offsets per
    program (sharing the one-hot tile), with an odd number of distinct offsets."""
    from d4k_kernels.ops import _glcm_triton as GT

    dev = use_path("triton")
    setenv(monkeypatch, "D4K_GLCM_G", str(g))
    setenv(monkeypatch, "D4K_GLCM_KERNEL", kernel)
    assert GT._kernel() == kernel
    rng = np.random.default_rng(seed)
    q = rng.integers(0, 10, (1, 32, 48)).astype(np.uint8)
    dist, ang = (1, 2), (0.0, math.pi / 2, math.pi / 4)   # 5 distinct offsets
    assert len(set(G.offsets_of(dist, ang))) % 2 == 1
    c = G.glcm(torch.from_numpy(q).to(dev), patch=16, distances=dist, angles=ang, levels=10)
    np.testing.assert_array_equal(c.cpu().numpy()[0], R.glcm_counts(q[0], 16, dist, ang, 10))
    img = (q[0, :32, :32] * 25).astype(np.uint8)
    s = G.glcm_score(torch.from_numpy(img).to(dev), size=32, patch=16, levels=16, distances=dist, angles=ang,
                     reduction="none")
    ref = _ref_scores(img, 32, patch=16, levels=16, distances=dist, angles=ang)
    np.testing.assert_allclose(s.cpu().numpy(), ref, rtol=0, atol=1e-12)
    # the paper's configuration on a constant and a natural patch
    two = np.concatenate([np.full((64, 64), 77, np.uint8), data.camera()[200:264, 300:364]], 1)
    s2 = G.glcm_score(torch.from_numpy(two).to(dev), size=64, reduction="none")
    s2b = G.glcm_score(torch.from_numpy(np.ascontiguousarray(two[:, 64:])).to(dev), size=64, reduction="none")
    np.testing.assert_allclose(s2.cpu().numpy(), _ref_scores(two, 64), rtol=0, atol=1e-12)
    np.testing.assert_allclose(s2b.cpu().numpy(), _ref_scores(two[:, 64:], 64), rtol=0, atol=1e-12)


@pytest.mark.parametrize("path", ALL_PATHS)
def test_many_levels_and_large_patch(use_path, path, seed):
    """256 levels (tiled level blocks in Triton) and, on the CPU paths, a 256x256 patch (counts
    above 65535 cells: 32-bit tables in C++)."""
    dev = use_path(path)
    rng = np.random.default_rng(seed)
    tiny = path == "triton" and not _HAS_CUDA
    patch = 16 if tiny else 256
    img = rng.integers(0, 256, (patch, patch)).astype(np.uint8)
    img[: patch // 2] = img[: patch // 2] // 128 * 200    # two levels in the top half
    dist, ang = (1, 5), (0.0, 1.0)
    c = G.glcm(torch.from_numpy(img).to(dev), patch=patch, distances=dist, angles=ang, levels=256)
    np.testing.assert_array_equal(c.cpu().numpy(), R.glcm_counts(img, patch, dist, ang, 256))
    s = G.glcm_score(torch.from_numpy(img).to(dev), size=patch, patch=patch, levels=256, distances=dist,
                     angles=ang, reduction="none")
    ref = _ref_scores(img, patch, patch=patch, levels=256, distances=dist, angles=ang)
    np.testing.assert_allclose(s.cpu().numpy(), ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("path", ALL_PATHS)
def test_one_and_two_levels_and_empty_batch(use_path, path, seed):
    dev = use_path(path)
    img = np.random.default_rng(seed).integers(0, 256, (32, 32)).astype(np.uint8)
    for lv in (1, 2):
        s = G.glcm_score(torch.from_numpy(img).to(dev), size=32, patch=16, levels=lv, reduction="none")
        np.testing.assert_allclose(s.cpu().numpy(), _ref_scores(img, 32, patch=16, levels=lv), rtol=0, atol=1e-12)
        q = (img.astype(np.int32) // (256 // lv)).astype(np.uint8)
        c = G.glcm(torch.from_numpy(q).to(dev), patch=16, levels=lv)
        np.testing.assert_array_equal(c.cpu().numpy(),
                                      R.glcm_counts(q, 16, G.PAPER_DISTANCES, G.PAPER_ANGLES, lv))
    empty = torch.zeros(0, 64, 64, dtype=torch.uint8, device=dev)
    assert G.glcm_score(empty, size=64, reduction="none").shape == (0, 1)
    assert G.glcm_score(empty, size=64).shape == (0,)
    assert G.glcm(empty).shape == (0, 1, 4, 4, 64, 64)


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
    """_cuda_choice: the CUDA kernel for CUDA tensors when enabled, built and fitting shared memory;
    None (-> Triton) with D4K_GLCM_CUDA=0, a failed build, too little shared memory, or a CPU tensor."""
    fake = _FakeCudaExt()
    fake_extensions(monkeypatch, glcm_cuda=fake)
    monkeypatch.setattr(G, "_SMEM", {})
    for var in ("D4K_GLCM_CUDA", "D4K_GLCM_CUDA_THREADS", "D4K_GLCM_CUDA_NACC16"):
        setenv(monkeypatch, var)
    cuda0 = torch.device("cuda", 0)
    plan = _PAPER_PLAN
    assert G._cuda_choice(cuda0, plan) == (fake, 512, True)
    assert G._cuda_choice(torch.device("cpu"), plan) is None
    setenv(monkeypatch, "D4K_GLCM_CUDA_THREADS", "256")
    setenv(monkeypatch, "D4K_GLCM_CUDA_NACC16", "0")
    assert G._cuda_choice(cuda0, plan) == (fake, 256, False)
    setenv(monkeypatch, "D4K_GLCM_CUDA", "0")
    assert G._cuda_choice(cuda0, plan) is None
    setenv(monkeypatch, "D4K_GLCM_CUDA", "1")
    # 32-bit multiplicities of the paper's plan need ~127 KB, 16-bit ones ~74 KB
    monkeypatch.setattr(G, "_SMEM", {})
    fake.limit = 100 * 1024
    assert G._cuda_choice(cuda0, plan) is None
    setenv(monkeypatch, "D4K_GLCM_CUDA_NACC16")
    assert G._cuda_choice(cuda0, plan) == (fake, 256, True)
    monkeypatch.setattr(G, "_SMEM", {})
    fake.limit = 48 * 1024
    assert G._cuda_choice(cuda0, plan) is None
    fake_extensions(monkeypatch, glcm_cuda=None)   # build failed / no GPU
    assert G._cuda_choice(cuda0, plan) is None


def test_cuda_build_failure_warns_once(monkeypatch):
    """A failed build of the CUDA extension warns once and leaves the score to Triton."""
    setenv(monkeypatch, "D4K_NO_EXT")
    setenv(monkeypatch, "D4K_GLCM_CUDA")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(_build, "cuda_arch_flags", lambda device=None: [])
    calls = _failing_builds(monkeypatch, "nvcc exploded")
    monkeypatch.setattr(G, "_SMEM", {})
    with pytest.warns(RuntimeWarning, match="CUDA score kernel is unavailable.*nvcc exploded.*Triton"):
        assert backend.extension("glcm_cuda", torch.device("cuda", 0)) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert G._cuda_choice(torch.device("cuda", 0), _PAPER_PLAN) is None
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
    _require_cuda_kernel()
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
        used += G._cuda_choice(dev, plan) is not None
        for threads, n16 in ((512, "1"), (256, "0"), (1024, "1")):
            setenv(monkeypatch, "D4K_GLCM_CUDA_THREADS", str(threads))
            setenv(monkeypatch, "D4K_GLCM_CUDA_NACC16", n16)
            a, b = _cuda_scores_both(xt, monkeypatch, **kw)
            np.testing.assert_allclose(a.cpu().numpy(), b.cpu().numpy(), rtol=0, atol=1e-12)
        with backend.prefer("cpu"):
            c = G.glcm_score(xt, reduction="none", **kw)
        np.testing.assert_allclose(a.cpu().numpy(), c.cpu().numpy(), rtol=0, atol=1e-12)
        if trial < 8:
            ref = np.stack([_ref_scores(im, size, patch=patch, levels=levels, distances=dist, angles=ang)
                            for im in xt.cpu().numpy()])
            np.testing.assert_allclose(a.cpu().numpy(), ref, rtol=0, atol=1e-12)
    assert used >= 12, "the CUDA kernel was not chosen for most configurations"


@pytest.mark.cuda
def test_cuda_kernel_natural_4096_and_batch(monkeypatch):
    """The paper's configuration on a natural 4096^2 image and 16 2048^2 images: the CUDA kernel equals
    the Triton kernel and the torch path (<= 1e-12; float64 summation order only), the skimage loop on
    sampled patches, and gives the same bits on a second run (fixed-order reduction)."""
    _require_cuda_kernel()
    dev = torch.device("cuda")
    assert G._cuda_choice(dev, _PAPER_PLAN) is not None
    img = _natural(4096)
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
    batch = torch.from_numpy(np.stack([np.roll(_natural(2048), 7 * i, 1) for i in range(16)])).to(dev)
    a, b = _cuda_scores_both(batch, monkeypatch)
    np.testing.assert_allclose(a.cpu().numpy(), b.cpu().numpy(), rtol=0, atol=1e-12)


@pytest.mark.cuda
def test_cuda_kernel_disabled_or_missing_falls_back_to_triton(monkeypatch, seed):
    """D4K_GLCM_CUDA=0 or a failed build (loader returns None): the Triton kernel computes the score."""
    dev = torch.device("cuda")
    img = torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (128, 128)).astype(np.uint8)).to(dev)
    ref = _ref_scores(img.cpu().numpy(), 128)

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
