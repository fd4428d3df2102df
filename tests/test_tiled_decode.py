"""Exact tiled decoding == the untiled diffusers decode (docs/ops.md, SC-VAE and exact tiled decoding),
random weights, CPU."""
import dataclasses
import math

import pytest
import torch

pytest.importorskip("diffusers")
from diffusers import AutoencoderKL  # noqa: E402

from d4k_kernels.vae import FLUX_VAE_CONFIG, SCAutoencoderKL, plan_tiles, required_halo, tiled_decode  # noqa: E402
from d4k_kernels.vae import ExactTiledDecoder, parse_memory  # noqa: E402
from d4k_kernels.vae.tiling import planner  # noqa: E402

# 2 up levels, 2 resnets per up block: halo 7 latent px, so a 24x20 latent has interior tiles
TWO = dict(down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
           block_out_channels=[6, 12], layers_per_block=1, latent_channels=4, norm_num_groups=3,
           sample_size=32, use_quant_conv=True, use_post_quant_conv=True)
# 3 up levels, channel change in the up path (conv_shortcut), no quant convs (Flux-like)
THREE = dict(down_block_types=["DownEncoderBlock2D"] * 3, up_block_types=["UpDecoderBlock2D"] * 3,
             block_out_channels=[4, 8, 8], layers_per_block=1, latent_channels=4, norm_num_groups=2,
             sample_size=64, use_quant_conv=False, use_post_quant_conv=False)


def _vae(cfg, cls=AutoencoderKL, dtype=torch.float32, **kw):
    torch.manual_seed(torch.initial_seed() % 1000)
    m = cls(**cfg, **kw)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m.to(dtype).eval()


def _untiled(vae, z):
    with torch.no_grad():
        return vae.decode(z).sample


def _cases_covered(plan, h, w):
    """Which halo situations the plan's tiles hit: a corner tile, an edge tile, an interior tile whose
    halo is clipped nowhere, and a last tile smaller than the others."""
    H = plan.halo
    kinds = set()
    for (y0, y1, x0, x1) in plan.tiles:
        at = [y0 == 0, y1 == h, x0 == 0, x1 == w]
        if sum(at) >= 2:
            kinds.add("corner")
        elif sum(at) == 1:
            kinds.add("edge")
        elif y0 - H >= 0 and y1 + H <= h and x0 - H >= 0 and x1 + H <= w:
            kinds.add("interior")
        if (y1 - y0) < plan.tile or (x1 - x0) < plan.tile:
            kinds.add("ragged")
    return kinds


@pytest.mark.parametrize("tile", [5, 24])
def test_tiled_equals_untiled_fp32(seed, tile):
    vae = _vae(TWO)
    assert required_halo(vae.decoder) == 7
    z = torch.randn(2, 4, 24, 22)
    ref = _untiled(vae, z)
    dec = ExactTiledDecoder(vae.decoder, vae.post_quant_conv, tile=tile, progress=False)
    out = dec(z)
    assert out.shape == ref.shape == (2, 3, 48, 44)
    assert (out - ref).abs().max().item() <= 1e-4 * max(1.0, ref.abs().max().item())
    if tile == 5:  # 5x5 tiles: corners, edges, interior tiles, ragged last row/column
        assert dec.last_plan.n_tiles == 25
        assert _cases_covered(dec.last_plan, 24, 22) == {"corner", "edge", "interior", "ragged"}
    if tile == 24:
        assert dec.last_plan.n_tiles == 1


def test_tiled_three_levels_shortcut_and_bigger_halo(seed):
    vae = _vae(THREE)
    assert required_halo(vae.decoder) == 8
    z = torch.randn(1, 4, 13, 11).transpose(-1, -2)  # non-contiguous; 11 x 13: ragged last tiles
    assert not z.is_contiguous()
    ref = _untiled(vae, z.contiguous())
    for tile, halo in ((4, None), (6, 11)):
        out = tiled_decode(vae, z, tile=tile, halo=halo, progress=False)
        assert (out - ref).abs().max().item() <= 1e-4 * max(1.0, ref.abs().max().item())


@pytest.mark.parametrize("partitioned", [True, False])
def test_tiled_sc_vae(seed, partitioned):
    vae = _vae(TWO, SCAutoencoderKL, stride=2, partitioned=partitioned)
    z = torch.randn(1, 4, 9, 17)
    ref = _untiled(vae, z)
    assert ref.shape == (1, 3, 36, 68)
    out = tiled_decode(vae, z, tile=4, progress=False)
    assert (out - ref).abs().max().item() <= 1e-4 * max(1.0, ref.abs().max().item())


def test_halo_too_small_is_caught(seed):
    """The test above can fail: with less context than the receptive field the decode is wrong
    (or refuses to run when a window cannot cover its core)."""
    vae = _vae(TWO)
    z = torch.randn(1, 4, 20, 20)
    ref = _untiled(vae, z)
    need = required_halo(vae.decoder)
    dec = ExactTiledDecoder(vae.decoder, vae.post_quant_conv, tile=5, progress=False)
    dec.structure = dataclasses.replace(dec.structure, halo=need - 3)  # what the planner reads
    try:
        out = dec(z)
    except RuntimeError as e:
        assert "halo" in str(e)
    else:
        assert (out - ref).abs().max().item() > 1e-3


def _psnr(a, b):
    a, b = a.double(), b.double()
    rng = (b.max() - b.min()).item()
    mse = ((a - b) ** 2).mean().item()
    return float("inf") if mse == 0 else 10 * math.log10(rng * rng / mse)


def test_tiled_bf16_psnr(seed):
    vae = _vae(THREE, dtype=torch.bfloat16)
    z = torch.randn(1, 4, 12, 10, dtype=torch.bfloat16)
    ref = _untiled(vae, z)
    out = tiled_decode(vae, z, tile=5, progress=False)
    assert out.dtype == torch.bfloat16
    assert _psnr(out, ref) >= 60.0


def test_full_flux_config_small_latent(seed):
    """The real Flux decoder layout (512 channels, 32 groups, 13-pixel halo, mid-block attention)."""
    vae = _vae(FLUX_VAE_CONFIG)
    assert required_halo(vae.decoder) == 13
    z = torch.randn(1, 16, 16, 8)
    ref = _untiled(vae, z)
    dec = ExactTiledDecoder(vae.decoder, None, tile=8, progress=False)
    out = dec(z)
    assert dec.last_plan.n_tiles == 2
    assert out.shape == (1, 3, 128, 64)
    assert (out - ref).abs().max().item() <= 1e-4 * max(1.0, ref.abs().max().item())


def test_diffusers_tiling_differs_ours_does_not(seed):
    vae = _vae(THREE)
    z = torch.randn(1, 4, 16, 16)
    ref = _untiled(vae, z)
    vae.enable_tiling()
    vae.tile_sample_min_size = 32
    vae.tile_latent_min_size = 8  # 8-latent tiles, 6-latent stride: diffusers' per-tile decoder
    theirs = _untiled(vae, z)
    vae.disable_tiling()
    ours = tiled_decode(vae, z, tile=8, progress=False)
    assert theirs.shape == ref.shape
    assert (theirs - ref).abs().max().item() > 1e-2
    assert (ours - ref).abs().max().item() <= 1e-4 * max(1.0, ref.abs().max().item())


def test_offload_path_and_memory_plan(seed):
    vae = _vae(TWO)
    z = torch.randn(1, 4, 16, 16)
    ref = _untiled(vae, z)
    dec = ExactTiledDecoder(vae.decoder, vae.post_quant_conv, tile=4, max_memory=1, progress=False)
    out = dec(z)
    assert dec.last_offloaded_bytes > 0  # state parked off the device copy (budget 1 byte)
    assert (out - ref).abs().max().item() <= 1e-4 * max(1.0, ref.abs().max().item())
    # the tile follows the budget; the whole latent when it fits
    flux = AutoencoderKL(**dict(FLUX_VAE_CONFIG, block_out_channels=[128, 256, 512, 512]))
    shp = (1, 16, 512, 512)  # a 4096^2 Flux decode
    small = plan_tiles(flux.decoder, shp, torch.bfloat16, max_memory="8GiB")
    big = plan_tiles(flux.decoder, shp, torch.bfloat16, max_memory="64GiB")
    assert 8 <= small.tile < big.tile
    assert small.n_tiles > big.n_tiles >= 1
    assert small.est_fixed + small.est_tile <= parse_memory("8GiB")
    # parked state may use what the mid-block's temporaries needed: they are freed before the tiles run
    assert small.est_resident < small.est_fixed
    assert small.state_budget == parse_memory("8GiB") - small.est_resident - small.est_tile
    with pytest.warns(UserWarning, match="too small"):
        plan_tiles(flux.decoder, shp, torch.bfloat16, max_memory="100MiB")
    tiny = plan_tiles(vae.decoder, (1, 4, 16, 16), torch.float32, max_memory="1GiB")
    assert tiny.n_tiles == 1


def test_measure_memory_changes_nothing_and_is_cuda_only(seed):
    """measure_memory=True decodes the same image; its two figures exist only on CUDA (the CPU has no
    allocator statistics), so on the CPU they stay None instead of reading as 0."""
    vae = _vae(TWO)
    z = torch.randn(1, 4, 16, 12)
    plain = ExactTiledDecoder(vae.decoder, vae.post_quant_conv, tile=5, progress=False)(z)
    dec = ExactTiledDecoder(vae.decoder, vae.post_quant_conv, tile=5, progress=False, measure_memory=True)
    assert torch.equal(dec(z), plain)
    assert dec.last_fixed_peak_bytes is None and dec.last_step_peak_bytes is None


def test_progress_bar(seed, capsys):
    vae = _vae(TWO)
    z = torch.randn(1, 4, 8, 8)
    tiled_decode(vae, z, tile=4, progress=True)
    assert "exact tiled decode" in capsys.readouterr().err


def test_parse_memory():
    assert parse_memory("8GiB") == 8 * 2**30
    assert parse_memory("512 MB") == 512 * 10**6
    assert parse_memory(1234) == 1234
    assert parse_memory(None) is None
    for bad in ("lots", "-1GiB", 0, True, "8 parsecs"):
        with pytest.raises((ValueError, TypeError), match="max_memory"):
            parse_memory(bad)


def test_bad_arguments(seed):
    vae = _vae(TWO)
    z = torch.randn(1, 4, 8, 8)
    with pytest.raises(ValueError, match="tile"):
        tiled_decode(vae, z, tile=0)
    with pytest.raises(ValueError, match="halo"):
        tiled_decode(vae, z, halo=2)
    with pytest.raises(ValueError, match="max_memory"):
        tiled_decode(vae, z, max_memory="lots")
    with pytest.raises(ValueError, match="channels"):
        tiled_decode(vae, torch.randn(1, 5, 8, 8))
    with pytest.raises(ValueError, match="dimensions"):
        tiled_decode(vae, torch.randn(4, 8, 8))
    with pytest.raises(ValueError, match="conv_norm_out|not a diffusers"):
        tiled_decode(torch.nn.Linear(2, 2), z)
    with pytest.raises(TypeError, match="use_kernels must be True, False or None, got 'yes'"):
        tiled_decode(vae, z, use_kernels="yes")


def test_latent_checks_name_the_value(seed):
    """A latent the decoder cannot take is refused up front, with its shape / dtype / device and what
    was expected (not torch's error from deep inside a conv)."""
    vae = _vae(TWO)
    dec = ExactTiledDecoder(vae.decoder, vae.post_quant_conv, tile=4, progress=False)
    z = torch.randn(1, 4, 8, 8)
    with pytest.raises(ValueError, match=r"z must have 4 dimensions, got shape \(4, 8, 8\)"):
        dec(z[0])
    with pytest.raises(ValueError, match=r"z has 5 channels but the decoder expects 4"):
        dec(torch.randn(1, 5, 8, 8))
    with pytest.raises(TypeError, match="z has dtype int64; supported: float32"):
        dec(z.long())
    with pytest.raises(TypeError, match="z has dtype float64 but the decoder's weights are float32"):
        dec(z.double())
    with pytest.raises(ValueError, match=r"z must not be empty, got shape \(1, 4, 0, 8\)"):
        dec(z[..., :0, :])
    with pytest.raises(ValueError, match="z is on meta but the decoder's weights are on cpu"):
        dec(z.to("meta"))
    with pytest.raises(TypeError, match="z must be a torch.Tensor, got ndarray"):
        dec(z.numpy())
    with pytest.raises(ValueError, match="z has 5 channels"):  # the planner checks the latent too
        dec.plan(torch.randn(1, 5, 8, 8))


def test_plan_is_made_once_and_handed_on(seed, monkeypatch):
    """max_memory is parsed once (bytes); a plan from .plan(z) decodes without planning again, the same
    image; a plan for another latent is refused."""
    from d4k_kernels.vae.tiling import decoder as decoder_mod

    vae = _vae(TWO)
    z = torch.randn(1, 4, 10, 9)
    dec = ExactTiledDecoder(vae.decoder, vae.post_quant_conv, tile=4, max_memory="1GiB", progress=False)
    assert dec.max_memory == 2**30
    calls = []
    real = decoder_mod.make_plan
    monkeypatch.setattr(decoder_mod, "make_plan", lambda *a, **k: calls.append(1) or real(*a, **k))
    plan = dec.plan(z)
    assert plan.z_shape == (1, 4, 10, 9) and plan.n_tiles == 9 and plan.budget == 2**30
    out = dec(z, plan=plan)
    assert len(calls) == 1 and dec.last_plan is plan
    assert torch.equal(out, dec(z)) and len(calls) == 2
    with pytest.raises(ValueError, match=r"plan is for a \(1, 4, 10, 9\) latent with halo 7, but z has shape"):
        dec(torch.randn(1, 4, 10, 10), plan=plan)
    with pytest.raises(TypeError, match="plan must be a TilePlan"):
        dec(z, plan=(4, 7))


def test_tiled_with_d4k_kernels(seed):
    """The same exact decode through the d4k GroupNorm / upconv kernels (interpreter on the CPU)."""
    from d4k_kernels import backend

    if not (backend.HAS_TRITON and backend.interpreter_enabled()):
        pytest.skip("needs the Triton interpreter")
    vae = _vae(TWO, SCAutoencoderKL, stride=2)
    z = torch.randn(1, 4, 9, 7)
    ref = _untiled(vae, z)
    with backend.prefer("triton"):
        out = tiled_decode(vae, z, tile=4, progress=False, use_kernels=True)
    assert (out - ref).abs().max().item() <= 1e-4 * max(1.0, ref.abs().max().item())


def test_conv_macs_counts_the_real_convs(seed):
    """conv_macs (the halo-recompute overhead figure) against forward hooks on the untiled decode."""
    from d4k_kernels.vae import conv_macs

    vae = _vae(THREE)
    z = torch.randn(2, 4, 7, 9)
    macs = []

    def hook(mod, inp, out):
        k = mod.kernel_size[0] * mod.kernel_size[1]
        macs.append(out.shape[0] * out.shape[2] * out.shape[3] * mod.in_channels * mod.out_channels * k)

    convs = [m for m in vae.decoder.up_blocks.modules() if isinstance(m, torch.nn.Conv2d)] + [vae.decoder.conv_out]
    hs = [m.register_forward_hook(hook) for m in convs]
    _untiled(vae, z)
    for h in hs:
        h.remove()
    assert conv_macs(vae.decoder, tuple(z.shape)) == sum(macs)
    assert conv_macs(vae.decoder, tuple(z.shape), tile=3) > sum(macs)


def test_waiting_tile_holds_no_tensor_outside_its_live_state(seed):
    """While a tile waits at a GroupNorm, its only big tensors are the ones handed to the driver
    (which may move them to the host): nothing else may pin device memory in the generator frame."""
    from d4k_kernels.vae.tiling.ops import TORCH_OPS
    from d4k_kernels.vae.tiling.program import decoder_program
    from d4k_kernels.vae.tiling.windows import Tile

    for cfg, kw in ((THREE, {}), (TWO, {"stride": 2})):
        vae = _vae(cfg, SCAutoencoderKL, **kw)
        dec = vae.decoder
        with torch.no_grad():
            x = dec.mid_block(dec.conv_in(torch.randn(1, 4, 6, 5)), None)
            g = decoder_program(dec, TORCH_OPS, Tile(x, 0, 6, 0, 5, 6, 5, (0, 6, 0, 5)))
            del x
            req, n_yields = next(g), 0
            while True:
                n_yields += 1
                saved = [tl.t for tl in req.live]
                for tl in req.live:
                    tl.t = None  # what parking does
                live_ids = {id(tl) for tl in req.live}
                for name, v in g.gi_frame.f_locals.items():
                    if isinstance(v, torch.Tensor):
                        assert v.numel() <= 64, f"{name} {tuple(v.shape)} stays in the frame"
                    if isinstance(v, Tile) and id(v) not in live_ids:
                        assert v.t is None, f"tile {name} keeps a tensor"
                for tl, t in zip(req.live, saved):
                    tl.t = t
                stats = TORCH_OPS.finalize(req.stats, req.count, req.norm.eps)
                try:
                    req = g.send(stats)
                except StopIteration:
                    break
        assert n_yields == 2 * sum(len(b.resnets) for b in dec.up_blocks) + 1


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_offload_and_kernels(seed, dtype, no_tf32):
    """On a GPU: state parked in pinned host memory on the side stream (budget forces it), and the
    d4k kernels when importable; still the untiled decode. bf16: every bf16 decode differs from the
    exact (fp32) one by its own rounding, and the tiled one must not be further from it than the
    untiled one is (a small config like this one has no averaging: its PSNR against the untiled bf16
    decode was 58 dB on an H200; the 60 dB target is checked on the Flux config in the VAE bench)."""
    vae = _vae(TWO, SCAutoencoderKL, stride=2).to("cuda")
    vae = torch.nn.Module.to(vae, dtype=dtype)
    z = torch.randn(2, 4, 21, 18, device="cuda", dtype=dtype)
    ref = _untiled(vae, z)
    exact = _untiled(torch.nn.Module.to(vae, dtype=torch.float32), z.float()) if dtype != torch.float32 else ref
    vae = torch.nn.Module.to(vae, dtype=dtype)
    for use_kernels in (False, None):
        dec = ExactTiledDecoder(vae.decoder, vae.post_quant_conv, tile=5, max_memory=1, progress=False,
                                use_kernels=use_kernels)
        out = dec(z)
        torch.cuda.synchronize()
        assert dec.last_offloaded_bytes > 0
        assert torch.isfinite(out).all()
        dec.measure_memory = True  # the planner's two estimated parts, measured: same image (up to the
        again = dec(z)             # run-to-run freedom cuDNN has in choosing conv algorithms)
        dec.measure_memory = False
        assert dec.last_fixed_peak_bytes > 0 and dec.last_step_peak_bytes > 0
        if dtype == torch.float32:
            assert (again - out).abs().max().item() <= 1e-4 * max(1.0, out.abs().max().item())
        else:
            assert _psnr(again, out) >= 50.0
        if dtype == torch.float32:
            assert (out - ref).abs().max().item() <= 1e-4 * max(1.0, ref.abs().max().item())
        else:
            p_tiled, p_untiled = _psnr(out, exact), _psnr(ref, exact)
            print(f"use_kernels={use_kernels}: PSNR vs fp32 tiled {p_tiled:.1f} dB, untiled {p_untiled:.1f} dB, "
                  f"tiled vs untiled bf16 {_psnr(out, ref):.1f} dB")
            assert p_tiled >= p_untiled - 1.0
            assert _psnr(out, ref) >= 50.0


@pytest.mark.parametrize("which,shape,tile", [("two", (1, 4, 16, 16), 4), ("two", (1, 4, 16, 16), 7),
                                              ("three", (2, 4, 20, 12), 3), ("three", (2, 4, 20, 12), 20),
                                              ("flux", (1, 16, 24, 40), 12), ("sc", (1, 16, 12, 20), 5)])
@pytest.mark.parametrize("budget", ["none", "half", "all"])
def test_parking_plan_is_what_the_decode_does(seed, which, shape, tile, budget):
    """The plan's parking simulation (window bookkeeping, no tensors) gives exactly what the decode
    did: the most tile state parked at once, the most of it in host memory, the bytes moved there.
    Budgets: nothing on the device (1 byte), about half of the state, everything."""
    small_flux = dict(FLUX_VAE_CONFIG, block_out_channels=[8, 16, 16, 16], norm_num_groups=4)
    vae = {"two": lambda: _vae(TWO), "three": lambda: _vae(THREE), "flux": lambda: _vae(small_flux),
           "sc": lambda: _vae(small_flux, SCAutoencoderKL, stride=2)}[which]()
    z = torch.randn(*shape)
    p0 = plan_tiles(vae.decoder, shape, z.dtype, tile=tile, max_memory="64GiB")
    mem = {"none": 1, "half": p0.est_resident + p0.est_tile + p0.est_state // 2, "all": None}[budget]
    dec = ExactTiledDecoder(vae.decoder, getattr(vae, "post_quant_conv", None), tile=tile, max_memory=mem,
                            progress=False)
    dec(z)
    plan = dec.last_plan
    assert plan.n_tiles > 1 or tile >= max(shape[2:])
    assert dec.last_peak_parked_bytes > 0
    assert (plan.est_state, plan.est_host, plan.est_offload) == (
        dec.last_peak_parked_bytes, dec.last_peak_host_bytes, dec.last_offloaded_bytes)
    if budget == "none":
        assert plan.state_budget == 0 and plan.est_host == plan.est_state
    elif budget == "half":  # some of it on the host (all of it when one tensor is over half)
        assert 0 < plan.est_host <= plan.est_state and plan.est_offload > 0
        assert plan.est_host < plan.est_state or plan.n_tiles == 1
    else:
        assert plan.est_host == 0 and plan.est_offload == 0


def test_host_memory_warning(monkeypatch):
    """A plan that parks more in pinned host memory than the host has gets a ResourceWarning naming
    both sizes; enough host memory, or nothing parked there, stays silent."""
    flux = AutoencoderKL(**dict(FLUX_VAE_CONFIG, block_out_channels=[128, 256, 512, 512]))
    shp = (1, 16, 1024, 1024)  # an 8192^2 Flux decode
    plan = plan_tiles(flux.decoder, shp, torch.bfloat16, max_memory="24GiB")
    assert plan.n_tiles > 1 and plan.est_host > 10 * 2**30  # tens of GiB go the host way
    monkeypatch.setattr(planner, "host_available", lambda: 16 * 2**30)
    with pytest.warns(ResourceWarning, match=r"GiB of tile state will be parked in pinned host memory.*16\.0 GiB"):
        assert planner.warn_if_host_short(plan)
    monkeypatch.setattr(planner, "host_available", lambda: 512 * 2**30)
    assert not planner.warn_if_host_short(plan)
    roomy = plan_tiles(flux.decoder, (1, 16, 512, 512), torch.bfloat16, max_memory="40GiB")
    assert roomy.est_host == 0
    monkeypatch.setattr(planner, "host_available", lambda: 1)
    assert not planner.warn_if_host_short(roomy)
