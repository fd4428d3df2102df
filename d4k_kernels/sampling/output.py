"""The output folder of a sampling run: images and their metadata.jsonl.

Each image is saved to a temporary file in its folder and renamed to its name (``os.replace``), so
an image file under its name is always complete: an interrupted run leaves at most a temporary
file, and a rerun skips exactly the images already written. Each written image appends one row to
``metadata.jsonl`` (file, prompt, seed, size, steps, guidance, model, seconds, ...) as soon as the
image is in place; an image sampled again replaces its row.
"""
from __future__ import annotations

import json
import os
from typing import Dict, Set

from .prompts import Prompt

__all__ = ["OutputFolder", "FORMATS"]

FORMATS = {"jpg": "JPEG", "png": "PNG"}  # --format -> the Pillow format written


class OutputFolder:
    """``path`` (created if missing) holding images in ``fmt`` ("jpg" | "png"; JPEG ``quality`` 1-100)."""

    def __init__(self, path: str, fmt: str = "jpg", quality: int = 95):
        if fmt not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
        if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
            raise ValueError(f"quality must be an integer from 1 to 100, got {quality!r}")
        if os.path.exists(path) and not os.path.isdir(path):
            raise ValueError(f"output folder {path!r} exists and is not a folder")
        os.makedirs(path, exist_ok=True)
        self.path, self.fmt, self.quality = path, fmt, quality
        self.metadata = os.path.join(path, "metadata.jsonl")
        self.recorded: Set[str] = self._recorded()

    def _recorded(self) -> Set[str]:
        """The files metadata.jsonl has a row for. A torn last line (a run killed while writing it)
        is dropped from the file, so that the rows appended after it stay whole."""
        if not os.path.isfile(self.metadata):
            return set()
        with open(self.metadata, encoding="utf-8") as f:
            lines = f.readlines()
        if lines and not lines[-1].endswith("\n"):
            lines.pop()
            self._rewrite(lines)
        return {name for name in map(_file_of, lines) if name is not None}

    def _rewrite(self, lines) -> None:
        tmp = self.metadata + f".{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(lines)
        os.replace(tmp, self.metadata)

    def name(self, prompt: Prompt) -> str:
        """The image's name in the folder: the prompt's ``file_name`` with this format's extension, or
        ``{index:05d}.{ext}``. ValueError for a name that leaves the folder."""
        if prompt.file_name is None:
            return f"{prompt.index:05d}.{self.fmt}"
        name = os.path.normpath(os.path.splitext(prompt.file_name)[0] + "." + self.fmt)
        if os.path.isabs(name) or name.split(os.sep)[0] == os.pardir:
            raise ValueError(f"file_name {prompt.file_name!r} (prompt {prompt.index}) leaves the output folder")
        return name

    def done(self, name: str) -> bool:
        return os.path.isfile(os.path.join(self.path, name))

    def write(self, image, name: str, row: Dict) -> None:
        """Save ``image`` (a PIL image) as ``name`` through a temporary file, then append ``row``."""
        dest = os.path.join(self.path, name)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        tmp = os.path.join(os.path.dirname(dest), f".{os.path.basename(dest)}.{os.getpid()}.tmp")
        try:
            if self.fmt == "jpg":
                image.convert("RGB").save(tmp, format=FORMATS[self.fmt], quality=self.quality)
            else:
                image.save(tmp, format=FORMATS[self.fmt])
            os.replace(tmp, dest)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        self.record({"file": name, **row})

    def record(self, row: Dict) -> None:
        """Add the metadata row of ``row["file"]``, replacing an earlier row of that file (an image
        deleted and sampled again), so that metadata.jsonl keeps one row per image."""
        line = json.dumps(row, ensure_ascii=False) + "\n"
        if row["file"] in self.recorded:
            with open(self.metadata, encoding="utf-8") as f:
                self._rewrite([old for old in f if _file_of(old) != row["file"]] + [line])
        else:
            with open(self.metadata, "a", encoding="utf-8") as f:
                f.write(line)
        self.recorded.add(row["file"])


def _file_of(line: str):
    """The "file" of a metadata line (None for a torn or foreign line)."""
    try:
        return json.loads(line)["file"]
    except (ValueError, KeyError, TypeError):
        return None
