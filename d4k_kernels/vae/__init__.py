"""VAE decoding for 4K-8K images: the SC-VAE (F16) model and exact tiled decoding (SPEC.md §4).

    from d4k_kernels.vae import SCAutoencoderKL, tiled_decode
    vae = SCAutoencoderKL.from_pretrained("path/to/sc-vae")      # honours config "stride": 2
    image = tiled_decode(vae, latents / sf + shift, max_memory="8GiB")  # == vae.decode(...).sample

Needs diffusers (``pip install d4k-kernels[vae]``) for the model; the names are imported lazily.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "SCAutoencoderKL": "sc_vae", "SCDecoder": "sc_vae", "SC_VAE_CONFIG": "sc_vae", "FLUX_VAE_CONFIG": "sc_vae",
    "tiled_decode": "tiled", "ExactTiledDecoder": "tiled", "TilePlan": "tiled", "plan_tiles": "tiled",
    "parse_memory": "tiled", "required_halo": "tiled", "conv_macs": "tiled",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module 'd4k_kernels.vae' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{mod}"), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
