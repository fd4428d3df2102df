"""The pieces under `d4k sample` without a model: the prompt files and the output folder."""
import json
import os

import pytest

Image = pytest.importorskip("PIL.Image")

from d4k_kernels.sampling import OutputFolder, Prompt, read_prompts  # noqa: E402
from d4k_kernels.sampling.run import pending  # noqa: E402


def test_read_prompts(tmp_path):
    txt = tmp_path / "p.txt"
    txt.write_text("  first prompt \n\n\tsecond\n")
    assert read_prompts(str(txt)) == [Prompt(0, "first prompt"), Prompt(1, "second")]
    jl = tmp_path / "metadata.jsonl"
    jl.write_text('{"text": "a", "file_name": "x/a.jpg", "other": 1}\n\n{"text": " b "}\n')
    assert read_prompts(str(jl)) == [Prompt(0, "a", "x/a.jpg"), Prompt(1, "b")]
    for body, message in (('{"text": "a"}\nnot json\n', r"metadata.jsonl:2: not a JSON object"),
                          ('{"text": ""}\n', r':1: expected an object with a non-empty "text"'),
                          ('["a"]\n', r":1: expected an object"),
                          ('{"text": "a", "file_name": 3}\n', r'"file_name" must be a non-empty string, got 3')):
        jl.write_text(body)
        with pytest.raises(ValueError, match=message):
            read_prompts(str(jl))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_prompts(str(tmp_path / "none.txt"))
    with pytest.raises(FileNotFoundError, match="is not a file"):
        read_prompts(str(tmp_path))


def test_output_names_and_checks(tmp_path):
    out = OutputFolder(str(tmp_path / "out"), "png")
    assert out.name(Prompt(7, "x")) == "00007.png"
    assert out.name(Prompt(0, "x", "sub/a.jpg")) == os.path.join("sub", "a.png")
    for bad in ("../a.jpg", "/abs/a.jpg", "sub/../../a.jpg"):
        with pytest.raises(ValueError, match="leaves the output folder"):
            out.name(Prompt(0, "x", bad))
    with pytest.raises(ValueError, match="format must be one of jpg, png, got 'gif'"):
        OutputFolder(str(tmp_path), "gif")
    with pytest.raises(ValueError, match="quality must be an integer from 1 to 100, got 101"):
        OutputFolder(str(tmp_path), "jpg", 101)
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="is not a folder"):
        OutputFolder(str(tmp_path / "file"))
    with pytest.raises(ValueError, match="prompts 0 and 1 would both be written as '00001.png'"):
        pending([Prompt(0, "a", "00001.jpg"), Prompt(1, "b")], out)


def test_output_writes_through_a_temporary_file(tmp_path):
    out = OutputFolder(str(tmp_path), "jpg", 90)
    img = Image.new("RGB", (8, 4), (200, 10, 10))
    out.write(img, "a.jpg", {"prompt": "p", "seed": 1})
    assert sorted(os.listdir(tmp_path)) == ["a.jpg", "metadata.jsonl"]
    with Image.open(tmp_path / "a.jpg") as im:
        assert im.format == "JPEG" and im.size == (8, 4)

    class Broken:
        def convert(self, mode):
            return self

        def save(self, path, **kw):
            with open(path, "wb") as f:
                f.write(b"half an image")
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        out.write(Broken(), "b.jpg", {"prompt": "q"})
    assert sorted(os.listdir(tmp_path)) == ["a.jpg", "metadata.jsonl"]  # no b.jpg, no temporary file
    # a torn last line (a killed run) is ignored; a second write of a.jpg replaces its row
    with open(tmp_path / "metadata.jsonl", "a") as f:
        f.write('{"file": "c.jpg", "pro')
    again = OutputFolder(str(tmp_path))
    assert again.recorded == {"a.jpg"} and again.done("a.jpg") and not again.done("b.jpg")
    again.write(img, "a.jpg", {"prompt": "p", "seed": 2})
    again.write(img, "d.jpg", {"prompt": "r", "seed": 3})
    with open(tmp_path / "metadata.jsonl") as f:
        rows = [json.loads(line) for line in f]
    assert rows == [{"file": "a.jpg", "prompt": "p", "seed": 2}, {"file": "d.jpg", "prompt": "r", "seed": 3}]
