"""diffusers integration: exact tiled decoding in a loaded VAE, SC-VAE-aware loading, and Flux / SD3
pipelines patched to sample at 4K with the SC-VAE (docs/sampling.md).

    from d4k_kernels.integrations.diffusers import load_pipeline, patch_pipeline
    pipe = patch_pipeline(load_pipeline("path/to/flux-4k"), max_memory="8GiB")
    image = pipe(prompt, height=4096, width=4096).images[0]

One job a module:

* ``vae``: ``enable_exact_tiling(vae)`` / ``disable_exact_tiling(vae)`` / ``is_exact_tiling_enabled``;
* ``loading``: ``load_vae(path)`` (SCAutoencoderKL when the config says ``stride: 2``) and
  ``load_pipeline(folder, vae=..., transformer=...)``;
* ``pipeline``: ``patch_pipeline(pipe)`` / ``unpatch_pipeline(pipe)`` for FluxPipeline and
  StableDiffusion3Pipeline, ``check_size`` / ``size_unit`` / ``spatial_factor``.
"""
from .loading import load_pipeline, load_vae
from .pipeline import (
    check_size,
    is_pipeline_patched,
    patch_pipeline,
    size_unit,
    spatial_factor,
    unpatch_pipeline,
)
from .vae import disable_exact_tiling, enable_exact_tiling, is_exact_tiling_enabled

__all__ = [
    "enable_exact_tiling", "disable_exact_tiling", "is_exact_tiling_enabled", "load_vae", "load_pipeline",
    "patch_pipeline", "unpatch_pipeline", "is_pipeline_patched", "check_size", "size_unit", "spatial_factor",
]
