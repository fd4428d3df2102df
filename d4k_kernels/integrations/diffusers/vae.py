"""Exact tiled decoding patched into a loaded diffusers VAE (one instance, undone by ``disable_exact_tiling``).

    from d4k_kernels.integrations.diffusers import enable_exact_tiling
    enable_exact_tiling(pipe.vae, max_memory="8GiB")
    image = pipe(prompt, height=4096, width=4096).images[0]      # decodes through the exact tiler

``enable_exact_tiling`` replaces the instance's ``_decode`` (what ``AutoencoderKL.decode`` calls for
each slice), so ``vae.decode``'s signature, its hooks (``apply_forward_hook``, CPU offload), slicing and
its return type (``DecoderOutput`` or a tuple with ``return_dict=False``) are unchanged; FluxPipeline
and StableDiffusion3Pipeline call ``vae.decode(latents, return_dict=False)[0]`` and get the exact
image. It takes precedence over diffusers' own ``enable_tiling()`` (which is not exact).
``patch_pipeline`` (pipeline.py) calls it for a whole pipeline.
"""
from __future__ import annotations

import types
from typing import Optional, Union

import torch
import torch.nn as nn

from ...vae.attention import fast_vae_attention
from ...vae.tiling import ExactTiledDecoder
from ...vae.tiling.ops import get_ops

__all__ = ["enable_exact_tiling", "disable_exact_tiling", "is_exact_tiling_enabled", "tiling_state",
           "restore_tiling_state"]

_ATTR = "_d4k_exact_tiler"  # the instance attribute holding its ExactTiledDecoder


def _exact_decode(self, z: torch.Tensor, return_dict: bool = True):
    from diffusers.models.autoencoders.vae import DecoderOutput

    tiler: ExactTiledDecoder = getattr(self, _ATTR)
    plan = tiler.plan(z)
    if plan.n_tiles == 1 and not self.use_tiling:
        # one tile: the class's untiled decode is the same computation, without the bookkeeping; its
        # mid-block attention runs the d4k kernel where the tiled decode would (use_kernels, on CUDA)
        kernels = get_ops(z.device, tiler.use_kernels).name == "d4k"
        with fast_vae_attention(self.decoder.mid_block, enabled=kernels):
            dec = type(self)._decode(self, z, return_dict=True).sample
    else:
        dec = tiler(z, plan=plan)
    if not return_dict:
        return (dec,)
    return DecoderOutput(sample=dec)


def enable_exact_tiling(vae: nn.Module, max_memory: Union[int, str, None] = None, tile: Optional[int] = None, *,
                        progress: Optional[bool] = None, halo: Optional[int] = None,
                        use_kernels: Optional[bool] = None, offload: Optional[bool] = None) -> nn.Module:
    """Make ``vae.decode`` an exact tiled decode (in place; returns ``vae``).

    ``vae``: a loaded diffusers AutoencoderKL (Flux, SD3, SDXL, SD1.x) or SCAutoencoderKL.
    ``max_memory``: device-memory budget ("8GiB", bytes; default 8 GiB or the free memory);
    ``tile``: tile core in latent pixels (overrides the budget); ``progress``: tqdm bar
    (None: on a terminal when there are several tiles); ``halo``, ``use_kernels``, ``offload``:
    see :class:`d4k_kernels.vae.ExactTiledDecoder` (which checks them all). Calling it again updates the
    settings.
    """
    dec = getattr(vae, "decoder", None)
    if dec is None or not hasattr(vae, "_decode"):
        raise TypeError(f"enable_exact_tiling needs a diffusers AutoencoderKL-style VAE, got {type(vae).__name__}")
    tiler = ExactTiledDecoder(dec, getattr(vae, "post_quant_conv", None), tile=tile, max_memory=max_memory,
                              halo=halo, progress=progress, use_kernels=use_kernels, offload=offload)
    setattr(vae, _ATTR, tiler)
    vae._decode = types.MethodType(_exact_decode, vae)
    return vae


def disable_exact_tiling(vae: nn.Module) -> nn.Module:
    """Undo :func:`enable_exact_tiling` (no-op when it was not enabled); returns ``vae``."""
    if _ATTR in vae.__dict__:
        del vae.__dict__[_ATTR]
    if "_decode" in vae.__dict__:
        del vae.__dict__["_decode"]
    return vae


def is_exact_tiling_enabled(vae: nn.Module) -> bool:
    """Whether ``vae.decode`` runs the exact tiled decode (:func:`enable_exact_tiling` is in effect)."""
    return _ATTR in vae.__dict__


def tiling_state(vae: nn.Module) -> dict:
    """What :func:`enable_exact_tiling` sets on ``vae`` as it is now (for :func:`restore_tiling_state`)."""
    return {k: vae.__dict__[k] for k in (_ATTR, "_decode") if k in vae.__dict__}


def restore_tiling_state(vae: nn.Module, state: dict) -> nn.Module:
    """Put back the exact tiling state :func:`tiling_state` read (enabled with its tiler, or not)."""
    disable_exact_tiling(vae)
    vae.__dict__.update(state)
    return vae
