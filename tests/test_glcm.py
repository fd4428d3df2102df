"""GLCM counts, the paper's GLCM Score and graycoprops against skimage (graycomatrix, shannon_entropy,
graycoprops), on every path: the compiled C++ kernel, the torch fallback and the Triton kernels (under
the interpreter on the CPU: tiny images only; on CUDA when a GPU is present); with a GPU also the
compiled CUDA score kernel (csrc/glcm_cuda.cu). The GPU-only kernel checks are in tests/test_glcm_gpu.py."""
import math
import warnings

import numpy as np
import pytest
import torch

skimage = pytest.importorskip("skimage")
from skimage.feature import graycomatrix  # noqa: E402
from skimage.measure import shannon_entropy  # noqa: E402

import d4k_kernels  # noqa: E402
from d4k_kernels import backend  # noqa: E402
from conftest import setenv  # noqa: E402
from d4k_kernels.ops import glcm as G  # noqa: E402
from d4k_kernels.reference import glcm as R  # noqa: E402
from glcm_support import (  # noqa: E402,F401  (use_path is a fixture)
    ALL_PATHS, FULL_PATHS, HAS_CUDA, failing_builds, mixed_image, natural_image, ref_scores, use_path)

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
    tiny = path == "triton" and not HAS_CUDA
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
    tiny = path == "triton" and not HAS_CUDA
    img = mixed_image(rng, n_side=1 if tiny else 4)
    if tiny:
        img = np.concatenate([img, mixed_image(np.random.default_rng(seed + 2), 1)], 1)  # 2 patches
    size = img.shape[0]
    out = G.glcm_score(torch.from_numpy(img).to(dev), size=size, reduction="none")
    ref = ref_scores(img, size)
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
    ref = ref_scores(img, 64 * side)
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
    np.testing.assert_allclose(out.cpu().numpy(), ref_scores(img, size, **kw), rtol=0, atol=1e-12)


def test_cpp_buffers_kept_between_calls(use_path, seed):
    """The C++ kernel keeps its per-thread tables between calls: calls with different configurations in
    a row (paper, other offsets with the same table layout, other levels, paper again) each equal the
    torch path, i.e. no call sees what an earlier one left in the tables."""
    rng = np.random.default_rng(seed)
    img = torch.from_numpy(np.stack([mixed_image(rng, 2), rng.integers(0, 256, (128, 128)).astype(np.uint8)]))
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
    img = natural_image(2048)
    ref = _natural_ref_2048()
    out = G.glcm_score(torch.from_numpy(img).to(dev), reduction="none")
    assert out.shape == (1024,)
    np.testing.assert_allclose(out.cpu().numpy(), ref, rtol=0, atol=1e-12)


_REF_CACHE = {}


def _natural_ref_2048():
    if "2048" not in _REF_CACHE:
        _REF_CACHE["2048"] = ref_scores(natural_image(2048), 2048)
    return _REF_CACHE["2048"]


@pytest.mark.slow
def test_score_natural_4096_cpp(use_path):
    use_path("cpp")
    img = natural_image(4096 + 64)
    out = G.glcm_score(torch.from_numpy(img), size=4096, reduction="none")
    ref = ref_scores(img, 4096)
    np.testing.assert_allclose(out.numpy(), ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("path", ALL_PATHS)
def test_score_batch_options_and_crop(use_path, path, seed):
    dev = use_path(path)
    rng = np.random.default_rng(seed)
    tiny = path == "triton" and not HAS_CUDA
    h, w = (80, 70) if tiny else (200, 150)
    size, patch, levels = (32, 32, 16) if tiny else (128, 32, 32)
    imgs = rng.integers(0, 256, (2, h, w)).astype(np.uint8)
    imgs[1, :40] = imgs[1, :40] // 64 * 64  # few levels
    dist, ang = (1, 3), (0.0, math.pi / 2, 2.0)
    x = torch.from_numpy(imgs).to(dev)
    out = G.glcm_score(x, size=size, patch=patch, levels=levels, distances=dist, angles=ang, reduction="none")
    ref = np.stack([ref_scores(im, size, patch=patch, levels=levels, distances=dist, angles=ang) for im in imgs])
    assert tuple(out.shape) == ref.shape
    np.testing.assert_allclose(out.cpu().numpy(), ref, rtol=0, atol=1e-12)
    mean = G.glcm_score(x, size=size, patch=patch, levels=levels, distances=dist, angles=ang)
    np.testing.assert_allclose(mean.cpu().numpy(), ref.mean(1), rtol=0, atol=1e-12)


def test_score_non_contiguous_and_int_dtypes(use_path, seed):
    use_path("cpp")
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (128, 128)).astype(np.uint8)
    img[:64] //= 32
    ref = ref_scores(img, 128)
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
    ref = np.stack([ref_scores(im, 96, patch=48, levels=8, distances=(1, 60), angles=(0.5, 3.0))
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
    np.testing.assert_allclose(got.numpy(), 2 * ref_scores(img[0].numpy(), 128).mean(), rtol=0, atol=1e-12)


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


def test_fallback_warns_once(monkeypatch, seed):
    setenv(monkeypatch, "D4K_NO_EXT")
    failing_builds(monkeypatch, "no compiler here")
    img = torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (64, 64)).astype(np.uint8))
    with backend.prefer("cpu"):
        with pytest.warns(RuntimeWarning, match="torch fallback"):
            a = G.glcm_score(img, size=64)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            b = G.glcm_score(img, size=64)
    assert abs(float(a) - ref_scores(img.numpy(), 64)[0]) <= 1e-12 and float(a) == float(b)


def test_cpp_threads_give_same_result(use_path, seed):
    use_path("cpp")
    rng = np.random.default_rng(seed)
    img = torch.from_numpy(np.stack([mixed_image(rng, 4), natural_image(256)]))
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


@pytest.mark.parametrize("path", ALL_PATHS)
def test_many_levels_and_large_patch(use_path, path, seed):
    """256 levels (tiled level blocks in Triton) and, on the CPU paths, a 256x256 patch (counts
    above 65535 cells: 32-bit tables in C++)."""
    dev = use_path(path)
    rng = np.random.default_rng(seed)
    tiny = path == "triton" and not HAS_CUDA
    patch = 16 if tiny else 256
    img = rng.integers(0, 256, (patch, patch)).astype(np.uint8)
    img[: patch // 2] = img[: patch // 2] // 128 * 200    # two levels in the top half
    dist, ang = (1, 5), (0.0, 1.0)
    c = G.glcm(torch.from_numpy(img).to(dev), patch=patch, distances=dist, angles=ang, levels=256)
    np.testing.assert_array_equal(c.cpu().numpy(), R.glcm_counts(img, patch, dist, ang, 256))
    s = G.glcm_score(torch.from_numpy(img).to(dev), size=patch, patch=patch, levels=256, distances=dist,
                     angles=ang, reduction="none")
    ref = ref_scores(img, patch, patch=patch, levels=256, distances=dist, angles=ang)
    np.testing.assert_allclose(s.cpu().numpy(), ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("path", ALL_PATHS)
def test_one_and_two_levels_and_empty_batch(use_path, path, seed):
    dev = use_path(path)
    img = np.random.default_rng(seed).integers(0, 256, (32, 32)).astype(np.uint8)
    for lv in (1, 2):
        s = G.glcm_score(torch.from_numpy(img).to(dev), size=32, patch=16, levels=lv, reduction="none")
        np.testing.assert_allclose(s.cpu().numpy(), ref_scores(img, 32, patch=16, levels=lv), rtol=0, atol=1e-12)
        q = (img.astype(np.int32) // (256 // lv)).astype(np.uint8)
        c = G.glcm(torch.from_numpy(q).to(dev), patch=16, levels=lv)
        np.testing.assert_array_equal(c.cpu().numpy(),
                                      R.glcm_counts(q, 16, G.PAPER_DISTANCES, G.PAPER_ANGLES, lv))
    empty = torch.zeros(0, 64, 64, dtype=torch.uint8, device=dev)
    assert G.glcm_score(empty, size=64, reduction="none").shape == (0, 1)
    assert G.glcm_score(empty, size=64).shape == (0,)
    assert G.glcm(empty).shape == (0, 1, 4, 4, 64, 64)


# ------------------------------------------------------------------------------------------------
# the registered ops
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["cpp", "torch", "triton"])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64])
def test_registered_ops_opcheck(use_path, path, dtype, seed):
    """torch.library.opcheck (schema, fake tensor, autograd registration, AOT dispatch) of
    d4k::glcm_counts and d4k::glcm_patch_scores on the compiled C++ kernel, the torch fallback and the
    Triton kernels (the interpreter on the CPU), for integer dtypes and a non-contiguous view of the
    same image, which gives the same counts and the skimage loop's scores."""
    dev = use_path(path)
    rng = np.random.default_rng(seed)
    patch, levels = (16, 8) if path == "triton" and not HAS_CUDA else (32, 16)
    dist, ang = (1, 2), (0.0, math.pi / 4, math.pi / 2)
    offs = G._flat(G.offsets_of(dist, ang))
    img = rng.integers(0, 128, (2, 2 * patch, 2 * patch)).astype(np.uint8)   # values int8 can hold
    x = torch.from_numpy(img).to(dtype).to(dev)
    view = x.transpose(1, 2).contiguous().transpose(1, 2)
    assert not view.is_contiguous() and torch.equal(view, x)
    counts_op, scores_op = torch.ops.d4k.glcm_counts.default, torch.ops.d4k.glcm_patch_scores.default
    qdiv = 256 // levels
    ref = np.stack([ref_scores(im, 2 * patch, patch=patch, levels=levels, distances=dist, angles=ang) for im in img])
    counts = []
    for t in (x, view):
        q = t // qdiv
        torch.library.opcheck(counts_op, (q, patch, offs, levels, 1))
        torch.library.opcheck(scores_op, (t, patch, offs, levels, qdiv))
        counts.append(counts_op(q, patch, offs, levels, 1))
        s = scores_op(t, patch, offs, levels, qdiv)
        assert s.dtype == torch.float64 and s.shape == (2, 4)
        np.testing.assert_allclose(s.cpu().numpy(), ref, rtol=0, atol=1e-12)
    n_offsets = len(set(G.offsets_of(dist, ang)))
    assert counts[0].dtype == torch.int32 and counts[0].shape == (2, 4, n_offsets, levels, levels)
    assert torch.equal(counts[0], counts[1])
