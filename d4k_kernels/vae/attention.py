"""The VAE's self-attention through d4k's attention op: a diffusers attention processor.

    from d4k_kernels.vae.attention import enable_fast_vae_attention
    enable_fast_vae_attention(pipe.vae)          # every Attention in the VAE (the mid-blocks' one head)
    image = pipe(prompt, height=4096, width=4096).images[0]

The diffusers VAEs (AutoencoderKL: Flux, SD3, SDXL, SD1.x; SCAutoencoderKL) have one attention in the
encoder's and one in the decoder's mid-block: a single head as wide as the channels (512) over every
latent pixel. Their default processor, ``AttnProcessor2_0``, calls ``F.scaled_dot_product_attention``,
whose flash backend stops at head dim 256; :class:`FastVAEAttnProcessor` runs the same computation with
:func:`d4k_kernels.ops.attention.attention` (a flash kernel for head dims up to 512 on CUDA; chunked SDPA
with bounded memory elsewhere) in place of SDPA, and changes nothing else: spatial norm, group norm,
the q / k / v projections, the optional q / k norms, the output projection and dropout, the residual
connection and ``rescale_output_factor`` are applied as ``AttnProcessor2_0`` applies them. A call with
an attention mask (no VAE passes one) runs ``AttnProcessor2_0`` itself.

* :func:`enable_fast_vae_attention` / :func:`disable_fast_vae_attention`: set it on (and restore the
  previous processors of) every ``Attention`` module of a VAE, for plain untiled decodes and encodes.
* :func:`fast_vae_attention`: the same for the duration of a ``with`` block; the exact tiled decoder
  uses it around the mid-block it runs on the whole latent.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, List, Tuple

import torch
import torch.nn as nn

from ..ops.attention import attention

__all__ = ["FastVAEAttnProcessor", "enable_fast_vae_attention", "disable_fast_vae_attention",
           "is_fast_vae_attention_enabled", "fast_vae_attention"]

_PREVIOUS = "_d4k_previous_processor"


def _attention_class():
    try:
        from diffusers.models.attention_processor import Attention
    except ImportError:
        raise ImportError("the VAE attention processor needs diffusers: pip install 'd4k-kernels[vae]'") from None
    return Attention


class FastVAEAttnProcessor:
    """``AttnProcessor2_0`` with :func:`d4k_kernels.ops.attention.attention` in place of SDPA."""

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states=None, attention_mask=None,
                 temb=None, *args, **kwargs) -> torch.Tensor:
        if attention_mask is not None:
            from diffusers.models.attention_processor import AttnProcessor2_0

            return AttnProcessor2_0()(attn, hidden_states, encoder_hidden_states, attention_mask, temb,
                                      *args, **kwargs)
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size = hidden_states.shape[0]
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        head_dim = key.shape[-1] // attn.heads
        # (B, N, heads * head_dim) -> (B, heads, N, head_dim) views: the op reads these strides in place
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        hidden_states = attention(query, key, value)   # SDPA's default scale, 1 / sqrt(head_dim)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)   # linear projection
        hidden_states = attn.to_out[1](hidden_states)   # dropout
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def _attention_modules(module: nn.Module) -> List[nn.Module]:
    if not isinstance(module, nn.Module):
        raise TypeError(f"expected a diffusers VAE (a torch.nn.Module), got {type(module).__name__}")
    cls = _attention_class()
    return [m for m in module.modules() if isinstance(m, cls)]


def _install(attns: List[nn.Module]) -> List[Tuple[nn.Module, object]]:
    """Set the fast processor on each module that does not have it; returns (module, previous processor)."""
    changed = []
    for m in attns:
        if not isinstance(m.processor, FastVAEAttnProcessor):
            changed.append((m, m.processor))
            m.set_processor(FastVAEAttnProcessor())
    return changed


def enable_fast_vae_attention(vae: nn.Module) -> nn.Module:
    """Run every diffusers ``Attention`` module of ``vae`` (or of any module: a decoder, a mid-block)
    with :class:`FastVAEAttnProcessor`; in place, returns ``vae``. The previous processors are kept for
    :func:`disable_fast_vae_attention`. Calling it again changes nothing; a VAE without attention
    modules is returned unchanged."""
    for m, previous in _install(_attention_modules(vae)):
        object.__setattr__(m, _PREVIOUS, previous)   # a plain attribute, even for a processor that is a Module
    return vae


def disable_fast_vae_attention(vae: nn.Module) -> nn.Module:
    """Give every ``Attention`` module of ``vae`` that runs :class:`FastVAEAttnProcessor` back the processor
    it had before :func:`enable_fast_vae_attention` (diffusers' ``AttnProcessor2_0`` where that is not
    known, e.g. the processor was set directly); in place, returns ``vae``."""
    for m in _attention_modules(vae):
        if isinstance(m.processor, FastVAEAttnProcessor):
            previous = m.__dict__.pop(_PREVIOUS, None)
            if previous is None:
                from diffusers.models.attention_processor import AttnProcessor2_0

                previous = AttnProcessor2_0()
            m.set_processor(previous)
    return vae


def is_fast_vae_attention_enabled(vae: nn.Module) -> bool:
    """True when ``vae`` has attention modules and all of them run :class:`FastVAEAttnProcessor`."""
    attns = _attention_modules(vae)
    return bool(attns) and all(isinstance(m.processor, FastVAEAttnProcessor) for m in attns)


@contextlib.contextmanager
def fast_vae_attention(module: nn.Module, enabled: bool = True) -> Iterator[nn.Module]:
    """Inside the ``with`` block, the ``Attention`` modules of ``module`` run :class:`FastVAEAttnProcessor`
    (``enabled=False``: nothing changes); afterwards each has its processor of before."""
    changed = _install(_attention_modules(module)) if enabled else []
    try:
        yield module
    finally:
        for m, previous in changed:
            m.set_processor(previous)
