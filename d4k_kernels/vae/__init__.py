"""VAE decoding for 4K-8K images: the SC-VAE (F16) model and exact tiled decoding (docs/ops.md, SC-VAE and
exact tiled decoding).

    from d4k_kernels.vae import SCAutoencoderKL, tiled_decode
    vae = SCAutoencoderKL.from_pretrained("path/to/sc-vae")      # honours config "stride": 2
    image = tiled_decode(vae, latents / sf + shift, max_memory="8GiB")  # == vae.decode(...).sample

Needs diffusers (``pip install d4k-kernels[vae]``) for the model; the names are imported lazily.
"""
from __future__ import annotations

import importlib

_EXPORTS = {  # name -> the module (relative to this package) that defines it
    "SCAutoencoderKL": ".sc_vae", "SCDecoder": ".sc_vae", "SC_VAE_CONFIG": ".sc_vae", "FLUX_VAE_CONFIG": ".sc_vae",
    "tiled_decode": ".tiling", "ExactTiledDecoder": ".tiling", "TilePlan": ".tiling", "plan_tiles": ".tiling",
    "required_halo": ".tiling", "conv_macs": ".tiling", "parse_memory": ".._util",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module 'd4k_kernels.vae' has no attribute {name!r}")
    value = getattr(importlib.import_module(mod, __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
