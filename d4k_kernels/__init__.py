"""d4k-kernels: kernels for ultra-high-resolution (4K-8K) latent diffusion.

Public names are imported lazily (PEP 562), so ``import d4k_kernels`` is cheap and an op family's
optional dependencies (diffusers, Pillow, ...) are imported only when that family is used.
"""
from __future__ import annotations

import importlib
from typing import Any

from . import settings  # noqa: F401  (reads the D4K_* variables; sets TRITON_INTERPRET early)
from . import backend  # noqa: F401

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    # Haar wavelets (ops/haar.py)
    "dwt2": "d4k_kernels.ops.haar",
    "idwt2": "d4k_kernels.ops.haar",
    "DWTForward": "d4k_kernels.ops.haar",
    "DWTInverse": "d4k_kernels.ops.haar",
    "to_pywt": "d4k_kernels.ops.haar",
    "from_pywt": "d4k_kernels.ops.haar",
    # wavelet flow-matching loss (ops/wavelet_loss.py)
    "wavelet_loss": "d4k_kernels.ops.wavelet_loss",
    "wavelet_loss_and_grad": "d4k_kernels.ops.wavelet_loss",
    "wavelet_mse": "d4k_kernels.ops.wavelet_loss",
    # GLCM (ops/glcm.py) and image metrics (metrics/)
    "glcm": "d4k_kernels.ops.glcm",
    "glcm_score": "d4k_kernels.ops.glcm",
    "graycoprops": "d4k_kernels.ops.glcm",
    "glcm_entropy": "d4k_kernels.ops.glcm",
    "compression_ratio": "d4k_kernels.metrics",
    # decoder tail kernels (ops/upconv.py, ops/groupnorm.py)
    "upconv_tail": "d4k_kernels.ops.upconv",
    "group_norm_stats": "d4k_kernels.ops.groupnorm",
    "group_norm_finalize": "d4k_kernels.ops.groupnorm",
    "group_norm_apply": "d4k_kernels.ops.groupnorm",
    # attention for head dims up to 512 (ops/attention.py) and the VAE processor using it (vae/attention.py)
    "attention": "d4k_kernels.ops.attention",
    "enable_fast_vae_attention": "d4k_kernels.vae.attention",
    "disable_fast_vae_attention": "d4k_kernels.vae.attention",
    # SC-VAE and exact tiled decoding (vae/, integrations/)
    "SCAutoencoderKL": "d4k_kernels.vae",
    "tiled_decode": "d4k_kernels.vae",
    "enable_exact_tiling": "d4k_kernels.integrations.diffusers",
    "disable_exact_tiling": "d4k_kernels.integrations.diffusers",
    "load_vae": "d4k_kernels.integrations.diffusers",
    # diffusers pipelines at 4K (integrations/diffusers/pipeline.py, loading.py)
    "patch_pipeline": "d4k_kernels.integrations.diffusers",
    "unpatch_pipeline": "d4k_kernels.integrations.diffusers",
    "load_pipeline": "d4k_kernels.integrations.diffusers",
}

__all__ = sorted(_EXPORTS) + ["backend", "settings", "__version__"]


def __getattr__(name: str) -> Any:
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module 'd4k_kernels' has no attribute {name!r}")
    value = getattr(importlib.import_module(mod), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
