"""group_norm_stats / group_norm_finalize / group_norm_apply against float64 torch and F.group_norm."""
import pytest
import torch
import torch.nn.functional as F

from d4k_kernels import backend
from d4k_kernels.ops.groupnorm import group_norm_apply, group_norm_finalize, group_norm_stats
from d4k_kernels.reference.upconv import group_stats_reference

_TOL = {torch.float32: 1e-5, torch.float64: 1e-10, torch.bfloat16: 2e-2, torch.float16: 2e-3}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("shape,G", [((2, 6, 5, 7), 3), ((1, 20, 3, 1), 4), ((3, 5, 17, 11), 5)])
def test_stats_match_float64(backend_device, seed, dtype, shape, G):
    _, dev = backend_device
    x = (torch.randn(shape) * 2 + 3).to(dev, dtype)
    s = group_norm_stats(x, G)
    assert s.dtype == torch.float64 and s.shape == (shape[0], G, 2)
    ref = group_stats_reference(x.cpu(), G)
    torch.testing.assert_close(s.cpu(), ref, rtol=1e-6, atol=1e-6 * ref.abs().max().item())


def test_stats_large_mean_no_cancellation(backend_device, seed):
    # fp32 data with mean 1e4 x std: a raw fp32 sum of squares would lose the variance entirely
    _, dev = backend_device
    x = (torch.randn(2, 8, 33, 31, dtype=torch.float64) + 1e4).float().to(dev)
    N, C, H, W = x.shape
    mean, rstd = group_norm_finalize(group_norm_stats(x, 4), (C // 4) * H * W, eps=0.0)
    v = x.cpu().double().reshape(N, 4, -1)
    torch.testing.assert_close(mean.cpu().double(), v.mean(-1), rtol=3e-7, atol=0)  # float32 output
    torch.testing.assert_close(rstd.cpu().double(), v.var(-1, unbiased=False).rsqrt(), rtol=1e-4, atol=0)


def test_stats_accumulate_over_tile_cores(backend_device, seed):
    _, dev = backend_device
    x = torch.randn(2, 9, 13, 10, device=dev) - 0.7
    whole = group_norm_stats(x, 3)
    acc = torch.zeros(2, 3, 2, dtype=torch.float64, device=dev)
    for r0, r1 in ((0, 5), (5, 13)):
        for c0, c1 in ((0, 3), (3, 10)):
            assert group_norm_stats(x[..., r0:r1, c0:c1], 3, out=acc) is acc
    torch.testing.assert_close(acc, whole, rtol=1e-6, atol=1e-6 * whole.abs().max().item())


def test_stats_strided_wide_rows(backend_device, seed):
    # a strided view wider than one column chunk, with several row blocks per program
    _, dev = backend_device
    base = torch.randn(2, 4, 9, 2 * 70 + 1, device=dev) * 3 + 5
    x = base[..., 1::2]
    assert x.shape == (2, 4, 9, 70) and not x.is_contiguous()
    ref = group_stats_reference(x.cpu(), 2)
    torch.testing.assert_close(group_norm_stats(x, 2).cpu(), ref, rtol=1e-6, atol=1e-6 * ref.abs().max().item())


@pytest.mark.parametrize("silu", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_apply_equals_group_norm(backend_device, seed, silu, dtype):
    _, dev = backend_device
    N, C, H, W, G = 2, 12, 5, 9, 4
    x = (torch.randn(N, C, H, W) * 3 + 1).to(dev, dtype)
    w, b = torch.randn(C, device=dev, dtype=dtype), torch.randn(C, device=dev, dtype=dtype)
    mean, rstd = group_norm_finalize(group_norm_stats(x, G), (C // G) * H * W, eps=1e-6)
    y = group_norm_apply(x, mean, rstd, w, b, G, silu=silu)
    ref = F.group_norm(x.cpu().double(), G, w.cpu().double(), b.cpu().double(), eps=1e-6)
    if silu:
        ref = F.silu(ref)
    assert y.dtype == dtype and y.shape == x.shape
    torch.testing.assert_close(y.cpu().double(), ref, rtol=_TOL[dtype], atol=_TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_apply_silu_rounds_like_the_model(backend_device, seed, dtype):
    """GroupNorm + SiLU on a 16-bit tensor rounds twice, as ``F.silu(F.group_norm(x))`` does in the
    model (GroupNorm's output is a 16-bit tensor, SiLU reads it): exact tiled decoding has to match the
    untiled decode. One rounding (the more precise fused form) differs by an ulp in a large share of
    the elements. On CUDA the model also normalises with mean / rstd rounded to the 16-bit dtype
    (``model_stats_dtype``); without that rounding this test failed on an H200 (elements whose GroupNorm
    output is near 0) and the bf16 tiled Flux decode stayed at 58.9 dB PSNR from the untiled one; with
    it the test passed and the decode reached 63.2 dB (on an H200). Allowed here: an ulp of
    GroupNorm's output where the statistics' last fp32 bit differs (rare), or where the Triton interpreter truncates instead of rounding to nearest (CPU runs of the kernel)."""
    name, dev = backend_device
    N, C, H, W, G = 2, 32, 16, 24, 8
    x = (torch.randn(N, C, H, W) * 2 + 0.5).to(dev, dtype)
    w = (1 + 0.3 * torch.randn(C)).to(dev, dtype)
    b = (0.3 * torch.randn(C)).to(dev, dtype)
    mean, rstd = group_norm_finalize(group_norm_stats(x, G), (C // G) * H * W, eps=1e-6)
    y = group_norm_apply(x, mean, rstd, w, b, G, silu=True).float().cpu()
    model = F.silu(F.group_norm(x, G, w, b, eps=1e-6)).float().cpu()
    once = F.silu(F.group_norm(x.double(), G, w.double(), b.double(), eps=1e-6)).to(dtype).float().cpu()
    ulp = torch.finfo(dtype).eps * model.abs().clamp_min(2.0 ** -14)
    # one ulp of GroupNorm's output (from the statistics' last bit) is up to ~3 ulps after SiLU
    assert ((y - model).abs() <= 4 * ulp).all()
    mismatch = (y != model).float().mean().item()
    mismatch_once = (once != model).float().mean().item()
    print(f"{name}/{dev}: {mismatch:.2%} of elements differ from the model's bf16 result "
          f"(single rounding: {mismatch_once:.2%})")
    if dev.type == "cpu" and name == "triton" and dtype == torch.bfloat16:
        return  # the Triton interpreter truncates to bf16 (GPUs round to nearest): only the bound above
    assert mismatch <= 0.02
    assert mismatch < mismatch_once  # the model's double rounding, not the fused single one


def test_apply_float64_and_no_affine(backend_device, seed):
    _, dev = backend_device
    x = torch.randn(1, 6, 4, 3, dtype=torch.float64, device=dev)
    s = group_norm_stats(x, 2)
    v = x.reshape(1, 2, -1)
    mean, rstd = v.mean(-1), (v.var(-1, unbiased=False) + 1e-6).rsqrt()  # float64 stats are used as given
    y = group_norm_apply(x, mean, rstd, None, None, 2)
    torch.testing.assert_close(y, F.group_norm(x, 2, eps=1e-6), rtol=0, atol=1e-12)
    m32, r32 = group_norm_finalize(s, 3 * 4 * 3)
    assert m32.dtype == r32.dtype == torch.float32
    torch.testing.assert_close(m32.double(), mean, rtol=1e-6, atol=1e-7)


def test_apply_non_contiguous(backend_device, seed):
    _, dev = backend_device
    base = torch.randn(2, 8, 9, 14, device=dev)
    x = base[..., ::2].transpose(2, 3)           # (2, 8, 7, 9) strided
    xc = x.contiguous()
    assert not x.is_contiguous()
    w, b = torch.randn(8, device=dev), torch.randn(8, device=dev)
    mean, rstd = group_norm_finalize(group_norm_stats(x, 2), 4 * 63)
    ref = group_norm_apply(xc, mean, rstd, w, b, 2, silu=True)
    for xi in (x, xc.to(memory_format=torch.channels_last)):
        torch.testing.assert_close(group_norm_apply(xi, mean, rstd, w, b, 2, silu=True), ref)
    torch.testing.assert_close(group_norm_stats(x, 2), group_norm_stats(xc, 2), rtol=1e-6, atol=1e-4)


def test_apply_autograd_via_torch_path(seed):
    x = torch.randn(1, 4, 3, 2, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, dtype=torch.float64, requires_grad=True)
    mean = torch.randn(1, 2, dtype=torch.float64)
    rstd = torch.rand(1, 2, dtype=torch.float64) + 0.5
    assert torch.autograd.gradcheck(lambda xx, ww: group_norm_apply(xx, mean, rstd, ww, None, 2, silu=True), (x, w))


def test_torch_compile_fullgraph_cpu(seed):
    x = torch.randn(1, 6, 4, 5)

    def f(x):
        s = group_norm_stats(x, 3)
        mean, rstd = group_norm_finalize(s, 2 * 20)
        return group_norm_apply(x, mean, rstd, None, None, 3, silu=True)

    with backend.prefer("cpu"):
        ref = f(x)
        y = torch.compile(f, fullgraph=True, backend="aot_eager")(x)
    torch.testing.assert_close(y, ref)
    torch.testing.assert_close(ref, F.silu(F.group_norm(x, 3, eps=1e-6)), rtol=1e-5, atol=1e-5)


def test_bad_inputs():
    x = torch.randn(1, 6, 3, 3)
    with pytest.raises(ValueError, match="6 channels.*num_groups=4"):
        group_norm_stats(x, 4)
    with pytest.raises(ValueError, match="out must have shape"):
        group_norm_stats(x, 3, out=torch.zeros(1, 2, 2, dtype=torch.float64))
    with pytest.raises(TypeError, match="out has dtype float32"):
        group_norm_stats(x, 3, out=torch.zeros(1, 3, 2))
    with pytest.raises(TypeError, match="x has dtype int32"):
        group_norm_stats(x.int(), 3)
    with pytest.raises(ValueError, match="count_per_group must be positive"):
        group_norm_finalize(torch.zeros(1, 3, 2, dtype=torch.float64), 0)
    with pytest.raises(ValueError, match=r"stats must have shape \(N, G, 2\)"):
        group_norm_finalize(torch.zeros(1, 3, 3, dtype=torch.float64), 4)
    m, r = torch.zeros(1, 3), torch.ones(1, 3)
    with pytest.raises(ValueError, match="rstd must have shape"):
        group_norm_apply(x, m, r[:, :2], None, None, 3)
    with pytest.raises(ValueError, match=r"weight must have shape \(6,\)"):
        group_norm_apply(x, m, r, torch.ones(5), None, 3)
    with pytest.raises(TypeError, match="silu must be a bool"):
        group_norm_apply(x, m, r, None, None, 3, silu=1)


def test_scale_shift_with_rounded_statistics(seed):
    """channel_scale_shift(stats_dtype=...) applies mean / rstd rounded to that dtype (what torch's CUDA
    GroupNorm does for 16-bit models) and forms the shift with one rounding; without it, fp32 values."""
    from d4k_kernels.ops.groupnorm import channel_scale_shift, model_stats_dtype

    N, C, G = 2, 12, 3
    mean = torch.randn(N, G) * 3 + 0.37
    rstd = torch.rand(N, G) + 0.1
    w, b = torch.randn(C).bfloat16(), torch.randn(C).bfloat16()
    for sd in (None, torch.bfloat16, torch.float16):
        scale, shift = channel_scale_shift(mean, rstd, w, b, G, C, stats_dtype=sd)
        m = (mean if sd is None else mean.to(sd)).double().repeat_interleave(C // G, dim=1)
        r = (rstd if sd is None else rstd.to(sd)).double().repeat_interleave(C // G, dim=1)
        want_scale = (r.float() * w.float()).double()
        assert torch.equal(scale, want_scale.float())
        assert torch.equal(shift, (-want_scale * m + b.double()).float())
    assert not torch.equal(channel_scale_shift(mean, rstd, w, b, G, C, stats_dtype=torch.bfloat16)[1],
                           channel_scale_shift(mean, rstd, w, b, G, C)[1])
    x = torch.randn(1, C, 4, 4).bfloat16()
    assert model_stats_dtype(x, w, b) is None  # CPU: torch applies its fp32 statistics


_OPCHECK_BACKENDS = ["cpu"] + (["triton"] if backend.HAS_TRITON and backend.interpreter_enabled() else [])


@pytest.mark.parametrize("layout", ["strided", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("impl", _OPCHECK_BACKENDS)
def test_opcheck(seed, impl, dtype, layout):
    """torch.library.opcheck (schema, autograd registration, fake tensor, AOT dispatch) of the two
    registered GroupNorm ops, on the torch path and under the Triton interpreter, with a strided view
    and a channels_last input (the torch path's output follows x's layout; its fake must too)."""
    base = (torch.randn(2, 6, 5, 14) * 2 + 1).to(dtype)
    x = base[..., ::2] if layout == "strided" else base.to(memory_format=torch.channels_last)
    assert not x.is_contiguous()
    w, b = torch.randn(6, dtype=dtype), torch.randn(6, dtype=dtype)
    with backend.prefer(impl):
        torch.library.opcheck(torch.ops.d4k.group_norm_stats.default, (x, 3))
        mean, rstd = group_norm_finalize(group_norm_stats(x, 3), 2 * x.shape[2] * x.shape[3])
        torch.library.opcheck(torch.ops.d4k.group_norm_apply.default, (x, mean, rstd, w, b, 3, True))
        torch.library.opcheck(torch.ops.d4k.group_norm_apply.default, (x, mean, rstd, None, None, 3, False))
