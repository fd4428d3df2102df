"""`d4k eval DIR` and d4k_kernels.metrics.evaluate: CSV/JSON records and the paper's summary,
against the paper's eval.py loop written here (cv2.imread + cvtColor + skimage graycomatrix /
shannon_entropy) and os.path.getsize; in-process, as a subprocess, and sharded over 2 gloo ranks."""
import csv
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

cv2 = pytest.importorskip("cv2")
Image = pytest.importorskip("PIL.Image")
skfeature = pytest.importorskip("skimage.feature")
skmeasure = pytest.importorskip("skimage.measure")
skdata = pytest.importorskip("skimage.data")

from d4k_kernels.cli import main  # noqa: E402
from d4k_kernels.metrics import evaluate as ev  # noqa: E402

SIZE = 128
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ref_score_file(path, size, patch=64):
    """The paper's eval.py for one image."""
    gray = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2GRAY)[:size, :size] // 4
    s = []
    for i in range(0, size, patch):
        for j in range(0, size, patch):
            m = skfeature.graycomatrix(gray[i:i + patch, j:j + patch], [1, 2, 3, 4],
                                       [0, np.pi / 4, np.pi / 2, 3 * np.pi / 4],
                                       levels=64, symmetric=False, normed=True)
            s.append(skmeasure.shannon_entropy(m))
    return float(np.mean(s))


def _crop(img, seed, h, w):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, img.shape[0] - h + 1)
    x = rng.integers(0, img.shape[1] - w + 1)
    return np.ascontiguousarray(img[y:y + h, x:x + w])


@pytest.fixture
def folder(tmp_path, seed):
    d = tmp_path / "imgs"
    d.mkdir()
    Image.fromarray(_crop(skdata.astronaut(), seed, SIZE + 5, SIZE + 17)).save(d / "a_astronaut.png")
    Image.fromarray(_crop(skdata.chelsea(), seed + 1, SIZE + 20, SIZE + 3)).save(d / "b_cat.jpg", quality=95)
    (d / "c_corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg" * 7)
    Image.fromarray(_crop(skdata.coffee(), seed + 2, SIZE - 1, SIZE + 40)).save(d / "d_small.png")
    Image.fromarray(_crop(skdata.camera(), seed + 3, SIZE + 2, SIZE)).save(d / "e_gray.png")
    (d / "notes.txt").write_text("not an image")
    return d


OK = ["a_astronaut.png", "b_cat.jpg", "e_gray.png"]
ALL = ["a_astronaut.png", "b_cat.jpg", "c_corrupt.jpg", "d_small.png", "e_gray.png"]


def _expected(d, names=OK):
    refs = {n: ref_score_file(d / n, SIZE) for n in names}
    cr = SIZE * SIZE * 3 * len(names) / sum(os.path.getsize(d / n) for n in names)
    return refs, cr


def _check_summary(text, refs, cr, n_ok, n_skip):
    m = re.search(r"^GLCM Score: (\d\.\d{4})$", text, re.M)
    assert m, text
    assert abs(float(m.group(1)) - np.mean(list(refs.values()))) <= 0.5e-4 + 1e-12
    m = re.search(r"^Compression Ratio: (\d+\.\d{2})$", text, re.M)
    assert m, text
    assert abs(float(m.group(1)) - cr) <= 0.005 + 1e-12
    assert f"{n_ok} images evaluated, {n_skip} skipped" in text


def _check_rows(d, rows, refs, names=ALL):
    assert [os.path.basename(r["file"]) for r in rows] == names
    for r in rows:
        n = os.path.basename(r["file"])
        if n in refs:
            assert r["status"] == "ok" and r["reason"] in ("", None)
            assert abs(float(r["glcm_score"]) - refs[n]) <= 1e-12, n
            size = os.path.getsize(d / n)
            assert int(r["file_bytes"]) == size
            assert float(r["compression_ratio"]) == pytest.approx(SIZE * SIZE * 3 / size, rel=1e-15)
            h, w = cv2.imread(str(d / n)).shape[:2]
            assert (int(r["width"]), int(r["height"])) == (w, h)
        else:
            assert r["status"] == "skipped"
            assert r["glcm_score"] in ("", None)
    by = {os.path.basename(r["file"]): r for r in rows}
    assert "corrupt" in by["c_corrupt.jpg"]["reason"]
    assert by["d_small.png"]["reason"] == f"too small: {SIZE + 40}x{SIZE - 1} < {SIZE}x{SIZE}"


def test_eval_in_process_csv(folder, tmp_path, capsys):
    out = tmp_path / "res.csv"
    rc = main(["eval", str(folder), "--size", str(SIZE), "--device", "cpu", "--out", str(out), "--workers", "2"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    refs, cr = _expected(folder)
    _check_summary(cap.out, refs, cr, 3, 2)
    assert "c_corrupt.jpg" in cap.out and "d_small.png" in cap.out and "too small" in cap.out
    assert "1 non-image file ignored: notes.txt" in cap.out
    assert "%|" in cap.err and "img" in cap.err  # the tqdm progress bar went to stderr
    assert "files/s" in cap.err
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    _check_rows(folder, rows, refs)


def test_eval_in_process_json_limit_batch(folder, tmp_path, capsys):
    out = tmp_path / "res.json"
    rc = main(["eval", str(folder), "--size", str(SIZE), "--device", "cpu", "--out", str(out),
               "--limit", "4", "--batch", "2", "--workers", "1", "--no-progress"])
    cap = capsys.readouterr()
    assert rc == 0
    assert "%|" not in cap.err  # no progress bar
    names = ["a_astronaut.png", "b_cat.jpg"]
    refs, cr = _expected(folder, names)
    _check_summary(cap.out, refs, cr, 2, 2)
    data = json.loads(out.read_text())
    _check_rows(folder, data["images"], refs, names=ALL[:4])
    s = data["summary"]
    assert abs(s["glcm_score"] - np.mean(list(refs.values()))) <= 1e-12
    assert s["compression_ratio"] == pytest.approx(cr, rel=1e-15)
    assert (s["evaluated"], s["skipped"], s["size"], s["patch"]) == (2, 2, SIZE, 64)


def test_eval_recursive(folder, capsys):
    sub = folder / "sub"
    sub.mkdir()
    shutil.copy(folder / "e_gray.png", sub / "f_copy.png")
    assert main(["eval", str(folder), "--size", str(SIZE), "--device", "cpu", "--no-progress"]) == 0
    assert "3 images evaluated" in capsys.readouterr().out
    assert main(["eval", str(folder), "--size", str(SIZE), "--device", "cpu", "--no-progress", "--recursive"]) == 0
    assert "4 images evaluated, 2 skipped" in capsys.readouterr().out


def test_eval_errors(folder, tmp_path, capsys):
    assert main(["eval", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["eval", str(folder / "notes.txt")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    bad = tmp_path / "bad"
    bad.mkdir()
    shutil.copy(folder / "c_corrupt.jpg", bad / "x.jpg")
    shutil.copy(folder / "d_small.png", bad / "y.png")
    assert main(["eval", str(bad), "--size", str(SIZE), "--device", "cpu", "--no-progress"]) == 1
    cap = capsys.readouterr()
    assert "0 images evaluated, 2 skipped" in cap.out and "none of the 2 image file(s)" in cap.err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["eval", str(empty), "--device", "cpu", "--no-progress"]) == 1
    assert "no image files" in capsys.readouterr().err
    assert main(["eval", str(folder), "--out", str(tmp_path / "r.txt")]) == 2
    assert ".csv or .json" in capsys.readouterr().err
    assert main(["eval", str(folder), "--size", "100"]) == 2
    assert "multiple of --patch" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["eval", str(folder), "--workers", "0"])
    if not torch.cuda.is_available():
        assert main(["eval", str(folder), "--device", "cuda"]) == 2
        assert "CUDA is not available" in capsys.readouterr().err


def test_evaluate_streams_bounded_window(folder, tmp_path, monkeypatch):
    """Decoding runs ahead of scoring by a bounded window only (the folder is never all in memory)."""
    d = tmp_path / "many"
    d.mkdir()
    for k in range(10):
        shutil.copy(folder / "e_gray.png", d / f"img{k:02d}.png")
    state = {"decoded": 0, "scored": 0, "max_ahead": 0}
    real_prepare, real_call = ev._prepare, ev._Scorer.__call__

    def prepare(path, size):
        r = real_prepare(path, size)
        state["decoded"] += 1
        return r

    def call(self, grays):
        state["max_ahead"] = max(state["max_ahead"], state["decoded"] - state["scored"])
        out = real_call(self, grays)
        state["scored"] += len(grays)
        return out

    monkeypatch.setattr(ev, "_prepare", prepare)
    monkeypatch.setattr(ev._Scorer, "__call__", call)
    res = ev.evaluate_folder(d, size=SIZE, device="cpu", workers=1, batch=1)
    assert len(res.ok) == 10 and state["scored"] == 10
    assert 1 <= state["max_ahead"] <= 3  # window = 2 * workers, plus the one being scored
    ref = ref_score_file(d / "img00.png", SIZE)
    assert all(abs(r.glcm_score - ref) <= 1e-12 for r in res.records)


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_eval_subprocess(folder, tmp_path):
    out = tmp_path / "sub.csv"
    p = subprocess.run([sys.executable, "-m", "d4k_kernels.cli", "eval", str(folder), "--size", str(SIZE),
                        "--device", "cpu", "--out", str(out)],
                       capture_output=True, text=True, env=_env(), cwd=str(tmp_path), timeout=300)
    assert p.returncode == 0, p.stderr
    refs, cr = _expected(folder)
    _check_summary(p.stdout, refs, cr, 3, 2)
    with open(out, newline="") as f:
        _check_rows(folder, list(csv.DictReader(f)), refs)
    p = subprocess.run([sys.executable, "-m", "d4k_kernels.cli", "eval", str(tmp_path / "missing")],
                       capture_output=True, text=True, env=_env(), timeout=300)
    assert p.returncode == 2 and "does not exist" in p.stderr


def test_eval_torchrun_two_gloo_ranks(folder, tmp_path):
    """torchrun --nproc_per_node 2 on the CPU: files sharded over 2 gloo ranks, merged on rank 0."""
    out = tmp_path / "dist.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "d4k_kernels.cli", "eval", str(folder), "--size", str(SIZE), "--device", "cpu",
           "--out", str(out), "--no-progress", "--workers", "1"]
    env = _env()
    env["OMP_NUM_THREADS"] = "1"
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    refs, cr = _expected(folder)
    _check_summary(p.stdout, refs, cr, 3, 2)
    assert p.stdout.count("GLCM Score:") == 1  # only rank 0 reports
    data = json.loads(out.read_text())
    assert data["summary"]["world_size"] == 2
    _check_rows(folder, data["images"], refs)
    assert [r["rank"] for r in data["images"]] == [0, 1, 0, 1, 0]


@pytest.mark.cuda
def test_eval_cuda_matches_reference(folder, tmp_path, capsys):
    out = tmp_path / "cuda.json"
    rc = main(["eval", str(folder), "--size", str(SIZE), "--device", "cuda", "--out", str(out), "--batch", "2"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    refs, cr = _expected(folder)
    _check_summary(cap.out, refs, cr, 3, 2)
    _check_rows(folder, json.loads(out.read_text())["images"], refs)
    from d4k_kernels.metrics import glcm_score_image

    got = glcm_score_image(folder / "b_cat.jpg", size=SIZE, device="cuda")
    assert abs(got - refs["b_cat.jpg"]) <= 1e-12


def test_summary_notes_images_larger_than_size(folder, capsys):
    """The fixture's images are larger than SIZE: the paper's CR uses SIZE^2*3; the note gives own pixels."""
    res = ev.evaluate_folder(folder, size=SIZE, device="cpu", workers=1)
    names = [os.path.basename(r.file) for r in res.ok]
    own = sum(cv2.imread(str(folder / n)).size for n in names) / sum(os.path.getsize(folder / n) for n in names)
    assert res.compression_ratio_own_pixels == pytest.approx(own, rel=1e-15)
    assert f"note: 3 evaluated image(s) are not {SIZE}x{SIZE}" in res.summary()
    assert f"(with their own pixels it is {own:.2f})" in res.summary()
    exact = folder / "exact"
    exact.mkdir()
    Image.fromarray(_crop(skdata.astronaut(), 7, SIZE, SIZE)).save(exact / "x.png")
    res = ev.evaluate_folder(exact, size=SIZE, device="cpu", workers=1)
    assert "note:" not in res.summary()
    assert res.compression_ratio == pytest.approx(res.compression_ratio_own_pixels, rel=1e-15)


@pytest.mark.parametrize("world", [None, "1", "2"])
def test_console_main_exit_paths(monkeypatch, world):
    """The script entry returns main()'s code; under torchrun (WORLD_SIZE > 1) through os._exit."""
    import d4k_kernels.cli as cli

    if world is None:
        monkeypatch.delenv("WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("WORLD_SIZE", world)
    rc = 3 + (world == "2")
    monkeypatch.setattr(cli, "main", lambda argv=None: rc)
    hard = []

    def fake_exit(code):
        hard.append(code)
        raise SystemExit("os._exit")

    monkeypatch.setattr(os, "_exit", fake_exit)
    with pytest.raises(SystemExit) as e:
        cli.console_main()
    if world == "2":
        assert hard == [rc] and e.value.code == "os._exit"
    else:
        assert hard == [] and e.value.code == rc
