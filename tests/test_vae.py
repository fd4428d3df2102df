"""SCAutoencoderKL against diffusers' AutoencoderKL and plainly written float64 references
(docs/ops.md, SC-VAE and exact tiled decoding)."""
import os

import pytest
import torch
import torch.nn.functional as F

diffusers = pytest.importorskip("diffusers")
from diffusers import AutoencoderKL  # noqa: E402
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKLOutput  # noqa: E402
from diffusers.models.autoencoders.vae import DecoderOutput  # noqa: E402

from d4k_kernels.vae import SC_VAE_CONFIG, SCAutoencoderKL  # noqa: E402

# small Flux-like config (no quant convs) and an SD-like one (with quant convs), non-power-of-two widths
SMALL = dict(down_block_types=["DownEncoderBlock2D"] * 3, up_block_types=["UpDecoderBlock2D"] * 3,
             block_out_channels=[8, 12, 12], layers_per_block=1, latent_channels=4, norm_num_groups=4,
             sample_size=64, use_quant_conv=False, use_post_quant_conv=False,
             scaling_factor=0.3611, shift_factor=0.1159)
SMALL_SD = dict(SMALL, block_out_channels=[6, 12], down_block_types=["DownEncoderBlock2D"] * 2,
                up_block_types=["UpDecoderBlock2D"] * 2, norm_num_groups=3, use_quant_conv=True,
                use_post_quant_conv=True, scaling_factor=0.18215, shift_factor=None)


def _perturb(model, scale=0.05):
    """Random weights away from diffusers' init (GroupNorm affines, biases) so that every term matters."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * scale)
    return model.eval()


def _pair(cfg, dtype=torch.float32, **sc_kw):
    ref = _perturb(AutoencoderKL(**cfg)).to(dtype)
    sc = SCAutoencoderKL(**cfg, **sc_kw).to(dtype).eval()
    sc.load_state_dict(ref.state_dict())
    return ref, sc


@pytest.mark.parametrize("cfg", [SMALL, SMALL_SD], ids=["flux-like", "sd-like"])
def test_stride1_equals_diffusers(seed, cfg):
    ref, sc = _pair(cfg, stride=1)
    assert set(sc.state_dict()) == set(ref.state_dict())
    x = torch.randn(2, 3, 24, 40)
    with torch.no_grad():
        e_ref, e_sc = ref.encode(x), sc.encode(x)
        assert isinstance(e_sc, AutoencoderKLOutput)
        torch.testing.assert_close(e_sc.latent_dist.mean, e_ref.latent_dist.mean, rtol=0, atol=0)
        z = torch.randn(2, cfg["latent_channels"], 5, 7)
        d_ref, d_sc = ref.decode(z), sc.decode(z)
        assert isinstance(d_sc, DecoderOutput)
        torch.testing.assert_close(d_sc.sample, d_ref.sample, rtol=0, atol=0)
        (t,) = sc.decode(z, return_dict=False)
        torch.testing.assert_close(t, d_ref.sample, rtol=0, atol=0)
        torch.testing.assert_close(sc(x).sample, ref(x).sample, rtol=0, atol=0)


def _flux_like_trunk(vae, z):
    """Decoder of diffusers' AutoencoderKL up to (and including) the last up block."""
    d = vae.decoder
    if vae.post_quant_conv is not None:
        z = vae.post_quant_conv(z)
    h = d.mid_block(d.conv_in(z), None)
    for b in d.up_blocks:
        h = b(h, None)
    return h


def _partitioned_repo_style(a, conv):
    """The released code's formulation (even sizes): 2x2 partitions of the activated low-res map with a
    1-pixel halo, one-sided zero padding, nearest x2, conv (padding 1), crop. Written independently."""
    h, w = a.shape[-2:]
    ph, pw = h // 2, w // 2
    rows = []
    for i in (0, ph):
        row = []
        for j in (0, pw):
            p = a[..., max(i - 1, 0):min(i + ph + 1, h), max(j - 1, 0):min(j + pw + 1, w)]
            p = F.pad(p, (1 if j == 0 else 0, 0 if j == 0 else 1, 1 if i == 0 else 0, 0 if i == 0 else 1))
            p = F.interpolate(p, scale_factor=2, mode="nearest")
            p = conv(p)[..., 1:2 * ph + 1, 1:2 * pw + 1]
            row.append(p)
        rows.append(torch.cat(row, dim=-1))
    return torch.cat(rows, dim=-2)


@pytest.mark.parametrize("hw", [(4, 6), (5, 3)])
def test_stride2_partitioned_tail_float64(seed, hw):
    ref, sc = _pair(SMALL, torch.float64, stride=2)
    z = torch.randn(2, 4, *hw, dtype=torch.float64)
    with torch.no_grad():
        out = sc.decode(z).sample
        h = _flux_like_trunk(ref, z)
        a = F.silu(F.group_norm(h, 4, ref.decoder.conv_norm_out.weight, ref.decoder.conv_norm_out.bias, 1e-6))
        u = F.interpolate(a, scale_factor=2, mode="nearest")
        w, b = ref.decoder.conv_out.weight, ref.decoder.conv_out.bias
        want = F.conv2d(F.pad(u, (2, 0, 2, 0)), w, b)  # pad left 2 / top 2, valid conv (docs/ops.md)
        assert out.shape == (2, 3, 8 * hw[0], 8 * hw[1])
        torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)
        # = the standard up-then-conv shifted one pixel down/right
        std = F.conv2d(u, w, b, padding=1)
        torch.testing.assert_close(out[..., 1:, 1:], std[..., :-1, :-1], rtol=1e-12, atol=1e-12)
        assert (out[..., 0, :] - std[..., 0, :]).abs().max() > 1e-3  # not merely the plain tail
        if hw[0] % 2 == 0 and hw[1] % 2 == 0 and (hw[0] // 2) % 2 == 0:
            rep = _partitioned_repo_style(a, ref.decoder.conv_out)
            torch.testing.assert_close(out, rep, rtol=1e-12, atol=1e-12)


def test_stride2_plain_tail_float64(seed):
    ref, sc = _pair(SMALL, torch.float64, stride=2, partitioned=False)
    assert sc.partitioned is False and sc.config.partitioned is False
    z = torch.randn(1, 4, 3, 5, dtype=torch.float64)
    with torch.no_grad():
        out = sc.decode(z).sample
        h = _flux_like_trunk(ref, z)
        g = F.group_norm(h, 4, ref.decoder.conv_norm_out.weight, ref.decoder.conv_norm_out.bias, 1e-6)
        u = F.silu(F.interpolate(g, scale_factor=2, mode="nearest"))  # GN -> up -> SiLU -> conv
        want = F.conv2d(u, ref.decoder.conv_out.weight, ref.decoder.conv_out.bias, padding=1)
        torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)
        sc.partitioned = True
        assert (sc.decode(z).sample - out).abs().max() > 1e-3


def test_stride2_encoder_float64(seed):
    ref, sc = _pair(SMALL, torch.float64, stride=2)
    x = torch.randn(2, 3, 32, 48, dtype=torch.float64)
    with torch.no_grad():
        post = sc.encode(x).latent_dist
        e = ref.encoder
        h = F.conv2d(x, e.conv_in.weight, e.conv_in.bias, stride=2, padding=1)
        for blk in e.down_blocks:
            h = blk(h)
        h = e.conv_out(F.silu(e.conv_norm_out(e.mid_block(h))))
    assert post.mean.shape == (2, 4, 4, 6)  # 3 levels (x4) times stride 2: 32/8, 48/8
    torch.testing.assert_close(post.mean, h[:, :4], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(post.logvar, h[:, 4:].clamp(-30.0, 20.0), rtol=1e-12, atol=1e-12)
    assert sc.spatial_factor == 8 and sc.stride == 2


def test_bf16_runs_and_is_close(seed):
    ref32, sc32 = _pair(SMALL, stride=2)
    sc16 = SCAutoencoderKL(**SMALL, stride=2).to(torch.bfloat16).eval()
    sc16.load_state_dict(sc32.state_dict())
    z = torch.randn(1, 4, 4, 4)
    with torch.no_grad():
        a = sc32.decode(z).sample
        b = sc16.decode(z.bfloat16()).sample
    assert b.dtype == torch.bfloat16 and b.shape == a.shape
    assert (b.float() - a).abs().max() < 0.1 * a.abs().max()


def test_from_pretrained_and_single_file(tmp_path, seed):
    ref, sc = _pair(SMALL, stride=2)
    sc.save_pretrained(tmp_path / "sc")
    loaded = SCAutoencoderKL.from_pretrained(tmp_path / "sc")
    assert loaded.config.stride == 2 and loaded.config.partitioned is True
    assert loaded.config.scaling_factor == pytest.approx(0.3611)
    assert loaded.config.shift_factor == pytest.approx(0.1159)
    z = torch.randn(1, 4, 3, 4)
    with torch.no_grad():
        want = sc.decode(z).sample
        torch.testing.assert_close(loaded.decode(z).sample, want, rtol=0, atol=0)
    # stock diffusers ignores `stride` and decodes at F8: the bug this class exists for
    stock = AutoencoderKL.from_pretrained(tmp_path / "sc")
    with torch.no_grad():
        assert stock.decode(z).sample.shape[-1] == want.shape[-1] // 2
    # single safetensors file with diffusers keys, config beside it / given / overridden
    from safetensors.torch import save_file

    f = tmp_path / "sc" / "vae.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(f))
    one = SCAutoencoderKL.from_single_file(f)
    with torch.no_grad():
        torch.testing.assert_close(one.decode(z).sample, want, rtol=0, atol=0)
    plain = SCAutoencoderKL.from_single_file(f, config=tmp_path / "sc", partitioned=False)
    assert plain.partitioned is False
    d = tmp_path / "bare"
    d.mkdir()
    g = d / "w.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(g))
    with pytest.raises(ValueError, match="does not match the config"):
        SCAutoencoderKL.from_single_file(g)  # default config = the full-size SC-VAE: shapes differ
    default = SC_VAE_CONFIG
    assert default["stride"] == 2 and default["block_out_channels"] == [128, 256, 512, 512]


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="stride.*3"):
        SCAutoencoderKL(**SMALL, stride=3)
    with pytest.raises(TypeError, match="partitioned"):
        SCAutoencoderKL(**SMALL, stride=2, partitioned="yes")
    with pytest.raises(FileNotFoundError, match="nope"):
        SCAutoencoderKL.from_single_file(tmp_path / "nope.safetensors")
    from safetensors.torch import save_file

    f = tmp_path / "x.safetensors"
    save_file({"foo.weight": torch.zeros(2)}, str(f))
    with pytest.raises(ValueError, match="does not look like an AutoencoderKL"):
        SCAutoencoderKL.from_single_file(f, config=dict(SMALL, stride=2))
    sc = SCAutoencoderKL(**SMALL, stride=2)
    with pytest.raises(TypeError, match="partitioned"):
        sc.partitioned = 1
    assert os.path.basename(__file__) == "test_vae.py"
