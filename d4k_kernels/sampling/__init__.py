"""Sampling images at 4K with a patched diffusers Flux / SD3 pipeline: the layers under ``d4k sample``
(docs/sampling.md).

* ``prompts``: the prompt list (``--prompt`` or a file of lines / a metadata.jsonl) with each
  prompt's index, seed and file name;
* ``output``: the output folder: images written through a temporary file and a rename, one
  metadata.jsonl row per image, and what a rerun can skip;
* ``run``: :func:`sample_to_folder`, the loop over batches of prompts;
* ``cli``: the ``d4k sample`` command (loading, options, one-line errors).

The pipeline itself is loaded and patched by :mod:`d4k_kernels.integrations.diffusers`
(``load_pipeline``, ``patch_pipeline``).
"""
from .output import OutputFolder
from .prompts import Prompt, read_prompts
from .run import SampleSettings, sample_to_folder

__all__ = ["Prompt", "read_prompts", "OutputFolder", "SampleSettings", "sample_to_folder"]
