"""diffusers integration: exact tiling patched into a loaded VAE; the SC-VAE-aware loader."""
import inspect
import json

import pytest
import torch

pytest.importorskip("diffusers")
from diffusers import AutoencoderKL  # noqa: E402
from diffusers.image_processor import VaeImageProcessor  # noqa: E402
from diffusers.models.autoencoders.vae import DecoderOutput  # noqa: E402

from d4k_kernels.integrations.diffusers import (  # noqa: E402
    disable_exact_tiling,
    enable_exact_tiling,
    is_exact_tiling_enabled,
    load_vae,
)
from d4k_kernels.vae import SCAutoencoderKL  # noqa: E402

CFG = dict(down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
           block_out_channels=[6, 12], layers_per_block=1, latent_channels=4, norm_num_groups=3,
           sample_size=32, use_quant_conv=False, use_post_quant_conv=False,
           scaling_factor=0.3611, shift_factor=0.1159)


def _vae(cls=AutoencoderKL, **kw):
    m = cls(**CFG, **kw)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m.eval()


def _ok(a, b):
    return (a - b).abs().max().item() <= 1e-4 * max(1.0, b.abs().max().item())


def test_enable_keeps_signature_and_return_types(seed):
    vae = _vae()
    z = torch.randn(2, 4, 18, 14)
    with torch.no_grad():
        ref = vae.decode(z).sample
    sig = inspect.signature(vae.decode)
    assert enable_exact_tiling(vae, tile=5, progress=False) is vae
    assert is_exact_tiling_enabled(vae)
    assert inspect.signature(vae.decode) == sig
    with torch.no_grad():
        out = vae.decode(z)
        assert isinstance(out, DecoderOutput)
        assert _ok(out.sample, ref)
        t = vae.decode(z, return_dict=False)
        assert isinstance(t, tuple) and len(t) == 1 and _ok(t[0], ref)
        vae.enable_slicing()  # diffusers' slicing still goes through the patched _decode
        assert _ok(vae.decode(z).sample, ref)
        vae.disable_slicing()
    assert vae.decoder is not None and getattr(vae, "_d4k_exact_tiler").last_plan.n_tiles == 12


def test_pipeline_style_decode_and_precedence_over_diffusers_tiling(seed):
    """What FluxPipeline / StableDiffusion3Pipeline do after denoising."""
    vae = _vae()
    latents = torch.randn(1, 4, 16, 16)
    proc = VaeImageProcessor(vae_scale_factor=2)
    with torch.no_grad():
        want = vae.decode(latents / vae.config.scaling_factor + vae.config.shift_factor, return_dict=False)[0]
        vae.enable_tiling()
        vae.tile_sample_min_size, vae.tile_latent_min_size = 16, 8
        inexact = vae.decode(latents / vae.config.scaling_factor + vae.config.shift_factor, return_dict=False)[0]
        assert not _ok(inexact, want)  # diffusers' tiling changes the image
        enable_exact_tiling(vae, tile=6, progress=False)  # exact tiling wins over enable_tiling()
        image = vae.decode(latents / vae.config.scaling_factor + vae.config.shift_factor, return_dict=False)[0]
    assert _ok(image, want)
    pil = proc.postprocess(image, output_type="pil")
    assert pil[0].size == (32, 32)
    disable_exact_tiling(vae)
    assert not is_exact_tiling_enabled(vae)
    with torch.no_grad():
        again = vae.decode(latents / vae.config.scaling_factor + vae.config.shift_factor, return_dict=False)[0]
    torch.testing.assert_close(again, inexact)  # back to diffusers' own (inexact) tiling
    disable_exact_tiling(vae)  # no-op


def test_sc_vae_through_the_patch(seed):
    vae = _vae(SCAutoencoderKL, stride=2)
    z = torch.randn(1, 4, 10, 9)
    with torch.no_grad():
        ref = vae.decode(z).sample
        enable_exact_tiling(vae, tile=4, progress=False)
        out = vae.decode(z).sample
    assert out.shape == (1, 3, 40, 36) and _ok(out, ref)


def test_decode_plans_once(seed, monkeypatch):
    """The patched decode plans once per call and hands the plan to the tiler (no second planning)."""
    from d4k_kernels.vae.tiling import decoder as decoder_mod

    vae = _vae()
    z = torch.randn(1, 4, 9, 8)
    calls = []
    real = decoder_mod.make_plan
    monkeypatch.setattr(decoder_mod, "make_plan", lambda *a, **k: calls.append(1) or real(*a, **k))
    enable_exact_tiling(vae, tile=4, progress=False)
    with torch.no_grad():
        ref = type(vae)._decode(vae, z).sample
        out = vae.decode(z).sample
    assert len(calls) == 1 and vae._d4k_exact_tiler.last_plan.n_tiles == 6
    assert _ok(out, ref)


def test_single_tile_uses_plain_decode(seed):
    vae = _vae()
    z = torch.randn(1, 4, 6, 6)
    with torch.no_grad():
        ref = vae.decode(z).sample
        enable_exact_tiling(vae, max_memory="4GiB", progress=False)
        out = vae.decode(z).sample
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_load_vae(tmp_path, seed):
    sc = _vae(SCAutoencoderKL, stride=2)
    sc.save_pretrained(tmp_path / "pipe" / "vae")
    plain = _vae()
    plain.save_pretrained(tmp_path / "plain")
    z = torch.randn(1, 4, 3, 5)
    a = load_vae(tmp_path / "pipe", subfolder="vae")
    b = load_vae(tmp_path / "pipe" / "vae")
    assert type(a) is SCAutoencoderKL and type(b) is SCAutoencoderKL
    with torch.no_grad():
        want = sc.decode(z).sample
        assert want.shape == (1, 3, 12, 20)  # F4 x stride 2 with this 2-level config
        torch.testing.assert_close(a.decode(z).sample, want, rtol=0, atol=0)
        torch.testing.assert_close(b.decode(z).sample, want, rtol=0, atol=0)
    c = load_vae(tmp_path / "plain")
    assert type(c) is AutoencoderKL
    with torch.no_grad():
        torch.testing.assert_close(c.decode(z).sample, plain.decode(z).sample, rtol=0, atol=0)
    # a single safetensors file: config beside it, or given
    from safetensors.torch import save_file

    f = tmp_path / "pipe" / "vae" / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in sc.state_dict().items()}, str(f))
    d = load_vae(f)
    assert type(d) is SCAutoencoderKL
    g = tmp_path / "lonely.safetensors"
    save_file({k: v.contiguous() for k, v in plain.state_dict().items()}, str(g))
    e = load_vae(g, config=json.loads((tmp_path / "plain" / "config.json").read_text()), torch_dtype=torch.float64)
    assert type(e) is AutoencoderKL and e.dtype == torch.float64
    with torch.no_grad():
        torch.testing.assert_close(d.decode(z).sample, want, rtol=0, atol=0)
    with pytest.raises(ValueError, match="config"):
        load_vae(g)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_vae(tmp_path / "nowhere")


def test_bad_arguments():
    with pytest.raises(TypeError, match="Linear"):
        enable_exact_tiling(torch.nn.Linear(2, 2))
    vae = _vae()
    with pytest.raises(ValueError, match="max_memory"):
        enable_exact_tiling(vae, max_memory="much")
    with pytest.raises(ValueError, match="tile"):
        enable_exact_tiling(vae, tile=-1)
    assert not is_exact_tiling_enabled(vae)


def test_load_pipeline(tmp_path):
    """load_pipeline: the folder's VAE through load_vae (the SC-VAE class), another transformer from a
    folder (or its transformer/ subfolder), a VAE module given, and clear errors."""
    pytest.importorskip("transformers")
    from tiny_pipelines import flux_pipeline, save_pipeline

    from d4k_kernels.integrations.diffusers import load_pipeline

    pipe = flux_pipeline()
    folder = save_pipeline(pipe, tmp_path / "flux")
    loaded = load_pipeline(folder, torch_dtype=torch.float64)
    assert type(loaded.vae) is SCAutoencoderKL and loaded.vae.dtype == torch.float64
    assert loaded.transformer.dtype == torch.float64
    other = flux_pipeline(seed=1).transformer
    other.save_pretrained(tmp_path / "ft" / "transformer")
    for where in (tmp_path / "ft", tmp_path / "ft" / "transformer"):
        got = load_pipeline(folder, transformer=where, vae=pipe.vae).transformer
        assert all(torch.equal(a, b) for a, b in zip(got.state_dict().values(), other.state_dict().values()))
    assert load_pipeline(folder, vae=pipe.vae).vae is pipe.vae
    with pytest.raises(FileNotFoundError, match="no such pipeline folder"):
        load_pipeline(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="no model_index.json"):
        load_pipeline(tmp_path / "ft")
    with pytest.raises(FileNotFoundError, match="no transformer config.json"):
        load_pipeline(folder, transformer=tmp_path)
    index = json.loads((tmp_path / "flux" / "model_index.json").read_text())
    (tmp_path / "sdxl").mkdir()
    (tmp_path / "sdxl" / "model_index.json").write_text(json.dumps(dict(index, _class_name="StableDiffusionXLPipeline")))
    with pytest.raises(ValueError, match="StableDiffusionXLPipeline; supported: FluxPipeline, StableDiffusion3Pipeline"):
        load_pipeline(tmp_path / "sdxl")
    (tmp_path / "novae").mkdir()
    (tmp_path / "novae" / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(FileNotFoundError, match="has no vae/ folder"):
        load_pipeline(tmp_path / "novae")


def test_spatial_factor():
    from d4k_kernels.integrations.diffusers import spatial_factor

    assert spatial_factor(_vae()) == 2 and spatial_factor(_vae(SCAutoencoderKL, stride=2)) == 4
    plain = _vae()
    plain.register_to_config(stride=2)  # an SC-VAE config read by the plain class
    with pytest.raises(ValueError, match="stride 2.*plain AutoencoderKL.*load_vae"):
        spatial_factor(plain)
    with pytest.raises(TypeError, match="Linear"):
        spatial_factor(torch.nn.Linear(2, 2))
