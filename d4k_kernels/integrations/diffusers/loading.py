"""Loading local diffusers checkpoints the way the SC-VAE needs: ``load_vae`` and ``load_pipeline``.

Stock diffusers loads an SC-VAE folder (config ``"stride": 2``) as a plain AutoencoderKL: it ignores
``stride`` and decodes at F8 with the SC-VAE's weights, silently. ``load_vae`` reads the config first
and returns :class:`~d4k_kernels.vae.SCAutoencoderKL` for it; ``load_pipeline`` loads a Flux or SD3
pipeline folder with its VAE through ``load_vae`` and, optionally, another transformer (a fine-tuned
one, as training saves it). Everything is read from local paths; nothing is downloaded.
"""
from __future__ import annotations

import json
import os
from typing import Optional, Union

import torch
import torch.nn as nn

__all__ = ["load_vae", "load_pipeline", "PIPELINE_TRANSFORMERS"]

# the pipelines d4k supports -> the transformer class each one takes
PIPELINE_TRANSFORMERS = {"FluxPipeline": "FluxTransformer2DModel", "StableDiffusion3Pipeline": "SD3Transformer2DModel"}

PathLike = Union[str, os.PathLike]


def _dtype_kwargs(torch_dtype: Optional[torch.dtype]) -> dict:
    """``from_pretrained``'s dtype argument: ``dtype`` where diffusers takes it (``torch_dtype`` is
    deprecated there), ``torch_dtype`` in older versions."""
    if torch_dtype is None:
        return {}
    from diffusers.utils import deprecation_utils

    return {"dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype": torch_dtype}


def _read_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def _read_config(path: str, subfolder: Optional[str], config) -> Optional[dict]:
    if isinstance(config, dict):
        return dict(config)
    if config is not None:
        c = os.fspath(config)
        return _read_json(os.path.join(c, "config.json") if os.path.isdir(c) else c)
    base = os.path.join(path, subfolder) if subfolder else path
    cand = os.path.join(base, "config.json") if os.path.isdir(base) else os.path.join(os.path.dirname(base), "config.json")
    return _read_json(cand) if os.path.isfile(cand) else None


def load_vae(path: PathLike, *, subfolder: Optional[str] = None, config=None,
             torch_dtype: Optional[torch.dtype] = None, **kwargs) -> nn.Module:
    """Load a local diffusers-format VAE folder (config.json + weights) or one safetensors file,
    returning :class:`~d4k_kernels.vae.SCAutoencoderKL` when the config has ``stride`` != 1 (stock
    diffusers would ignore it and silently decode at F8) and diffusers' AutoencoderKL otherwise.

    A single file needs a config: ``config=`` (dict / config.json / folder) or a config.json beside it.
    ``kwargs`` go to ``from_pretrained``."""
    from diffusers import AutoencoderKL

    from ...vae.sc_vae import SCAutoencoderKL

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
    kwargs.update(_dtype_kwargs(torch_dtype))
    if subfolder:
        kwargs["subfolder"] = subfolder
    return cls.from_pretrained(path, **kwargs)


def _load_transformer(path: PathLike, cls_name: str, torch_dtype: Optional[torch.dtype]) -> nn.Module:
    """A transformer folder (config.json + weights), or a folder holding one in ``transformer/``."""
    import diffusers

    path = os.fspath(path)
    sub = None
    if not os.path.isfile(os.path.join(path, "config.json")) and os.path.isfile(
            os.path.join(path, "transformer", "config.json")):
        sub = "transformer"
    cfg_path = os.path.join(path, sub or "", "config.json")
    if not os.path.isfile(cfg_path):
        raise FileNotFoundError(f"no transformer config.json in {path!r} (nor in {os.path.join(path, 'transformer')!r})")
    found = _read_json(cfg_path).get("_class_name", cls_name)
    if found != cls_name:
        raise ValueError(f"{cfg_path!r} holds a {found}, but this pipeline takes a {cls_name}")
    return getattr(diffusers, cls_name).from_pretrained(path, subfolder=sub, local_files_only=True,
                                                        **_dtype_kwargs(torch_dtype))


def load_pipeline(path: PathLike, *, vae: Union[PathLike, nn.Module, None] = None,
                  transformer: Union[PathLike, nn.Module, None] = None,
                  torch_dtype: Optional[torch.dtype] = None, **kwargs):
    """Load a local FluxPipeline or StableDiffusion3Pipeline folder (model_index.json + one folder per
    component), its VAE through :func:`load_vae`.

    ``vae``: a VAE folder or single file (:func:`load_vae`) or a loaded module; default: the folder's
    ``vae/``. ``transformer``: a transformer folder (config.json + weights, or a folder with
    ``transformer/``) or a loaded module; default: the folder's ``transformer/``. ``kwargs`` go to
    the pipeline's ``from_pretrained`` (always ``local_files_only``)."""
    import diffusers

    path = os.fspath(path)
    index = os.path.join(path, "model_index.json")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no such pipeline folder: {path!r}")
    if not os.path.isfile(index):
        raise FileNotFoundError(f"{path!r} is not a diffusers pipeline folder: it has no model_index.json")
    cls_name = _read_json(index).get("_class_name")
    if cls_name not in PIPELINE_TRANSFORMERS:
        raise ValueError(f"{index!r} describes a {cls_name}; supported: {', '.join(PIPELINE_TRANSFORMERS)}")
    if vae is None:
        if not os.path.isdir(os.path.join(path, "vae")):
            raise FileNotFoundError(f"{path!r} has no vae/ folder: pass a VAE")
        vae = load_vae(path, subfolder="vae", torch_dtype=torch_dtype)
    elif not isinstance(vae, nn.Module):
        vae = load_vae(vae, torch_dtype=torch_dtype)
    if transformer is not None and not isinstance(transformer, nn.Module):
        transformer = _load_transformer(transformer, PIPELINE_TRANSFORMERS[cls_name], torch_dtype)
    parts = {"vae": vae} if transformer is None else {"vae": vae, "transformer": transformer}
    kwargs.update(_dtype_kwargs(torch_dtype))
    return getattr(diffusers, cls_name).from_pretrained(path, local_files_only=True, **parts, **kwargs)
