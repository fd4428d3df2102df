"""SC-VAE: a diffusers AutoencoderKL that honours the config field ``stride`` (docs/ops.md, SC-VAE and
exact tiled decoding).

``stride=1`` is exactly diffusers' AutoencoderKL. ``stride=2`` (the Diffusion-4K SC-VAE, F16):

* encoder: ``conv_in`` is a 3x3 conv with stride 2 (padding 1): an image of H x W gives an
  (H/16) x (W/16) latent with the Flux block layout;
* decoder tail, after the last up block (x: C0 channels at h x w):
  - ``partitioned=True`` (default, the released model): GroupNorm -> SiLU at h x w, then
    ``conv3x3_valid(pad(nearest_up2(x), left=2, top=2))`` (up-then-conv shifted by one output pixel);
  - ``partitioned=False``: GroupNorm -> SiLU -> nearest x2 -> conv3x3 (padding 1).

State-dict keys and shapes are those of AutoencoderKL, so ``from_pretrained(folder)`` (diffusers
format: config.json + diffusion_pytorch_model.safetensors) and :meth:`SCAutoencoderKL.from_single_file`
(one safetensors file with diffusers keys, or LDM/original keys) load the same weights.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, Optional, Union

import torch
import torch.nn as nn

from diffusers import AutoencoderKL
from diffusers.configuration_utils import register_to_config
from diffusers.models.autoencoders.vae import Decoder

from .._checks import check_choice
from .tiling.ops import get_ops, up2_conv

__all__ = ["SCAutoencoderKL", "SCDecoder", "SC_VAE_CONFIG", "FLUX_VAE_CONFIG"]

# The Flux VAE config (diffusers format); the SC-VAE is this plus stride 2.
FLUX_VAE_CONFIG: Dict[str, Any] = dict(
    in_channels=3, out_channels=3,
    down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[128, 256, 512, 512], layers_per_block=2, act_fn="silu", latent_channels=16,
    norm_num_groups=32, sample_size=1024, scaling_factor=0.3611, shift_factor=0.1159,
    force_upcast=True, use_quant_conv=False, use_post_quant_conv=False, mid_block_add_attention=True,
)
SC_VAE_CONFIG: Dict[str, Any] = dict(FLUX_VAE_CONFIG, stride=2, partitioned=True)


class SCDecoder(Decoder):
    """diffusers' Decoder with the SC-VAE tail (``stride`` 2: one more nearest x2 at the end)."""

    stride: int = 1
    partitioned: bool = True
    use_kernels: Optional[bool] = None  # None: d4k kernels on CUDA

    @classmethod
    def from_decoder(cls, dec: Decoder, stride: int = 1, partitioned: bool = True) -> "SCDecoder":
        """Turn a diffusers Decoder into an SCDecoder in place (same modules, same parameters)."""
        dec.__class__ = cls
        dec.stride = stride
        dec.partitioned = bool(partitioned)
        return dec

    def forward(self, sample: torch.Tensor, latent_embeds: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.stride == 1:
            return super().forward(sample, latent_embeds)
        if latent_embeds is not None:
            raise ValueError("SCDecoder with stride 2 does not support latent_embeds (SpatialNorm)")
        sample = self.conv_in(sample)
        sample = self.mid_block(sample, None)
        for up_block in self.up_blocks:
            sample = up_block(sample, None)
        return self.tail(sample)

    def tail(self, x: torch.Tensor, use_kernels: Optional[bool] = None) -> torch.Tensor:
        """conv_norm_out -> SiLU -> nearest x2 -> conv_out (partitioned or plain), on the whole tensor."""
        if use_kernels is None:
            use_kernels = self.use_kernels
        ops = get_ops(x.device, use_kernels)
        norm = self.conv_norm_out
        count = (x.shape[1] // norm.num_groups) * x.shape[-2] * x.shape[-1]
        if ops.name == "torch":
            # GroupNorm's own statistics, exactly as nn.GroupNorm computes them
            return up2_conv(self.conv_act(norm(x)), self.conv_out.weight, self.conv_out.bias, self.partitioned)
        stats = ops.stats(x, norm.num_groups)
        mean, rstd = ops.finalize(stats, count, norm.eps)
        return ops.upconv_tail(x, mean, rstd, norm.weight, norm.bias, self.conv_out.weight, self.conv_out.bias,
                               norm.num_groups, act=self.conv_act, partitioned=self.partitioned)


class SCAutoencoderKL(AutoencoderKL):
    """AutoencoderKL honouring ``stride`` (1 or 2) and ``partitioned`` (the SC-VAE tail).

    Same constructor arguments, state-dict keys, ``encode`` / ``decode`` / ``forward`` and output
    types (AutoencoderKLOutput, DecoderOutput) as diffusers' AutoencoderKL; ``scaling_factor`` and
    ``shift_factor`` live in the config as usual. ``stride`` defaults to 1 (= AutoencoderKL).
    """

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        down_block_types: tuple = ("DownEncoderBlock2D",),
        up_block_types: tuple = ("UpDecoderBlock2D",),
        block_out_channels: tuple = (64,),
        layers_per_block: int = 1,
        act_fn: str = "silu",
        latent_channels: int = 4,
        norm_num_groups: int = 32,
        sample_size: int = 32,
        scaling_factor: float = 0.18215,
        shift_factor: Optional[float] = None,
        latents_mean: Optional[tuple] = None,
        latents_std: Optional[tuple] = None,
        force_upcast: bool = True,
        use_quant_conv: bool = True,
        use_post_quant_conv: bool = True,
        mid_block_add_attention: bool = True,
        stride: int = 1,
        partitioned: bool = True,
    ):
        check_choice(stride, "stride", (1, 2))
        if not isinstance(partitioned, bool):
            raise TypeError(f"partitioned must be a bool, got {partitioned!r}")
        super().__init__(
            in_channels=in_channels, out_channels=out_channels, down_block_types=down_block_types,
            up_block_types=up_block_types, block_out_channels=block_out_channels,
            layers_per_block=layers_per_block, act_fn=act_fn, latent_channels=latent_channels,
            norm_num_groups=norm_num_groups, sample_size=sample_size, scaling_factor=scaling_factor,
            shift_factor=shift_factor, latents_mean=latents_mean, latents_std=latents_std,
            force_upcast=force_upcast, use_quant_conv=use_quant_conv, use_post_quant_conv=use_post_quant_conv,
            mid_block_add_attention=mid_block_add_attention,
        )
        if stride != 1:
            old = self.encoder.conv_in
            self.encoder.conv_in = nn.Conv2d(old.in_channels, old.out_channels, kernel_size=3, stride=stride, padding=1)
        SCDecoder.from_decoder(self.decoder, stride=stride, partitioned=partitioned)
        # diffusers' own (inexact) tiling: a latent tile decodes to stride x more pixels
        ss = sample_size[0] if isinstance(sample_size, (list, tuple)) else sample_size
        self.tile_latent_min_size = int(ss / (2 ** (len(block_out_channels) - 1) * stride))

    @property
    def stride(self) -> int:
        return self.config.stride

    @property
    def spatial_factor(self) -> int:
        """Pixels per latent pixel: 8 for Flux, 16 for the SC-VAE."""
        return 2 ** (len(self.config.block_out_channels) - 1) * self.config.stride

    @property
    def partitioned(self) -> bool:
        return self.decoder.partitioned

    @partitioned.setter
    def partitioned(self, v: bool) -> None:
        if not isinstance(v, bool):
            raise TypeError(f"partitioned must be a bool, got {v!r}")
        self.decoder.partitioned = v

    # -------------------------------------------------------------------------------------------
    @classmethod
    def from_single_file(cls, path: Union[str, os.PathLike], config: Union[None, str, os.PathLike, Dict] = None,
                         torch_dtype: Optional[torch.dtype] = None, strict: bool = True, **overrides):
        """Load one safetensors (or torch) file holding the VAE weights with diffusers keys (as
        ``save_pretrained`` writes them) or original LDM keys (``encoder.down.0.block...``,
        converted with diffusers' converter).

        ``config``: a dict, a config.json path, or a folder with config.json; default: a config.json
        beside the file, else the SC-VAE config (:data:`SC_VAE_CONFIG`). ``overrides`` update it
        (e.g. ``stride=2``, ``partitioned=False``)."""
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no such checkpoint file: {path!r}")
        cfg = _resolve_config(config, os.path.dirname(os.path.abspath(path)))
        cfg.update(overrides)
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            sd = load_file(path)
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
            sd = sd.get("state_dict", sd)
        if not any(k.startswith("decoder.up_blocks.") for k in sd):
            if any(".up.0." in k or k.startswith("decoder.up.") for k in sd) or any("first_stage_model." in k for k in sd):
                from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

                sd = convert_ldm_vae_checkpoint(sd, cfg)
            else:
                raise ValueError(f"{path!r} does not look like an AutoencoderKL checkpoint "
                                 f"(first keys: {list(sd)[:4]})")
        init = {k: v for k, v in cfg.items() if not k.startswith("_")}
        model = cls(**init)
        try:
            missing, unexpected = model.load_state_dict(sd, strict=False)
        except RuntimeError as e:  # shape mismatches
            raise ValueError(f"checkpoint {path!r} does not match the config: {str(e).splitlines()[1].strip()}") from e
        if strict and (missing or unexpected):
            raise ValueError(f"checkpoint {path!r} does not match the config: missing keys {missing[:6]}, "
                             f"unexpected keys {unexpected[:6]}")
        if torch_dtype is not None:
            model = model.to(torch_dtype)
        return model.eval()


def _resolve_config(config, beside: Optional[str]) -> Dict[str, Any]:
    if isinstance(config, dict):
        return dict(config)
    if config is None:
        cand = os.path.join(beside, "config.json") if beside else None
        if cand and os.path.isfile(cand):
            config = cand
        else:
            return dict(SC_VAE_CONFIG)
    config = os.fspath(config)
    if os.path.isdir(config):
        config = os.path.join(config, "config.json")
    with open(config) as f:
        return json.load(f)
