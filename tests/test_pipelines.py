"""Flux and SD3 pipelines sampling with the SC-VAE: ``patch_pipeline`` / ``unpatch_pipeline`` on tiny
random-weight pipelines (tests/tiny_pipelines.py: real text encoders and tokenizers, nothing
downloaded), and exact tiling inside the stock pipelines (prompt embeddings given, no text encoders):
the same image with ``enable_exact_tiling`` on their VAE as without it, with the tiles forced small so
that several tiles and every halo case occur; diffusers' own ``enable_tiling`` changes it.
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


# ---------------------------------------------------------------------------------------------------
# patch_pipeline on tiny pipelines with text encoders (tests/tiny_pipelines.py)

from diffusers.pipelines.flux import pipeline_flux  # noqa: E402
from diffusers.pipelines.stable_diffusion_3 import pipeline_stable_diffusion_3 as pipeline_sd3  # noqa: E402
from tiny_pipelines import flux_pipeline, save_pipeline, sd3_pipeline, tiny_vae  # noqa: E402

from d4k_kernels.integrations.diffusers import (  # noqa: E402
    check_size,
    is_exact_tiling_enabled,
    is_pipeline_patched,
    patch_pipeline,
    size_unit,
    spatial_factor,
    unpatch_pipeline,
)

MAKERS = pytest.mark.parametrize("make", [flux_pipeline, sd3_pipeline], ids=["flux", "sd3"])


def _sample(pipe, prompt="a red chair", seed=0, h=64, w=96, output_type="pt", **kw):
    with torch.no_grad():
        return pipe(prompt, height=h, width=w, num_inference_steps=2, output_type=output_type,
                    generator=torch.Generator().manual_seed(seed), **kw).images


@MAKERS
def test_stock_pipeline_delivers_twice_the_size_with_the_sc_vae(make):
    """What the patch is for: stock diffusers takes the SC-VAE for F8 and delivers 2x the size asked."""
    pipe = make()
    assert pipe.vae_scale_factor == 8 and spatial_factor(pipe.vae) == 16
    assert _sample(pipe, h=64, w=64).shape == (1, 3, 128, 128)


@MAKERS
def test_patched_pipeline_delivers_the_size_asked(make, h=64, w=96):
    pipe = patch_pipeline(make(), tile=2, progress=False)
    assert is_pipeline_patched(pipe) and is_exact_tiling_enabled(pipe.vae)
    assert pipe.vae_scale_factor == 16 and size_unit(pipe) == 32
    pt = _sample(pipe, h=h, w=w)
    assert pt.shape == (1, 3, h, w)
    assert pipe.vae._d4k_exact_tiler.last_plan.n_tiles > 1  # decoded through the tiler
    assert _sample(pipe, h=h, w=w, output_type="np").shape == (1, h, w, 3)
    assert _sample(pipe, h=h, w=w, output_type="pil")[0].size == (w, h)


@MAKERS
def test_tiled_decode_equals_untiled_decode(make):
    pipe = patch_pipeline(make(), exact_decode=False)
    assert not is_exact_tiling_enabled(pipe.vae)
    ref = _sample(pipe, h=128, w=32)
    assert ref.shape == (1, 3, 128, 32) and ref.std() > 0.01  # an image, not a constant
    patch_pipeline(pipe, tile=2, progress=False)              # 8 x 2 latent -> 4 x 1 tiles of 2
    out = _sample(pipe, h=128, w=32)
    assert pipe.vae._d4k_exact_tiler.last_plan.n_tiles == 4
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-4)


@MAKERS
def test_same_seed_same_image(make):
    pipe = patch_pipeline(make(), tile=2, progress=False)
    a, b, c = _sample(pipe, seed=3), _sample(pipe, seed=3), _sample(pipe, seed=4)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert (a - c).abs().max() > 1e-3
    assert (_sample(pipe, seed=3, prompt="a city street") - a).abs().max() > 1e-3  # the prompt matters


@MAKERS
def test_batches_and_images_per_prompt(make):
    """Image k of a batch with one generator per image is the image of a single call with that generator."""
    pipe = patch_pipeline(make(), tile=2, progress=False)
    prompts = ["a red chair", "snowy mountains"]
    with torch.no_grad():
        out = pipe(prompts, num_images_per_prompt=2, height=64, width=64, num_inference_steps=2, output_type="pt",
                   generator=[torch.Generator().manual_seed(10 + k) for k in range(4)]).images
    assert out.shape == (4, 3, 64, 64)
    for k in range(4):
        one = _sample(pipe, prompt=prompts[k // 2], seed=10 + k, h=64, w=64)
        torch.testing.assert_close(out[k:k + 1], one, rtol=0, atol=1e-4)


class _Stop(Exception):
    pass


def _mu(pipe, module, monkeypatch, h, w):
    """The mu a pipeline call hands the scheduler (the call stops there, before denoising)."""
    seen = {}

    def record(scheduler, steps, device, *args, **kwargs):
        seen["mu"] = kwargs.get("mu")
        raise _Stop

    monkeypatch.setattr(module, "retrieve_timesteps", record)
    with pytest.raises(_Stop), torch.no_grad():
        pipe("a red chair", height=h, width=w, num_inference_steps=2)
    return seen["mu"]


def _paper_mu(cfg, tokens):
    """The paper's pipelines: calculate_shift of the packed token count, from the scheduler's config."""
    m = (cfg.max_shift - cfg.base_shift) / (cfg.max_image_seq_len - cfg.base_image_seq_len)
    return tokens * m + cfg.base_shift - m * cfg.base_image_seq_len


SIZES = [(64, 64), (128, 96), (1024, 1024), (2048, 4096), (4096, 2048), (4096, 4096), (4000, 2976)]


@pytest.mark.parametrize("h,w", SIZES)
def test_flux_mu_is_the_papers_at_every_size(h, w, monkeypatch):
    pipe = flux_pipeline()
    cfg = pipe.scheduler.config
    stock = _mu(pipe, pipeline_flux, monkeypatch, h, w)
    patch_pipeline(pipe, progress=False)
    mu = _mu(pipe, pipeline_flux, monkeypatch, h, w)
    # the paper's Flux pipeline: vae_scale_factor 32 (F16 x 2x2 packing), (H/32) x (W/32) tokens
    assert mu == pytest.approx(_paper_mu(cfg, (h // 32) * (w // 32)), rel=1e-12, abs=1e-12)
    assert stock != pytest.approx(mu)  # unpatched: 4x the tokens


def test_flux_default_size_follows_the_vae():
    pipe = patch_pipeline(flux_pipeline(), progress=False)
    assert pipe.default_sample_size * pipe.vae_scale_factor == 2048  # the paper's pipeline: 64 x 32


def test_flux_default_size_mu(monkeypatch):
    pipe = patch_pipeline(flux_pipeline(), progress=False)
    assert _mu(pipe, pipeline_flux, monkeypatch, None, None) == pytest.approx(
        _paper_mu(pipe.scheduler.config, 64 * 64), rel=1e-12)


@pytest.mark.parametrize("h,w", SIZES[:5])
def test_sd3_dynamic_shift_uses_the_real_token_count(h, w, monkeypatch):
    pipe = sd3_pipeline()
    pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(
        pipe.scheduler.config, use_dynamic_shifting=True, base_image_seq_len=256, max_image_seq_len=4096,
        base_shift=0.5, max_shift=1.15)
    patch_pipeline(pipe, progress=False)
    mu = _mu(pipe, pipeline_sd3, monkeypatch, h, w)
    assert mu == pytest.approx(_paper_mu(pipe.scheduler.config, (h // 32) * (w // 32)), rel=1e-12, abs=1e-12)


@MAKERS
def test_a_size_that_is_not_a_multiple_is_refused_with_the_nearest(make, monkeypatch):
    pipe = make()
    if make is flux_pipeline:  # stock Flux resizes silently (a log warning) and goes on
        _mu(pipe, pipeline_flux, monkeypatch, 100, 64)
    patch_pipeline(pipe, progress=False)
    with pytest.raises(ValueError, match=r"height 100 \(nearest valid: 96 or 128\).*multiples of 32"):
        _sample(pipe, h=100, w=64)
    with pytest.raises(ValueError, match=r"height 4100 \(nearest valid: 4096 or 4128\) and width 20 "
                                         r"\(nearest valid: 32\)"):
        check_size(pipe, 4100, 20)
    with pytest.raises(ValueError, match="width must be positive, got 0"):
        check_size(pipe, 64, 0)
    with pytest.raises(TypeError, match="height must be an int"):
        check_size(pipe, 64.0, 64)
    check_size(pipe, 4096, 2048)


def test_stock_f8_vae_is_left_at_f8():
    pipe = patch_pipeline(flux_pipeline(sc_vae=False), tile=4, progress=False)
    assert pipe.vae_scale_factor == 8 and size_unit(pipe) == 16
    assert _sample(pipe, h=48, w=80).shape == (1, 3, 48, 80)


def test_mismatched_vae_and_transformer_are_refused(tmp_path):
    pipe = flux_pipeline()
    torch.manual_seed(0)
    from d4k_kernels.vae import SCAutoencoderKL

    pipe.vae = SCAutoencoderKL(down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                               block_out_channels=[8, 8], latent_channels=4, norm_num_groups=4, stride=2)
    with pytest.raises(ValueError, match=r"4 latent channels.*in_channels=64.*4 x 4 = 16"):
        patch_pipeline(pipe)
    assert not is_pipeline_patched(pipe) and not is_exact_tiling_enabled(pipe.vae)
    sd3 = sd3_pipeline()
    sd3.vae = pipe.vae
    with pytest.raises(ValueError, match=r"4 latent channels.*in_channels=16"):
        patch_pipeline(sd3)
    # an SC-VAE loaded by stock diffusers (a plain AutoencoderKL that ignores stride 2)
    stock = FluxPipeline.from_pretrained(save_pipeline(flux_pipeline(), tmp_path / "flux"))
    assert type(stock.vae) is AutoencoderKL and stock.vae.config["stride"] == 2
    with pytest.raises(ValueError, match="stride 2.*load_vae"):
        patch_pipeline(stock)


def test_other_classes_and_bad_arguments_are_refused():
    pipe = flux_pipeline()
    for target, kwargs, error, message in (
            (torch.nn.Linear(2, 2), {}, TypeError, "got Linear"),
            (pipe, dict(exact_decode="yes"), TypeError, "exact_decode"),
            (pipe, dict(exact_decode=False, tile=4), ValueError, "need exact_decode=True"),
            (pipe, dict(max_memory="lots"), ValueError, "max_memory"),
            (pipe, dict(tile=0), ValueError, "tile"),
            (pipe, dict(progress="no"), TypeError, "progress")):
        with pytest.raises(error, match=message):
            patch_pipeline(target, **kwargs)
    assert not is_pipeline_patched(pipe)
    assert "check_inputs" not in pipe.__dict__ and pipe.vae_scale_factor == 8
    patch_pipeline(pipe, tile=2, progress=False)
    with pytest.raises(ValueError, match="max_memory"):
        patch_pipeline(pipe, max_memory="lots")
    assert is_pipeline_patched(pipe) and pipe.vae._d4k_exact_tiler.tile == 2  # the patch in place stays


@MAKERS
def test_unpatch_restores_everything(make):
    pipe = make()
    enable_exact_tiling(pipe.vae, tile=3, progress=False)  # the user's own setting, kept through the patch
    tiler, processor = pipe.vae._d4k_exact_tiler, pipe.image_processor
    before = (pipe.vae_scale_factor, dict(pipe.vae.__dict__), set(pipe.__dict__))
    patch_pipeline(pipe, tile=2, progress=False)
    patch_pipeline(pipe, max_memory="1GiB", progress=False)  # again: replaces the first patch
    assert pipe.vae._d4k_exact_tiler is not tiler and pipe.image_processor is not processor
    assert unpatch_pipeline(pipe) is pipe and not is_pipeline_patched(pipe)
    assert (pipe.vae_scale_factor, dict(pipe.vae.__dict__), set(pipe.__dict__)) == before
    assert pipe.vae._d4k_exact_tiler is tiler and pipe.image_processor is processor
    assert "check_inputs" not in pipe.__dict__
    unpatch_pipeline(pipe)  # no-op
    disable_exact_tiling(pipe.vae)
    assert _sample(pipe, h=32, w=32).shape == (1, 3, 64, 64)  # stock behaviour again


def test_patch_and_dtype_casts(seed):
    """bf16 / fp16 casts after the patch: the image is delivered at the size asked, in that dtype, and
    the tiled decode equals the untiled one of the same cast pipeline."""
    pipe = patch_pipeline(flux_pipeline(), tile=2, progress=False)
    for dtype in (torch.bfloat16, torch.float16):
        pipe.to(dtype)
        out = _sample(pipe)
        assert out.shape == (1, 3, 64, 96) and out.dtype == dtype and torch.isfinite(out).all()
        patch_pipeline(pipe, exact_decode=False)
        ref = _sample(pipe)
        torch.testing.assert_close(out.float(), ref.float(), rtol=0, atol=2e-2)
        patch_pipeline(pipe, tile=2, progress=False)


def test_model_cpu_offload_hooks_survive_patch_and_unpatch():
    """enable_model_cpu_offload (accelerate hooks; on the CPU here) before and after the patch."""
    pytest.importorskip("accelerate")
    pipe = patch_pipeline(flux_pipeline(), exact_decode=False)
    ref = _sample(pipe)
    pipe.enable_model_cpu_offload(device="cpu")
    patch_pipeline(pipe, tile=2, progress=False)
    hook = pipe.vae._hf_hook
    torch.testing.assert_close(_sample(pipe), ref, rtol=0, atol=1e-4)
    assert pipe.vae._d4k_exact_tiler.last_plan.n_tiles > 1 and hasattr(pipe.vae, "_hf_hook")
    unpatch_pipeline(pipe)
    assert hasattr(pipe.vae, "_hf_hook") and not is_exact_tiling_enabled(pipe.vae)
    patch_pipeline(pipe, tile=2, progress=False)
    pipe.enable_model_cpu_offload(device="cpu")  # offload after the patch: the patch stays
    assert is_exact_tiling_enabled(pipe.vae) and pipe.vae._hf_hook is not hook
    torch.testing.assert_close(_sample(pipe), ref, rtol=0, atol=1e-4)


@pytest.mark.cuda
@MAKERS
def test_patched_pipeline_on_cuda(make):
    """pipe.to("cuda"), then enable_model_cpu_offload(): exact (fp32) and bf16 images of the size asked."""
    pipe = patch_pipeline(make(), exact_decode=False)
    pipe.to("cuda")
    ref = _sample(pipe, h=128, w=96)
    patch_pipeline(pipe, tile=2, progress=False)
    out = _sample(pipe, h=128, w=96)
    assert out.shape == (1, 3, 128, 96) and out.is_cuda
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-4)
    pipe.enable_model_cpu_offload()
    assert is_exact_tiling_enabled(pipe.vae)
    torch.testing.assert_close(_sample(pipe, h=128, w=96).to(ref.device), ref, rtol=0, atol=1e-4)
    bf = patch_pipeline(make(), max_memory="1GiB", progress=False).to("cuda", torch.bfloat16)
    img = _sample(bf, h=128, w=96, output_type="pil")[0]
    assert img.size == (96, 128)


def test_tiny_pipelines_save_and_load(tmp_path):
    """The saved folder is the released layout: stock loading gets a plain AutoencoderKL (see above),
    load_pipeline the SC-VAE, and the loaded pipeline samples the same image."""
    from d4k_kernels.integrations.diffusers import load_pipeline

    for make in (flux_pipeline, sd3_pipeline):
        pipe = make()
        folder = save_pipeline(pipe, tmp_path / make.__name__)
        loaded = load_pipeline(folder)
        assert type(loaded) is type(pipe) and type(loaded.vae) is type(pipe.vae)
        patch_pipeline(pipe, tile=2, progress=False)
        patch_pipeline(loaded, tile=2, progress=False)
        torch.testing.assert_close(_sample(loaded), _sample(pipe), rtol=0, atol=1e-5)
    assert type(tiny_vae(sc=False)) is AutoencoderKL
