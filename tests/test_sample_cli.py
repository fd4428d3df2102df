"""`d4k sample` end to end on tiny saved pipelines (tests/tiny_pipelines.py; nothing downloaded): the
images (size, format, names, seeds), metadata.jsonl, resume, the --vae / --transformer options, and
user mistakes as one line and exit status 2."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")
Image = pytest.importorskip("PIL.Image")
from tiny_pipelines import flux_pipeline, save_pipeline, sd3_pipeline  # noqa: E402

from d4k_kernels.cli import main  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPTS = ["a photo of a cat sitting on a red chair", "", "a city street at night", "snowy mountains"]


@pytest.fixture(scope="module")
def flux_dir(tmp_path_factory):
    return save_pipeline(flux_pipeline(), tmp_path_factory.mktemp("models") / "flux")


def _run(model, out, *extra, h=64, w=96):
    return main(["sample", "--model", str(model), "--out", str(out), "--height", str(h), "--width", str(w),
                 "--steps", "2", "--no-progress", *map(str, extra)])


def _rows(out):
    with open(os.path.join(out, "metadata.jsonl")) as f:
        return [json.loads(line) for line in f]


def _pixels(path):
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def test_sample_end_to_end_and_resume(flux_dir, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    out = tmp_path / "out"
    assert _run(flux_dir, out, "--prompts", prompts, "--seed", 5, "--batch-size", 2) == 0
    assert "3 images written" in capsys.readouterr().out
    names = ["00000.jpg", "00001.jpg", "00002.jpg"]
    assert sorted(os.listdir(out)) == names + ["metadata.jsonl"]   # no temporary files left
    for n in names:
        with Image.open(out / n) as im:
            assert im.format == "JPEG" and im.size == (96, 64)
    rows = _rows(out)
    assert [r["file"] for r in rows] == names
    assert [r["prompt"] for r in rows] == [p for p in PROMPTS if p]
    assert [r["seed"] for r in rows] == [5, 6, 7]
    for r in rows:
        assert r["size"] == {"height": 64, "width": 96} and r["steps"] == 2 and r["guidance"] == 3.5
        assert r["model"] == str(flux_dir) and r["seconds"] > 0
    # a rerun skips every image
    stamps = {n: os.stat(out / n).st_mtime_ns for n in names}
    assert _run(flux_dir, out, "--prompts", prompts, "--seed", 5) == 0
    assert "all 3 images are already" in capsys.readouterr().out
    assert {n: os.stat(out / n).st_mtime_ns for n in names} == stamps and len(_rows(out)) == 3
    # one image lost: only it is sampled again, the same image (its seed does not depend on the batch)
    before = _pixels(out / "00001.jpg")
    os.remove(out / "00001.jpg")
    assert _run(flux_dir, out, "--prompts", prompts, "--seed", 5, "--batch-size", 1) == 0
    assert "1 image written" in capsys.readouterr().out
    assert os.stat(out / "00000.jpg").st_mtime_ns == stamps["00000.jpg"]
    assert np.abs(_pixels(out / "00001.jpg") - before).max() <= 2   # JPEG of a batch-1 vs batch-2 run
    rows = _rows(out)
    assert sorted(r["file"] for r in rows) == names                 # one row per image
    # an image whose row was lost (a run stopped between the two) gets a row without seconds
    with open(out / "metadata.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows if r["file"] != "00002.jpg")
    assert _run(flux_dir, out, "--prompts", prompts, "--seed", 5) == 0
    last = _rows(out)[-1]
    assert last["file"] == "00002.jpg" and last["seconds"] is None and last["seed"] == 7


def test_jsonl_prompts_file_names_and_png(flux_dir, tmp_path, capsys):
    meta = tmp_path / "metadata.jsonl"
    meta.write_text(json.dumps({"text": "a bowl of fruit", "file_name": "fruit/bowl.jpg"}) + "\n\n"
                    + json.dumps({"text": "an old man with a beard"}) + "\n")
    out = tmp_path / "out"
    assert _run(flux_dir, out, "--prompts", meta, "--format", "png", h=32, w=64) == 0
    assert sorted(r["file"] for r in _rows(out)) == ["00001.png", os.path.join("fruit", "bowl.png")]
    with Image.open(out / "fruit" / "bowl.png") as im:
        assert im.format == "PNG" and im.size == (64, 32)
    single = tmp_path / "single"
    assert _run(flux_dir, single, "--prompt", "a bowl of fruit", "--format", "png", h=32, w=64) == 0
    np.testing.assert_array_equal(_pixels(single / "00000.png"), _pixels(out / "fruit" / "bowl.png"))


def test_vae_and_transformer_options(flux_dir, tmp_path):
    """--transformer (another transformer folder, as training saves it) and --vae (a single file)."""
    from safetensors.torch import save_file

    other = flux_pipeline(seed=1)
    other.transformer.save_pretrained(tmp_path / "ft" / "transformer")
    vae_dir = tmp_path / "vae"
    vae_dir.mkdir()
    save_file({k: v.contiguous() for k, v in other.vae.state_dict().items()}, str(vae_dir / "sc.safetensors"))
    with open(os.path.join(flux_dir, "vae", "config.json")) as f:
        (vae_dir / "config.json").write_text(f.read())
    base, ft = tmp_path / "base", tmp_path / "ft_out"
    assert _run(flux_dir, base, "--prompt", "a cat", "--format", "png") == 0
    assert _run(flux_dir, ft, "--prompt", "a cat", "--format", "png", "--transformer", tmp_path / "ft",
                "--vae", vae_dir / "sc.safetensors") == 0
    row = _rows(ft)[0]
    assert row["transformer"] == str(tmp_path / "ft") and row["vae"] == str(vae_dir / "sc.safetensors")
    assert np.abs(_pixels(ft / "00000.png") - _pixels(base / "00000.png")).max() > 2


def test_sd3_pipeline(tmp_path, capsys):
    model = save_pipeline(sd3_pipeline(), tmp_path / "sd3")
    out = tmp_path / "out"
    assert _run(model, out, "--prompt", "a red chair", "--guidance", 4.5, "--quality", 80, h=96, w=64) == 0
    with Image.open(out / "00000.jpg") as im:
        assert im.size == (64, 96)
    row = _rows(out)[0]
    assert row["guidance"] == 4.5 and row["seed"] == 0


def _error(capsys, rc):
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and "Traceback" not in "\n".join(err)
    line = [e for e in err if e.startswith("d4k sample: error:")]
    assert len(line) == 1, err
    return line[0]


@pytest.mark.parametrize("extra,message", [
    (["--prompts", "nowhere.txt"], "prompts file 'nowhere.txt' does not exist"),
    (["--prompt", "x", "--steps", "0"], "--steps must be positive, got 0"),
    (["--prompt", "x", "--quality", "0"], "quality must be an integer from 1 to 100"),
    (["--prompt", "x", "--max-memory", "lots"], "--max-memory must be bytes"),
    (["--prompt", "x", "--height", "100"], r"height 100 \(nearest valid: 96 or 128\)"),
    (["--prompt", "x", "--transformer", "nowhere"], "no transformer config.json in 'nowhere'"),
    (["--prompt", "x", "--vae", "nowhere.safetensors"], "no such VAE folder or file"),
], ids=["prompts-file", "steps", "quality", "max-memory", "size", "transformer", "vae"])
def test_usage_errors(flux_dir, tmp_path, capsys, extra, message):
    import re

    args = ["sample", "--model", str(flux_dir), "--out", str(tmp_path / "out"), "--steps", "2", "--no-progress",
            "--height", "64", "--width", "64"]
    line = _error(capsys, main(args + extra))
    assert re.search(message, line), line


def test_usage_errors_of_the_model_and_prompts(flux_dir, tmp_path, capsys):
    out = str(tmp_path / "out")
    line = _error(capsys, main(["sample", "--model", str(tmp_path / "none"), "--prompt", "x", "--out", out]))
    assert "--model" in line and "does not exist" in line
    line = _error(capsys, main(["sample", "--model", str(tmp_path), "--prompt", "x", "--out", out]))
    assert "has no model_index.json" in line
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    line = _error(capsys, main(["sample", "--model", str(flux_dir), "--prompts", str(empty), "--out", out]))
    assert "has no prompts" in line
    twice = tmp_path / "twice.jsonl"
    twice.write_text('{"text": "a", "file_name": "x.jpg"}\n{"text": "b", "file_name": "x.png"}\n')
    line = _error(capsys, main(["sample", "--model", str(flux_dir), "--prompts", str(twice), "--out", out]))
    assert "prompts 0 and 1 would both be written as 'x.jpg'" in line
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a"}\n{"prompt": "b"}\n')
    line = _error(capsys, main(["sample", "--model", str(flux_dir), "--prompts", str(bad), "--out", out]))
    assert "bad.jsonl:2" in line and '"text"' in line
    sd3_tr = tmp_path / "sd3_tr"
    sd3_pipeline().transformer.save_pretrained(sd3_tr)
    line = _error(capsys, main(["sample", "--model", str(flux_dir), "--prompt", "x", "--out", out,
                                "--transformer", str(sd3_tr)]))
    assert "holds a SD3Transformer2DModel, but this pipeline takes a FluxTransformer2DModel" in line
    if not torch.cuda.is_available():
        line = _error(capsys, main(["sample", "--model", str(flux_dir), "--prompt", "x", "--out", out,
                                    "--device", "cuda"]))
        assert "CUDA is not available" in line


def test_out_of_memory_suggests_max_memory(flux_dir, tmp_path, capsys, monkeypatch):
    from diffusers import FluxPipeline

    oom = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)

    def no_memory(self, *args, guidance_scale=3.5, **kwargs):
        raise oom("CUDA out of memory. Tried to allocate 38.00 GiB")

    monkeypatch.setattr(FluxPipeline, "__call__", no_memory)
    line = _error(capsys, _run(flux_dir, tmp_path / "out", "--prompt", "x", "--max-memory", "12GiB"))
    assert "out of memory sampling 64x96" in line and "lower --max-memory" in line and "12GiB" in line
    assert os.listdir(tmp_path / "out") == []


def test_console_script_prints_one_line(tmp_path):
    """The installed command's entry point, in a fresh process: a user mistake is one line, exit 2."""
    code = "from d4k_kernels.cli import console_main; console_main()"
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-c", code, "sample", "--model", str(tmp_path / "none"), "--prompt", "x"],
                       capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("d4k sample: error: --model")


def test_example_sample_4k(flux_dir, tmp_path, capsys):
    """examples/sample_4k.py as its docstring runs it on a tiny pipeline."""
    import runpy

    main_fn = runpy.run_path(os.path.join(REPO, "examples", "sample_4k.py"))["main"]
    out = tmp_path / "x.jpg"
    image = main_fn(["--model", str(flux_dir), "--size", "64", "--steps", "2", "--out", str(out)])
    assert image.size == (64, 64) and f"{out}: 64x64" in capsys.readouterr().out
    with Image.open(out) as im:
        assert im.size == (64, 64)
