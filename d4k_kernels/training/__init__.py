"""Flow-matching training with Diffusion-4K's wavelet loss (WLF) on diffusers transformers.

    from d4k_kernels.training import FlowMatchingWLFStep
    step = FlowMatchingWLFStep(transformer, noise_scheduler, weighting_scheme="logit_normal")
    loss = step(latents, prompt_embeds, pooled_prompt_embeds, txt_ids=text_ids)   # then backward

See docs/training.md.
"""
from .flow_matching import (
    FlowMatchingWLFStep,
    WLFStepOutput,
    latent_image_ids,
    model_family,
    pack_latents,
    unpack_latents,
    wlf_training_step,
)

from .flow_matching import __all__  # noqa: E402,F811  (one list of public names)
