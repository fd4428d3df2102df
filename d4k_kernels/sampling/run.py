"""The sampling loop: prompts in batches through a (patched) diffusers pipeline into an output folder.

Prompt ``i`` gets its own CPU generator seeded ``seed + i``, so its image does not depend on the
batch size or on which images a rerun skips (the paper's test scripts seed a CPU generator the same
way). One tqdm bar counts the images; the pipeline's own bar counts the denoising steps.
"""
from __future__ import annotations

import dataclasses
import inspect
import time
from typing import Dict, List, Optional, Sequence

import torch

from .output import OutputFolder
from .prompts import Prompt

__all__ = ["SampleSettings", "SampleResult", "sample_to_folder", "guidance_default", "pending"]


@dataclasses.dataclass(frozen=True)
class SampleSettings:
    height: int = 4096
    width: int = 4096
    steps: int = 50
    guidance: Optional[float] = None  # None: the pipeline's default (Flux 3.5, SD3 7.0)
    seed: int = 0
    batch_size: int = 1
    model: str = ""                   # recorded in metadata.jsonl
    extra: Dict = dataclasses.field(default_factory=dict)  # more metadata (e.g. the VAE / transformer paths)


@dataclasses.dataclass
class SampleResult:
    written: List[str]
    skipped: List[str]
    seconds: float


def guidance_default(pipe) -> float:
    """The ``guidance_scale`` the pipeline uses when none is given."""
    return float(inspect.signature(type(pipe).__call__).parameters["guidance_scale"].default)


def pending(prompts: Sequence[Prompt], folder: OutputFolder):
    """The (prompt, name) pairs still to sample, and those already written; ValueError for two
    prompts with one name."""
    seen: Dict[str, int] = {}
    todo, skipped = [], []
    for p in prompts:
        name = folder.name(p)
        if name in seen:
            raise ValueError(f"prompts {seen[name]} and {p.index} would both be written as {name!r}")
        seen[name] = p.index
        (skipped if folder.done(name) else todo).append((p, name))
    return todo, skipped


def sample_to_folder(pipe, prompts: Sequence[Prompt], folder: OutputFolder, settings: SampleSettings, *,
                     progress: bool = True) -> SampleResult:
    """Sample every prompt whose image is not in ``folder`` yet and write it there with its metadata row.

    An image already written but without a row (a run stopped between the two) gets its row, with
    ``seconds`` null."""
    from tqdm.auto import tqdm

    s = settings
    guidance = guidance_default(pipe) if s.guidance is None else float(s.guidance)
    todo, skipped = pending(prompts, folder)

    def row(p: Prompt, seconds: Optional[float]) -> Dict:
        return dict(prompt=p.text, seed=s.seed + p.index, size=dict(height=s.height, width=s.width),
                    steps=s.steps, guidance=guidance, model=s.model, **s.extra, seconds=seconds)

    for p, name in skipped:
        if name not in folder.recorded:
            folder.record({"file": name, **row(p, None)})
    pipe.set_progress_bar_config(disable=not progress, leave=False, desc="steps")
    t_start = time.perf_counter()
    written: List[str] = []
    with tqdm(total=len(todo), desc="images", unit="image", disable=not progress) as bar:
        for b in range(0, len(todo), s.batch_size):
            batch = todo[b:b + s.batch_size]
            t0 = time.perf_counter()
            images = pipe(prompt=[p.text for p, _ in batch], height=s.height, width=s.width,
                          num_inference_steps=s.steps, guidance_scale=guidance, output_type="pil",
                          generator=[torch.Generator("cpu").manual_seed(s.seed + p.index) for p, _ in batch]).images
            each = round((time.perf_counter() - t0) / len(batch), 3)
            for (p, name), image in zip(batch, images):
                folder.write(image, name, row(p, each))
                written.append(name)
            bar.update(len(batch))
    return SampleResult(written, [name for _, name in skipped], time.perf_counter() - t_start)
