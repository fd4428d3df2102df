"""Diffusion-4K sampling in stock diffusers pipelines: ``patch_pipeline`` / ``unpatch_pipeline``.

    pipe = load_pipeline("path/to/flux-4k")                     # loading.py: the SC-VAE as SCAutoencoderKL
    patch_pipeline(pipe, max_memory="8GiB")
    image = pipe(prompt, height=4096, width=4096).images[0]     # exactly 4096 x 4096, decoded exactly

FluxPipeline and StableDiffusion3Pipeline derive ``vae_scale_factor`` from the VAE's
``block_out_channels`` (F8). With the SC-VAE (stride 2, F16) they build latents twice the size the
image needs and deliver an image twice as large as asked. The patch changes, on this pipeline
instance only (the class and other instances are untouched, ``unpatch_pipeline`` restores all of it):

* ``vae_scale_factor`` and the image processor follow the VAE's real spatial factor
  (:func:`spatial_factor`), so the latents, the tokens, the default size
  (``default_sample_size * vae_scale_factor``) and the delivered image all agree;
* ``check_inputs`` first refuses a height or width that is not a multiple of the pipeline's unit
  (:func:`size_unit`: the factor times Flux's 2x2 token packing, or times SD3's patch size) and names
  the nearest valid sizes; stock Flux resizes such a size silently (a log warning);
* the VAE decodes through the exact tiled decoder (:func:`~.vae.enable_exact_tiling`), so
  ``output_type="pil" | "np" | "pt"`` all get the untiled image within a memory budget.

Nothing else needs changing: both pipelines compute the dynamic shift ``mu`` from the latents' real
token count, which is right once the factor is (the same ``mu`` as the paper's pipelines at every
size), and the SC-VAE's partitioned tail is part of its config (SCAutoencoderKL), so the decode takes
no extra argument. The changes are instance attributes, so they survive ``pipe.to(...)``, dtype
casts and ``enable_model_cpu_offload()`` (whose hooks wrap ``vae.forward`` / ``vae.decode``, not
``_decode``), in either order.
"""
from __future__ import annotations

import functools
import inspect
from typing import Optional, Union

import torch.nn as nn

from ..._checks import check_int
from ..._util import parse_memory
from .vae import enable_exact_tiling, restore_tiling_state, tiling_state

__all__ = ["patch_pipeline", "unpatch_pipeline", "is_pipeline_patched", "spatial_factor", "size_unit",
           "check_size"]

_STATE = "_d4k_patch"  # the pipeline attribute holding what patch_pipeline replaced
_MISSING = object()


def _kind(pipe) -> str:
    """"flux" or "sd3"; TypeError naming any other class."""
    from diffusers import FluxPipeline, StableDiffusion3Pipeline

    if isinstance(pipe, FluxPipeline):
        return "flux"
    if isinstance(pipe, StableDiffusion3Pipeline):
        return "sd3"
    raise TypeError(f"patch_pipeline supports FluxPipeline and StableDiffusion3Pipeline, got {type(pipe).__name__}")


def spatial_factor(vae: nn.Module) -> int:
    """Image pixels per latent pixel of a diffusers AutoencoderKL-family VAE: 8 for Flux / SD3,
    16 for the SC-VAE. A VAE whose config asks for a stride its class ignores (an SC-VAE loaded as a
    plain AutoencoderKL) is refused: it would decode at the wrong size."""
    cfg = getattr(vae, "config", None)
    if cfg is None or "block_out_channels" not in cfg:
        raise TypeError(f"expected a diffusers AutoencoderKL-family VAE, got {type(vae).__name__}")
    factor = getattr(vae, "spatial_factor", None)
    if factor is not None:
        return int(factor)
    stride = int(cfg.get("stride", 1) or 1)
    if stride != 1:
        raise ValueError(f"the VAE's config says stride {stride} (an SC-VAE), but it was loaded as a plain "
                         f"{type(vae).__name__}, which ignores it and decodes at F8: load it with "
                         "d4k_kernels.integrations.diffusers.load_vae")
    return 2 ** (len(cfg["block_out_channels"]) - 1)


def _token_side(pipe, kind: str) -> int:
    """Latent pixels per token side: Flux packs 2x2 latent pixels into a token, SD3 patches them."""
    return 2 if kind == "flux" else int(pipe.transformer.config.patch_size)


def _unit(pipe, kind: str):
    """(unit, why): what the image height and width must be multiples of, and why."""
    factor, side = spatial_factor(pipe.vae), _token_side(pipe, kind)
    return factor * side, f"the VAE's spatial factor {factor} x {side} latent pixels per token side"


def size_unit(pipe) -> int:
    """What the image height and width must be multiples of: the VAE's spatial factor times the
    latent pixels per token side (Flux with the SC-VAE: 16 x 2 = 32; stock Flux: 8 x 2 = 16)."""
    return _unit(pipe, _kind(pipe))[0]


def _nearest(n: int, unit: int) -> str:
    lo = n // unit * unit
    return f"{lo + unit}" if lo == 0 else f"{lo} or {lo + unit}"


def _check_size(height, width, unit: int, why: str) -> None:
    for v, name in ((height, "height"), (width, "width")):
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"{name} must be an int, got {v!r}")
        if v < 1:
            raise ValueError(f"{name} must be positive, got {v}")
    bad = [f"{name} {v} (nearest valid: {_nearest(v, unit)})"
           for v, name in ((height, "height"), (width, "width")) if v % unit]
    if bad:
        raise ValueError(f"{' and '.join(bad)}: this pipeline needs multiples of {unit} ({why})")


def check_size(pipe, height: int, width: int) -> None:
    """Raise ValueError unless ``height`` x ``width`` is a size ``pipe`` can deliver exactly (positive
    multiples of :func:`size_unit`), naming the nearest valid sizes."""
    _check_size(height, width, *_unit(pipe, _kind(pipe)))


def _check_latent_channels(pipe, kind: str) -> None:
    tr = getattr(pipe, "transformer", None)
    if tr is None:
        raise ValueError(f"{type(pipe).__name__} has no transformer")
    c_vae = int(pipe.vae.config.latent_channels)
    c_in = int(tr.config.in_channels)
    per_token = 4 if kind == "flux" else 1  # Flux's tokens hold 2x2 latent pixels
    if c_in != c_vae * per_token:
        need = f"{c_vae} x {per_token} = {c_vae * per_token}" if per_token > 1 else f"{c_vae}"
        raise ValueError(f"the VAE has {c_vae} latent channels but the transformer ({type(tr).__name__}) takes "
                         f"in_channels={c_in}; this VAE needs in_channels {need}: the VAE and the transformer "
                         "do not belong together")


def _size_checked(check_inputs, unit: int, why: str):
    """``check_inputs`` (a bound method) that first refuses a size that is not a multiple of ``unit``."""
    sig = inspect.signature(check_inputs)

    @functools.wraps(check_inputs)
    def checked(*args, **kwargs):
        given = sig.bind_partial(*args, **kwargs).arguments
        _check_size(given.get("height"), given.get("width"), unit, why)
        return check_inputs(*args, **kwargs)

    return checked


def _patch_vae_decode(pipe, state: dict, *, exact_decode: bool, max_memory, tile, progress) -> None:
    """Every change to how ``pipe.vae`` decodes is made here, and what it replaces is recorded in
    ``state`` for :func:`unpatch_pipeline`."""
    state["vae"], state["tiling"] = pipe.vae, tiling_state(pipe.vae)
    if exact_decode:
        enable_exact_tiling(pipe.vae, max_memory=max_memory, tile=tile, progress=progress)


def _unpatch_vae_decode(state: dict) -> None:
    restore_tiling_state(state["vae"], state["tiling"])


def patch_pipeline(pipe, *, max_memory: Union[int, str, None] = None, tile: Optional[int] = None,
                   exact_decode: bool = True, progress: Optional[bool] = None):
    """Make a loaded FluxPipeline or StableDiffusion3Pipeline sample at any size with its VAE's real
    spatial factor and decode exactly within a memory budget (in place; returns ``pipe``).

    ``max_memory`` ("8GiB", bytes; default 8 GiB or the free memory) or ``tile`` (latent pixels) size
    the exact tiled decode; ``exact_decode=False`` leaves the VAE's decode as it is. ``progress``: the
    tiled decode's tqdm bar (None: on a terminal when there are several tiles). Calling it again
    replaces the earlier patch. Raises, before it changes anything, TypeError for another pipeline
    class and ValueError when the VAE and the transformer do not belong together or the VAE is an
    SC-VAE loaded as a plain AutoencoderKL."""
    kind = _kind(pipe)
    if not isinstance(exact_decode, bool):
        raise TypeError(f"exact_decode must be True or False, got {exact_decode!r}")
    if not exact_decode and (max_memory is not None or tile is not None):
        raise ValueError("max_memory and tile size the exact tiled decode: they need exact_decode=True")
    parse_memory(max_memory)  # bad values are refused before anything changes
    if tile is not None:
        check_int(tile, "tile", lo=1)
    if progress is not None and not isinstance(progress, bool):
        raise TypeError(f"progress must be True, False or None, got {progress!r}")
    if getattr(pipe, "vae", None) is None:
        raise ValueError(f"{type(pipe).__name__} has no VAE")
    factor = spatial_factor(pipe.vae)
    unit, why = _unit(pipe, kind)
    _check_latent_channels(pipe, kind)
    if is_pipeline_patched(pipe):
        unpatch_pipeline(pipe)
    from diffusers.image_processor import VaeImageProcessor

    d = pipe.__dict__
    state = {name: d.get(name, _MISSING) for name in ("vae_scale_factor", "image_processor", "check_inputs")}
    _patch_vae_decode(pipe, state, exact_decode=exact_decode, max_memory=max_memory, tile=tile, progress=progress)
    old = pipe.image_processor
    # Flux's processor works in token units (factor x 2), as the stock pipeline sets it; SD3's in latent pixels
    d["image_processor"] = VaeImageProcessor.from_config(
        {**old.config, "vae_scale_factor": unit if kind == "flux" else factor})
    d["vae_scale_factor"] = factor
    d["check_inputs"] = _size_checked(pipe.check_inputs, unit, why)
    d[_STATE] = state
    return pipe


def unpatch_pipeline(pipe):
    """Undo :func:`patch_pipeline` (no-op when the pipeline is not patched); returns ``pipe``."""
    state = pipe.__dict__.pop(_STATE, None)
    if state is None:
        return pipe
    _unpatch_vae_decode(state)
    for name in ("vae_scale_factor", "image_processor", "check_inputs"):
        if state[name] is _MISSING:
            pipe.__dict__.pop(name, None)
        else:
            pipe.__dict__[name] = state[name]
    return pipe


def is_pipeline_patched(pipe) -> bool:
    """Whether :func:`patch_pipeline` is in effect on ``pipe``."""
    return _STATE in pipe.__dict__

