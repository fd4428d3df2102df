"""diffusers integration: exact tiled decoding patched into a loaded VAE, and an SC-VAE-aware loader.

    from d4k_kernels.integrations.diffusers import enable_exact_tiling, load_vae
    pipe = FluxPipeline.from_pretrained(..., vae=load_vae("path/to/vae"))
    enable_exact_tiling(pipe.vae, max_memory="8GiB")
    image = pipe(prompt, height=4096, width=4096).images[0]      # decodes through the exact tiler

``enable_exact_tiling`` replaces the instance's ``_decode`` (what ``AutoencoderKL.decode`` calls for
each slice), so ``vae.decode``'s signature, its hooks (``apply_forward_hook``, CPU offload), slicing and
its return type (``DecoderOutput`` or a tuple with ``return_dict=False``) are unchanged; FluxPipeline
and StableDiffusion3Pipeline call ``vae.decode(latents, return_dict=False)[0]`` and get the exact
image. It takes precedence over diffusers' own ``enable_tiling()`` (which is not exact).
"""
from __future__ import annotations

import json
import os
import types
from typing import Optional, Union

import torch
import torch.nn as nn

from ..vae.tiling import ExactTiledDecoder

__all__ = ["enable_exact_tiling", "disable_exact_tiling", "is_exact_tiling_enabled", "load_vae"]

_ATTR = "_d4k_exact_tiler"


def _exact_decode(self, z: torch.Tensor, return_dict: bool = True):
    from diffusers.models.autoencoders.vae import DecoderOutput

    tiler: ExactTiledDecoder = getattr(self, _ATTR)
    plan = tiler.plan(z)
    if plan.n_tiles == 1 and not self.use_tiling:
        # one tile: the class's untiled decode is the same computation, without the bookkeeping
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
    return _ATTR in vae.__dict__


def _read_config(path: str, subfolder: Optional[str], config) -> Optional[dict]:
    if isinstance(config, dict):
        return dict(config)
    if config is not None:
        c = os.fspath(config)
        c = os.path.join(c, "config.json") if os.path.isdir(c) else c
        with open(c) as f:
            return json.load(f)
    base = os.path.join(path, subfolder) if subfolder else path
    cand = os.path.join(base, "config.json") if os.path.isdir(base) else os.path.join(os.path.dirname(base), "config.json")
    if os.path.isfile(cand):
        with open(cand) as f:
            return json.load(f)
    return None


def load_vae(path: Union[str, os.PathLike], *, subfolder: Optional[str] = None, config=None,
             torch_dtype: Optional[torch.dtype] = None, **kwargs) -> nn.Module:
    """Load a local diffusers-format VAE folder (config.json + weights) or one safetensors file,
    returning :class:`~d4k_kernels.vae.SCAutoencoderKL` when the config has ``stride`` != 1 (stock
    diffusers would ignore it and silently decode at F8) and diffusers' AutoencoderKL otherwise.

    A single file needs a config: ``config=`` (dict / config.json / folder) or a config.json beside it.
    ``kwargs`` go to ``from_pretrained``."""
    from diffusers import AutoencoderKL

    from ..vae.sc_vae import SCAutoencoderKL

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such VAE folder or file: {path!r}")
    cfg = _read_config(path, subfolder, config)
    is_file = os.path.isfile(path)
    if cfg is None:
        raise ValueError(f"no config.json found for {path!r}: pass config= (a dict, config.json or folder)")
    cls_name = cfg.get("_class_name", "AutoencoderKL")
    if cls_name not in ("AutoencoderKL", "SCAutoencoderKL"):
        raise ValueError(f"{path!r} holds a {cls_name}, not an AutoencoderKL-family VAE")
    sc = int(cfg.get("stride", 1)) != 1 or cls_name == "SCAutoencoderKL"
    if is_file:
        model = SCAutoencoderKL.from_single_file(path, config=cfg, torch_dtype=torch_dtype)
        if not sc:  # a plain AutoencoderKL with the same weights
            plain = AutoencoderKL(**{k: v for k, v in cfg.items()
                                     if not k.startswith("_") and k not in ("stride", "partitioned")})
            plain.load_state_dict(model.state_dict())
            model = plain.to(torch_dtype) if torch_dtype is not None else plain
        return model.eval()
    cls = SCAutoencoderKL if sc else AutoencoderKL
    if torch_dtype is not None:
        kwargs["torch_dtype"] = torch_dtype
    if subfolder:
        kwargs["subfolder"] = subfolder
    return cls.from_pretrained(path, **kwargs)

