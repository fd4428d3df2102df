"""The prompts of a sampling run: ``--prompt TEXT``, or a file of one prompt a line, or a metadata.jsonl
(one JSON object a line, with ``"text"`` and optionally ``"file_name"``, as the Diffusion-4K data sets
describe their images).

Each prompt keeps its index in the list: prompt ``i`` is sampled with seed ``seed + i`` and, without a
``file_name``, written as ``{i:05d}.{ext}``, so a run over the same list gives the same images and
names whatever the batch size and whichever images a rerun skips.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import List, Optional

__all__ = ["Prompt", "read_prompts"]


@dataclasses.dataclass(frozen=True)
class Prompt:
    index: int
    text: str
    file_name: Optional[str] = None  # from a metadata.jsonl; the extension follows the output format


def read_prompts(path: str) -> List[Prompt]:
    """The prompts in ``path``: a ``.jsonl`` file (``"text"``, optional ``"file_name"``; blank lines
    skipped) or a text file (one prompt a line; blank lines skipped). FileNotFoundError / ValueError
    naming the file and the line."""
    if not os.path.isfile(path):
        why = "does not exist" if not os.path.exists(path) else "is not a file"
        raise FileNotFoundError(f"prompts file {path!r} {why}")
    with open(path, encoding="utf-8") as f:
        lines = [(n, line.strip()) for n, line in enumerate(f, 1)]
    lines = [(n, line) for n, line in lines if line]
    jsonl = path.lower().endswith(".jsonl")
    out: List[Prompt] = []
    for n, line in lines:
        if not jsonl:
            out.append(Prompt(len(out), line))
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            raise ValueError(f"{path}:{n}: not a JSON object ({e})") from None
        if not isinstance(row, dict) or not isinstance(row.get("text"), str) or not row["text"].strip():
            raise ValueError(f"{path}:{n}: expected an object with a non-empty \"text\", got {line[:80]!r}")
        name = row.get("file_name")
        if name is not None and (not isinstance(name, str) or not name.strip()):
            raise ValueError(f"{path}:{n}: \"file_name\" must be a non-empty string, got {name!r}")
        out.append(Prompt(len(out), row["text"].strip(), name))
    if not out:
        raise ValueError(f"prompts file {path!r} has no prompts")
    return out
