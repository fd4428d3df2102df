"""Exact tiling inside real diffusers pipelines: a tiny, randomly initialised FluxPipeline and
StableDiffusion3Pipeline (no text encoders: the prompt embeddings are given) produce the same image
with ``enable_exact_tiling`` on their VAE as without it, with the tiles forced small so that several
tiles and every halo case occur; diffusers' own ``enable_tiling`` on the same pipeline changes it.
Needs ``transformers`` (diffusers' pipeline modules import it)."""
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")
from diffusers import (  # noqa: E402
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)

from d4k_kernels.integrations.diffusers import disable_exact_tiling, enable_exact_tiling  # noqa: E402

VAE = dict(down_block_types=["DownEncoderBlock2D"] * 3, up_block_types=["UpDecoderBlock2D"] * 3,
           block_out_channels=[8, 16, 16], layers_per_block=1, latent_channels=16, norm_num_groups=4,
           sample_size=64, use_quant_conv=False, use_post_quant_conv=False,
           scaling_factor=0.3611, shift_factor=0.1159)


def _vae():
    torch.manual_seed(1)
    m = AutoencoderKL(**VAE)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m.eval()


def _flux():
    torch.manual_seed(2)
    tr = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=1, num_single_layers=1,
                                attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                pooled_projection_dim=16, guidance_embeds=True, axes_dims_rope=(4, 6, 6))
    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    pipe = FluxPipeline(scheduler=sched, vae=_vae(), text_encoder=None, tokenizer=None, text_encoder_2=None,
                        tokenizer_2=None, transformer=tr)
    emb = dict(prompt_embeds=torch.randn(1, 5, 32), pooled_prompt_embeds=torch.randn(1, 16))
    return pipe, emb


def _sd3():
    torch.manual_seed(3)
    tr = SD3Transformer2DModel(sample_size=16, patch_size=2, in_channels=16, num_layers=1, attention_head_dim=16,
                               num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=32,
                               pooled_projection_dim=16, out_channels=16, pos_embed_max_size=32)
    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    pipe = StableDiffusion3Pipeline(transformer=tr, scheduler=sched, vae=_vae(), text_encoder=None, tokenizer=None,
                                    text_encoder_2=None, tokenizer_2=None, text_encoder_3=None, tokenizer_3=None)
    emb = dict(prompt_embeds=torch.randn(1, 5, 32), pooled_prompt_embeds=torch.randn(1, 16), guidance_scale=1.0)
    return pipe, emb


def _run(pipe, emb, **kw):
    with torch.no_grad():
        return pipe(height=64, width=48, num_inference_steps=2, output_type="pt",
                    generator=torch.Generator().manual_seed(0), **emb, **kw).images


@pytest.mark.parametrize("make", [_flux, _sd3], ids=["flux", "sd3"])
def test_pipeline_decodes_through_exact_tiling(make, seed):
    pipe, emb = make()
    ref = _run(pipe, emb)
    assert ref.shape == (1, 3, 64, 48) and torch.isfinite(ref).all()
    assert ref.std() > 0.01  # a real image, not a constant: the comparison below can fail
    enable_exact_tiling(pipe.vae, tile=3, progress=False)         # 16x12 latent -> 6 x 4 tiles of 3
    out = _run(pipe, emb)
    tiler = pipe.vae._d4k_exact_tiler
    assert tiler.last_plan.n_tiles == 24
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    disable_exact_tiling(pipe.vae)
    pipe.vae.enable_tiling()
    pipe.vae.tile_sample_min_size, pipe.vae.tile_latent_min_size = 32, 8   # diffusers' tiles
    pipe.vae.tile_overlap_factor = 0.25
    inexact = _run(pipe, emb)
    assert (inexact - ref).abs().max().item() > 1e-3   # diffusers' tiling changes the image
