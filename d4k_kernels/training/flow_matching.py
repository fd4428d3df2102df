"""One flow-matching training step with the fused wavelet loss, for diffusers' FluxTransformer2DModel
and SD3Transformer2DModel (the Diffusion-4K recipe: train_flux_4k_wavelet.py / train_sd3_4k_wavelet.py).

Per call, as the scripts do:

1. ``u = compute_density_for_timestep_sampling(weighting_scheme, N, logit_mean, logit_std, mode_scale)``,
   ``indices = (u * num_train_timesteps).long()``, ``timesteps = scheduler.timesteps[indices]``,
   ``sigmas = scheduler.sigmas[indices]`` (the scripts' ``get_sigmas`` looks the same entry up by
   value), in the latents' dtype, shape (N, 1, 1, 1);
2. ``x_t = (1 - sigmas) * latents + sigmas * noise``;
3. the transformer: Flux gets the 2x2-packed tokens, image ids, ``timestep / 1000`` and the guidance
   embedding when ``config.guidance_embeds``; SD3 gets the latents and ``timestep``;
4. ``weighting = compute_loss_weighting_for_sd3(weighting_scheme, sigmas)``;
5. ``loss = d4k_kernels.wavelet_loss(model_pred, x_t, latents, sigmas, weighting, levels, band_weights)``
   (the scripts' pytorch_wavelets loss with the defaults), and ``backward`` only when asked.

The step does not call the optimizer: it fits an accelerate loop (``with accelerator.accumulate(...)``,
``backward_fn=accelerator.backward``) or a plain one.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Sequence

import torch

from .._checks import check_choice, check_int, check_tensor
from ..ops.wavelet_loss import MAX_LEVELS, expand_band_weights, wavelet_loss, wavelet_mse

__all__ = [
    "FlowMatchingWLFStep",
    "WLFStepOutput",
    "wlf_training_step",
    "pack_latents",
    "unpack_latents",
    "latent_image_ids",
    "model_family",
]

WEIGHTING_SCHEMES = ("none", "sigma_sqrt", "logit_normal", "mode", "cosmap")


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, H/2 * W/2, 4C): Flux's 2x2 patch tokens (= FluxPipeline._pack_latents)."""
    N, C, H, W = latents.shape
    if H % 2 or W % 2:
        raise ValueError(f"Flux packing needs even latent height and width, got {H}x{W}")
    x = latents.view(N, C, H // 2, 2, W // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(N, (H // 2) * (W // 2), C * 4)


def unpack_latents(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(N, H/2 * W/2, 4C) -> (N, C, H, W); ``height``/``width`` are the LATENT sizes (the inverse of
    :func:`pack_latents`; FluxPipeline._unpack_latents takes pixel sizes and the VAE scale instead)."""
    N, T, D = tokens.shape
    if T != (height // 2) * (width // 2) or D % 4:
        raise ValueError(f"tokens of shape {tuple(tokens.shape)} do not unpack to a {height}x{width} latent")
    x = tokens.view(N, height // 2, width // 2, D // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(N, D // 4, height, width)


def latent_image_ids(height: int, width: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Flux image position ids for a (height, width) LATENT: (H/2 * W/2, 3) rows (0, row, col), as
    FluxPipeline._prepare_latent_image_ids(N, H // 2, W // 2, ...) returns them."""
    h, w = height // 2, width // 2
    ids = torch.zeros(h, w, 3)
    ids[..., 1] = torch.arange(h)[:, None]
    ids[..., 2] = torch.arange(w)[None, :]
    return ids.reshape(h * w, 3).to(device=device, dtype=dtype)


def _unwrap(model):
    """The diffusers model inside DDP / accelerate / torch.compile wrappers."""
    seen = 0
    while seen < 8:
        seen += 1
        if hasattr(model, "module") and isinstance(getattr(model, "module"), torch.nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            break
    return model


def model_family(transformer) -> str:
    """"flux" or "sd3" for a (possibly wrapped) diffusers transformer."""
    m = _unwrap(transformer)
    name = type(m).__name__
    if "Flux" in name:
        return "flux"
    if "SD3" in name:
        return "sd3"
    cfg = getattr(m, "config", None)
    if cfg is not None and hasattr(cfg, "guidance_embeds") and hasattr(cfg, "axes_dims_rope"):
        return "flux"
    if cfg is not None and hasattr(cfg, "pos_embed_max_size"):
        return "sd3"
    raise TypeError(f"cannot tell whether {name} is a Flux or an SD3 transformer; pass family='flux' or 'sd3'")


@dataclasses.dataclass
class WLFStepOutput:
    loss: torch.Tensor            # scalar (reduction "mean") float32
    model_pred: torch.Tensor      # (N, C, H, W), unpacked
    noisy_latents: torch.Tensor   # x_t
    noise: torch.Tensor
    timesteps: torch.Tensor       # (N,), scheduler units (0..1000)
    sigmas: torch.Tensor          # (N, 1, 1, 1), latents dtype
    weighting: torch.Tensor       # (N, 1, 1, 1)


class FlowMatchingWLFStep:
    """Callable flow-matching WLF training step (see the module docstring).

    Args:
        transformer: diffusers FluxTransformer2DModel or SD3Transformer2DModel (may be wrapped by
            accelerate / DDP / torch.compile).
        noise_scheduler: a FlowMatchEulerDiscreteScheduler (or its config); its training tables are
            copied once, as the scripts' ``noise_scheduler_copy``. Default: shift 3.0, 1000 steps.
        weighting_scheme, logit_mean, logit_std, mode_scale: diffusers' timestep density / loss
            weighting arguments (the scripts' defaults: "none", 0.0, 1.0, 1.29).
        guidance_scale: Flux guidance embedding value when ``config.guidance_embeds`` (script: 3.5).
        levels, band_weights: passed to :func:`d4k_kernels.wavelet_loss` (defaults = the scripts).
        loss: "wavelet" (Diffusion-4K) or "flow" (the plain diffusers flow-matching MSE on
            ``noise - latents``, for comparison).
        family: "flux" / "sd3" to skip auto-detection.
    """

    def __init__(self, transformer, noise_scheduler=None, *, weighting_scheme: str = "none",
                 logit_mean: float = 0.0, logit_std: float = 1.0, mode_scale: float = 1.29,
                 guidance_scale: float = 3.5, levels: int = 1, band_weights: Optional[Sequence[float]] = None,
                 loss: str = "wavelet", family: Optional[str] = None):
        from diffusers import FlowMatchEulerDiscreteScheduler

        check_choice(weighting_scheme, "weighting_scheme", WEIGHTING_SCHEMES)
        check_choice(loss, "loss", ("wavelet", "flow"))
        self.transformer = transformer
        self.family = check_choice(family, "family", ("flux", "sd3")) if family else model_family(transformer)
        if noise_scheduler is None:
            sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
        else:
            cfg = noise_scheduler.config if hasattr(noise_scheduler, "config") else noise_scheduler
            sched = FlowMatchEulerDiscreteScheduler.from_config(cfg)  # fresh training tables
        self.num_train_timesteps = int(sched.config.num_train_timesteps)
        self.schedule_timesteps = sched.timesteps.clone()
        self.schedule_sigmas = sched.sigmas.clone()
        self.weighting_scheme = weighting_scheme
        self.logit_mean, self.logit_std, self.mode_scale = logit_mean, logit_std, mode_scale
        self.guidance_scale = guidance_scale
        check_int(levels, "levels", lo=1, hi=MAX_LEVELS)
        expand_band_weights(band_weights, levels)  # bad band weights fail here, not at the first step
        self.levels, self.band_weights, self.loss = levels, band_weights, loss

    # -- pieces, usable on their own --------------------------------------------------------
    def sample_u(self, batch_size: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        from diffusers.training_utils import compute_density_for_timestep_sampling

        kw = {} if generator is None else {"generator": generator}  # older diffusers take no generator
        return compute_density_for_timestep_sampling(
            weighting_scheme=self.weighting_scheme, batch_size=batch_size, logit_mean=self.logit_mean,
            logit_std=self.logit_std, mode_scale=self.mode_scale, **kw)

    def timesteps_and_sigmas(self, u: torch.Tensor, device, dtype):
        indices = (u.cpu() * self.num_train_timesteps).long().clamp_(0, self.num_train_timesteps - 1)
        timesteps = self.schedule_timesteps[indices].to(device=device)
        sigmas = self.schedule_sigmas[indices].to(device=device, dtype=dtype).view(-1, 1, 1, 1)
        return timesteps, sigmas

    def predict(self, noisy_latents, timesteps, encoder_hidden_states, pooled_projections, txt_ids=None,
                guidance=None):
        """The transformer's velocity prediction, unpacked to (N, C, H, W)."""
        N, C, H, W = noisy_latents.shape
        m = _unwrap(self.transformer)
        if self.family == "flux":
            dev, dt = noisy_latents.device, noisy_latents.dtype
            if txt_ids is None:
                txt_ids = torch.zeros(encoder_hidden_states.shape[1], 3, device=dev, dtype=dt)
            if guidance is None and getattr(m.config, "guidance_embeds", False):
                guidance = torch.full((N,), float(self.guidance_scale), device=dev)
            out = self.transformer(
                hidden_states=pack_latents(noisy_latents),
                timestep=timesteps / 1000,
                guidance=guidance,
                pooled_projections=pooled_projections,
                encoder_hidden_states=encoder_hidden_states,
                txt_ids=txt_ids,
                img_ids=latent_image_ids(H, W, dev, dt),
                return_dict=False,
            )[0]
            return unpack_latents(out, H, W)
        return self.transformer(
            hidden_states=noisy_latents,
            timestep=timesteps,
            encoder_hidden_states=encoder_hidden_states,
            pooled_projections=pooled_projections,
            return_dict=False,
        )[0]

    # -- the step ---------------------------------------------------------------------------
    def __call__(self, latents: torch.Tensor, encoder_hidden_states: torch.Tensor, pooled_projections: torch.Tensor,
                 txt_ids: Optional[torch.Tensor] = None, *, noise: Optional[torch.Tensor] = None,
                 u: Optional[torch.Tensor] = None, generator: Optional[torch.Generator] = None,
                 backward: bool = False, backward_fn: Optional[Callable[[torch.Tensor], None]] = None,
                 return_output: bool = False):
        """Loss of one step (scalar float32); with ``backward=True`` also ``backward_fn(loss)``
        (default ``loss.backward()``; pass ``accelerator.backward`` under accelerate).
        ``noise`` / ``u`` (uniform-or-density samples in [0, 1), shape (N,)) may be given to make a
        step reproducible; otherwise they are drawn (with ``generator`` if given).
        ``return_output=True`` returns a :class:`WLFStepOutput` instead of the loss."""
        from diffusers.training_utils import compute_loss_weighting_for_sd3

        check_tensor(latents, "latents", ndim=4)
        N = latents.shape[0]
        if noise is None:
            noise = torch.randn(latents.shape, generator=generator, dtype=latents.dtype,
                                device=generator.device if generator is not None else latents.device)
            noise = noise.to(latents.device)
        elif noise.shape != latents.shape:
            raise ValueError(f"noise has shape {tuple(noise.shape)} but latents has shape {tuple(latents.shape)}")
        if u is None:
            u = self.sample_u(N, generator)
        elif u.shape != (N,):
            raise ValueError(f"u must have shape ({N},), got {tuple(u.shape)}")
        timesteps, sigmas = self.timesteps_and_sigmas(u, latents.device, latents.dtype)
        noisy = (1.0 - sigmas) * latents + sigmas * noise
        model_pred = self.predict(noisy, timesteps, encoder_hidden_states, pooled_projections, txt_ids)
        weighting = compute_loss_weighting_for_sd3(weighting_scheme=self.weighting_scheme, sigmas=sigmas)
        if self.loss == "wavelet":
            loss = wavelet_loss(model_pred, noisy, latents, sigmas, weighting.float(), levels=self.levels,
                                band_weights=self.band_weights)
        else:  # diffusers' flow-matching objective: target = noise - latents
            loss = wavelet_mse(model_pred, noise - latents, levels=self.levels, band_weights=self.band_weights,
                               weighting=weighting.float())
        if backward:
            (backward_fn or torch.Tensor.backward)(loss)
        if return_output:
            return WLFStepOutput(loss, model_pred, noisy, noise, timesteps, sigmas, weighting)
        return loss


def wlf_training_step(transformer, latents, encoder_hidden_states, pooled_projections, txt_ids=None, *,
                      noise_scheduler=None, noise=None, u=None, generator=None, backward=False, backward_fn=None,
                      return_output=False, **options):
    """Functional form: ``FlowMatchingWLFStep(transformer, noise_scheduler, **options)(...)``.
    (Build the class once in a loop: it copies the scheduler tables at construction.)"""
    step = FlowMatchingWLFStep(transformer, noise_scheduler, **options)
    return step(latents, encoder_hidden_states, pooled_projections, txt_ids, noise=noise, u=u, generator=generator,
                backward=backward, backward_fn=backward_fn, return_output=return_output)
