"""d4k_kernels.metrics: image loading, OpenCV-exact gray, GLCM Score of files/tensors, Compression Ratio.

Independent references: cv2.imread / cv2.cvtColor, Pillow, os.path.getsize, and the paper's eval.py
loop written here with skimage graycomatrix + shannon_entropy.
"""
import io
import os

import numpy as np
import pytest
import torch

cv2 = pytest.importorskip("cv2")
Image = pytest.importorskip("PIL.Image")
skfeature = pytest.importorskip("skimage.feature")
skmeasure = pytest.importorskip("skimage.measure")
skdata = pytest.importorskip("skimage.data")

from d4k_kernels import backend, metrics  # noqa: E402
from d4k_kernels.metrics import (  # noqa: E402
    ImageLoadError,
    compression_ratio,
    glcm_score_image,
    list_images,
    load_image,
    rgb_to_gray,
)

SIZE = 128  # small crops keep the skimage reference fast (4 patches of 64x64)


# ----------------------------------------------------------------------------- reference (paper eval.py)
def ref_score_gray(gray, size, patch=64):
    g = gray[:size, :size] // 4
    scores = []
    for i in range(0, size, patch):
        for j in range(0, size, patch):
            m = skfeature.graycomatrix(g[i:i + patch, j:j + patch], distances=[1, 2, 3, 4],
                                       angles=[0, np.pi / 4, np.pi / 2, 3 * np.pi / 4],
                                       levels=64, symmetric=False, normed=True)
            scores.append(skmeasure.shannon_entropy(m))
    return float(np.mean(scores))


def ref_score_file(path, size, patch=64):
    img = cv2.imread(str(path))
    return ref_score_gray(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), size, patch)


def natural_rgb(seed, h=SIZE + 9, w=SIZE + 13):
    """A natural-image crop (skimage sample) at a random offset, RGB uint8."""
    rng = np.random.default_rng(seed)
    src = [skdata.astronaut(), skdata.chelsea(), skdata.coffee()][rng.integers(3)]
    y = rng.integers(0, src.shape[0] - h + 1)
    x = rng.integers(0, src.shape[1] - w + 1)
    return np.ascontiguousarray(src[y:y + h, x:x + w])


# ----------------------------------------------------------------------------- gray
def _all_colours_bgr():
    v = np.arange(1 << 24, dtype=np.uint32)
    return np.stack([(v >> 16) & 255, (v >> 8) & 255, v & 255], -1).astype(np.uint8).reshape(4096, 4096, 3)


def test_gray_all_2pow24_colours_match_opencv():
    bgr = _all_colours_bgr()
    ref = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    # in chunks, through both channel orders and the torch path
    for k in range(0, 4096, 1024):
        chunk = bgr[k:k + 1024]
        assert np.array_equal(rgb_to_gray(chunk, order="bgr"), ref[k:k + 1024])
        rgb_t = torch.from_numpy(np.ascontiguousarray(chunk[..., ::-1]))
        assert torch.equal(rgb_to_gray(rgb_t, order="rgb"), torch.from_numpy(ref[k:k + 1024]))


def test_gray_layouts_and_noncontiguous(seed):
    rng = np.random.default_rng(seed)
    n, h, w = 3, 7, 5
    rgb = rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)
    ref = np.stack([cv2.cvtColor(rgb[i], cv2.COLOR_RGB2GRAY) for i in range(n)])
    t = torch.from_numpy(rgb)
    assert torch.equal(rgb_to_gray(t), torch.from_numpy(ref))                        # (N,H,W,3)
    nchw = t.permute(0, 3, 1, 2)                                                      # non-contiguous
    assert not nchw.is_contiguous()
    assert torch.equal(rgb_to_gray(nchw), torch.from_numpy(ref))                     # (N,3,H,W)
    assert torch.equal(rgb_to_gray(nchw[1]), torch.from_numpy(ref[1]))               # (3,H,W)
    assert torch.equal(rgb_to_gray(t[2]), torch.from_numpy(ref[2]))                  # (H,W,3)
    assert torch.equal(rgb_to_gray(t.flip(-1), order="bgr"), torch.from_numpy(ref))
    strided = t[:, ::2, 1::2]
    ref_s = np.stack([cv2.cvtColor(np.ascontiguousarray(rgb[i, ::2, 1::2]), cv2.COLOR_RGB2GRAY) for i in range(n)])
    assert torch.equal(rgb_to_gray(strided), torch.from_numpy(ref_s))
    out = rgb_to_gray(rgb[0])
    assert isinstance(out, np.ndarray) and out.dtype == np.uint8 and np.array_equal(out, ref[0])
    # explicit channels for an ambiguous shape (N,3,H,3)
    amb = torch.from_numpy(rng.integers(0, 256, (2, 3, 4, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="ambiguous"):
        rgb_to_gray(amb)
    a = amb.numpy()
    assert np.array_equal(rgb_to_gray(amb, channels="last").numpy(),
                          np.stack([cv2.cvtColor(np.ascontiguousarray(a[i]), cv2.COLOR_RGB2GRAY) for i in range(2)]))
    first = np.ascontiguousarray(a.transpose(0, 2, 3, 1))
    assert np.array_equal(rgb_to_gray(amb, channels="first").numpy(),
                          np.stack([cv2.cvtColor(first[i], cv2.COLOR_RGB2GRAY) for i in range(2)]))


def test_gray_bad_inputs():
    with pytest.raises(TypeError, match="float32"):
        rgb_to_gray(torch.zeros(4, 4, 3))
    with pytest.raises(ValueError, match=r"\(4, 4\)"):
        rgb_to_gray(torch.zeros(4, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match="size 3"):
        rgb_to_gray(torch.zeros(4, 4, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match="'xyz'"):
        rgb_to_gray(torch.zeros(4, 4, 3, dtype=torch.uint8), order="xyz")
    with pytest.raises(ValueError, match="channels='first'"):
        rgb_to_gray(torch.zeros(4, 4, 3, dtype=torch.uint8), channels="first")
    with pytest.raises(TypeError, match="list"):
        rgb_to_gray([[1, 2, 3]])


# ----------------------------------------------------------------------------- loading
@pytest.fixture
def files(tmp_path, seed):
    rng = np.random.default_rng(seed)
    d = {}
    rgb = natural_rgb(seed)
    d["rgb_png"] = tmp_path / "rgb.png"
    cv2.imwrite(str(d["rgb_png"]), rgb[..., ::-1])
    d["jpg"] = tmp_path / "photo.jpg"
    Image.fromarray(rgb).save(d["jpg"], quality=95)
    d["gray_png"] = tmp_path / "gray.png"
    Image.fromarray(rgb[..., 1]).save(d["gray_png"])
    d["png16"] = tmp_path / "deep.png"
    cv2.imwrite(str(d["png16"]), rng.integers(0, 65536, (33, 21, 3), dtype=np.uint16))
    d["gray16"] = tmp_path / "deepgray.png"
    cv2.imwrite(str(d["gray16"]), rng.integers(0, 65536, (17, 30), dtype=np.uint16))
    d["rgba"] = tmp_path / "alpha.png"
    Image.fromarray(rng.integers(0, 256, (19, 23, 4), dtype=np.uint8), "RGBA").save(d["rgba"])
    d["palette"] = tmp_path / "pal.png"
    Image.fromarray(rgb[:40, :50]).convert("P").save(d["palette"])
    d["webp"] = tmp_path / "img.webp"
    Image.fromarray(rgb[:40, :50]).save(d["webp"], lossless=True)
    d["exif"] = tmp_path / "rotated.png"
    im = Image.fromarray(rgb[:20, :31])
    ex = im.getexif()
    ex[0x0112] = 6
    im.save(d["exif"], exif=ex)
    d["corrupt"] = tmp_path / "corrupt.png"
    d["corrupt"].write_bytes(rng.integers(0, 256, 300, dtype=np.uint8).tobytes())
    d["empty"] = tmp_path / "empty.jpg"
    d["empty"].write_bytes(b"")
    return d


@pytest.mark.parametrize("decoder", ["auto", "cv2", "pil"])
def test_load_image_matches_cv2_imread(files, decoder):
    for key in ["rgb_png", "gray_png", "png16", "gray16", "rgba", "palette", "webp", "exif"]:
        p = files[key]
        ref = cv2.imread(str(p))
        got = load_image(p, decoder=decoder)
        assert got.dtype == np.uint8 and got.shape == ref.shape and got.flags.c_contiguous, key
        assert np.array_equal(got, ref), f"{key} ({decoder})"
        assert np.array_equal(load_image(p, order="rgb", decoder=decoder), ref[..., ::-1]), key
    # JPEG: both decoders give OpenCV's image shape; cv2 path bit-exact with cv2.imread
    assert np.array_equal(load_image(files["jpg"], decoder="cv2"), cv2.imread(str(files["jpg"])))


def test_load_image_gray_png_is_replicated(files):
    img = load_image(files["gray_png"])
    g = np.asarray(Image.open(files["gray_png"]))
    for c in range(3):
        assert np.array_equal(img[..., c], g)
    assert np.array_equal(rgb_to_gray(img, order="bgr"), g)


def test_load_image_errors(files, tmp_path):
    for key, pat in [("corrupt", "corrupt"), ("empty", "empty")]:
        with pytest.raises(ImageLoadError, match=pat) as e:
            load_image(files[key])
        assert e.value.path == str(files[key])
        assert isinstance(e.value, OSError)
    with pytest.raises(ImageLoadError, match="does not exist"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ImageLoadError, match="not a regular file"):
        load_image(tmp_path)
    with pytest.raises(ImageLoadError, match="OpenCV"):
        load_image(files["corrupt"], decoder="cv2")
    with pytest.raises(ValueError, match="'grb'"):
        load_image(files["rgb_png"], order="grb")
    with pytest.raises(ValueError, match="'magick'"):
        load_image(files["rgb_png"], decoder="magick")


def test_list_images(tmp_path):
    (tmp_path / "sub").mkdir()
    for n in ["b.PNG", "a.jpg", "c.webp", "notes.txt", ".hidden.png", "sub/d.jpeg", "sub/e.csv"]:
        (tmp_path / n).write_bytes(b"x")
    imgs, other = list_images(tmp_path)
    assert [os.path.basename(p) for p in imgs] == ["a.jpg", "b.PNG", "c.webp"]
    assert [os.path.basename(p) for p in other] == ["notes.txt"]
    imgs, other = list_images(tmp_path, recursive=True)
    assert [os.path.relpath(p, tmp_path) for p in imgs] == ["a.jpg", "b.PNG", "c.webp", os.path.join("sub", "d.jpeg")]
    assert len(other) == 2
    with pytest.raises(FileNotFoundError, match="nope"):
        list_images(tmp_path / "nope")
    with pytest.raises(NotADirectoryError, match="notes.txt"):
        list_images(tmp_path / "notes.txt")


# ----------------------------------------------------------------------------- compression ratio
def test_compression_ratio_files_by_hand(files, tmp_path):
    ps = [files["rgb_png"], files["jpg"], files["gray_png"]]
    by_hand = 2048 * 2048 * 3 * 3 / sum(os.path.getsize(p) for p in ps)
    assert compression_ratio(ps) == pytest.approx(by_hand, rel=1e-15)
    assert compression_ratio([str(p) for p in ps], size=4096) == pytest.approx(4 * by_hand, rel=1e-15)
    one = files["jpg"]
    assert compression_ratio(one, size=SIZE) == pytest.approx(SIZE * SIZE * 3 / os.path.getsize(one), rel=1e-15)
    # size=None: each image's own pixels
    own = sum(cv2.imread(str(p)).size for p in ps) / sum(os.path.getsize(p) for p in ps)
    assert compression_ratio(ps, size=None) == pytest.approx(own, rel=1e-15)
    # a directory: its image files
    d = tmp_path / "only"
    d.mkdir()
    for p in ps:
        (d / p.name).write_bytes(p.read_bytes())
    (d / "readme.txt").write_text("not counted")
    assert compression_ratio(d, size=256) == pytest.approx(256 * 256 * 9 / sum(os.path.getsize(p) for p in ps))


def test_compression_ratio_files_errors(tmp_path, files):
    with pytest.raises(ValueError, match="at least one"):
        compression_ratio([])
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        compression_ratio([tmp_path / "missing.jpg"])
    with pytest.raises(ValueError, match="empty"):
        compression_ratio([files["empty"]])
    with pytest.raises(ValueError, match="size"):
        compression_ratio([files["jpg"]], size=0)
    with pytest.raises(TypeError, match="torch.Tensor"):
        compression_ratio(np.zeros((8, 8, 3), np.uint8))


def _pil_jpeg_len(rgb_hwc):
    buf = io.BytesIO()
    Image.fromarray(rgb_hwc).save(buf, format="JPEG", quality=95)
    return len(buf.getvalue())


def test_compression_ratio_tensor_matches_pil_bytesio(seed):
    rng = np.random.default_rng(seed)
    imgs = np.stack([natural_rgb(seed + k, 48, 40) for k in range(3)])
    ref = imgs[0].size * 3 / sum(_pil_jpeg_len(im) for im in imgs)
    t = torch.from_numpy(imgs)
    assert compression_ratio(t) == pytest.approx(ref, rel=1e-15)                      # (N,H,W,3) uint8
    assert compression_ratio(t.permute(0, 3, 1, 2)) == pytest.approx(ref, rel=1e-15)  # (N,3,H,W)
    one = imgs[1].size / _pil_jpeg_len(imgs[1])
    assert compression_ratio(t[1]) == pytest.approx(one, rel=1e-15)                   # (H,W,3)
    # float in [0,1] as a diffusers pipeline returns it -> round(x*255) as numpy_to_pil
    f = torch.from_numpy(rng.random((2, 3, 24, 40))).float()
    as_u8 = (f.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    ref_f = as_u8[0].size * 2 / sum(_pil_jpeg_len(a) for a in as_u8)
    assert compression_ratio(f) == pytest.approx(ref_f, rel=1e-15)
    q = 80
    buf = io.BytesIO()
    Image.fromarray(imgs[0]).save(buf, format="JPEG", quality=q)
    assert metrics.compression_ratio_tensor(t[:1], quality=q) == pytest.approx(imgs[0].size / len(buf.getvalue()))
    with pytest.raises(ValueError, match="quality"):
        compression_ratio(t, quality=101)
    with pytest.raises(TypeError, match="int32"):
        compression_ratio(t.int())


def test_top_level_export():
    import d4k_kernels

    assert d4k_kernels.compression_ratio is compression_ratio


# ----------------------------------------------------------------------------- GLCM Score of files / tensors
@pytest.fixture
def cpu_path():
    """The compiled C++ / torch GLCM path for CPU tensors (not the Triton interpreter): fast."""
    with backend.prefer("cpu"):
        yield


def test_glcm_score_image_file_matches_paper_loop(files, cpu_path):
    for key in ["rgb_png", "jpg", "gray_png"]:
        ref = ref_score_file(files[key], SIZE)
        got = glcm_score_image(files[key], size=SIZE, patch=64, device="cpu")
        assert isinstance(got, float)
        assert abs(got - ref) <= 1e-12, key


def test_glcm_score_image_tensors_match_paper_loop(seed, backend_device):
    name, dev = backend_device
    rgb = np.stack([natural_rgb(seed + k) for k in range(2)])
    refs = [ref_score_gray(cv2.cvtColor(rgb[k], cv2.COLOR_RGB2GRAY), SIZE) for k in range(2)]
    t = torch.from_numpy(rgb).to(dev)
    got = glcm_score_image(t.permute(0, 3, 1, 2), size=SIZE)          # (N,3,H,W) RGB, non-contiguous
    assert got.dtype == torch.float64 and got.shape == (2,) and got.device.type == dev.type
    got = got.cpu()
    assert torch.allclose(got, torch.tensor(refs, dtype=torch.float64), rtol=0, atol=1e-12)
    g = torch.from_numpy(np.stack([cv2.cvtColor(rgb[k], cv2.COLOR_RGB2GRAY) for k in range(2)]))
    assert abs(glcm_score_image(g[0].numpy(), size=SIZE, gray=True, device=dev) - refs[0]) <= 1e-12
    if name == "triton" and dev.type == "cpu":
        return  # the interpreter is slow (~1 s per patch): the other layouts on the fast paths only
    bgr = t.flip(-1)
    assert abs(glcm_score_image(bgr[1], size=SIZE, order="bgr") - refs[1]) <= 1e-12
    assert torch.allclose(glcm_score_image(g.to(dev), size=SIZE, gray=True).cpu(), got, rtol=0, atol=1e-12)


def test_glcm_score_files_and_errors(files, cpu_path):
    ps = [files["rgb_png"], files["gray_png"]]
    got = metrics.glcm_score_files(ps, size=SIZE, device="cpu", workers=2)
    ref = torch.tensor([ref_score_file(p, SIZE) for p in ps], dtype=torch.float64)
    assert torch.allclose(got, ref, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="too small"):
        metrics.glcm_score_files([files["rgb_png"], files["palette"]], size=SIZE, device="cpu")
    with pytest.raises(ImageLoadError, match="corrupt"):
        metrics.glcm_score_files([files["corrupt"]], size=SIZE, device="cpu")
    with pytest.raises(ValueError, match="smaller than size"):
        glcm_score_image(files["webp"], size=SIZE)
    with pytest.raises(ValueError, match="multiple of patch"):
        glcm_score_image(files["rgb_png"], size=100, patch=64)
    with pytest.raises(ValueError, match="gray=True"):
        glcm_score_image(torch.zeros(2, SIZE, SIZE, 3, dtype=torch.uint8), size=SIZE, gray=True)


def test_eval_gray_crop_both_paths_match_opencv(seed, monkeypatch):
    from d4k_kernels.metrics import evaluate as ev

    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (37, 45, 3), dtype=np.uint8)
    ref = cv2.cvtColor(np.ascontiguousarray(img[:32, :32]), cv2.COLOR_BGR2GRAY)
    a = ev._gray_crop(img, 32)
    monkeypatch.setattr(ev, "import_cv2", lambda: None)
    b = ev._gray_crop(img, 32)
    for g in (a, b):
        assert g.dtype == np.uint8 and g.shape == (32, 32) and g.flags.c_contiguous
        assert np.array_equal(g, ref)


def test_truncated_jpeg_is_read_as_opencv_reads_it(files, tmp_path):
    """A JPEG cut short decodes partially in OpenCV (the paper's eval.py scores it); so do we."""
    b = files["jpg"].read_bytes()
    p = tmp_path / "cut.jpg"
    p.write_bytes(b[: len(b) * 2 // 3])
    ref = cv2.imread(str(p))
    assert ref is not None
    assert np.array_equal(load_image(p), ref)


def test_glcm_score_image_256_natural(cpu_path, tmp_path, seed):
    """16 patches of a natural JPEG at size 256, through the file path, vs the paper's loop."""
    p = tmp_path / "nat.jpg"
    Image.fromarray(natural_rgb(seed, 256 + 3, 256 + 30)).save(p, quality=95)
    assert abs(glcm_score_image(p, size=256) - ref_score_file(p, 256)) <= 1e-12
