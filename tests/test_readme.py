"""The Python examples of README.md and docs/ops.md run as written (on the CPU path) and their
assertions hold."""
import pathlib
import re

import pytest

from d4k_kernels import backend

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ("README.md", "docs/ops.md")
BLOCKS = [(doc, i, code) for doc in DOCS
          for i, code in enumerate(re.findall(r"```python\n(.*?)```", (ROOT / doc).read_text(), flags=re.S))]


@pytest.mark.parametrize("doc,least", [("README.md", 4), ("docs/ops.md", 4)])
def test_docs_have_examples(doc, least):
    assert sum(d == doc for d, _, _ in BLOCKS) >= least


@pytest.mark.parametrize("doc,i,code", BLOCKS, ids=[f"{d}[{i}]" for d, i, _ in BLOCKS])
def test_example_runs(doc, i, code):
    with backend.prefer("cpu"):
        exec(compile(code, f"{doc}[python block {i}]", "exec"), {"__name__": "__readme__"})
