"""upconv_tail (GN apply + SiLU + nearest x2 + conv3x3, polyphase) against plain float64 torch.

The reference (d4k_kernels/reference/upconv.py) is F.group_norm / explicit normalisation -> F.silu ->
F.interpolate(nearest) -> F.pad / F.conv2d, without the polyphase trick. Kernels run under the Triton
interpreter on tiny shapes ("triton-cpu"), the torch path as "cpu".
"""
import contextlib

import pytest
import torch
import torch.nn.functional as F

from d4k_kernels import backend
from d4k_kernels.ops import upconv as upconv_mod
from d4k_kernels.ops.groupnorm import group_norm_finalize, group_norm_stats
from d4k_kernels.ops.upconv import fold_weights, upconv_tail
from d4k_kernels.reference.upconv import tail_reference, tail_reference_stats, torch_tail


def _params(C, Cout, G, dtype=torch.float32, device="cpu", bias=True, affine=True):
    gw = torch.randn(C, dtype=dtype, device=device) if affine else None
    gb = torch.randn(C, dtype=dtype, device=device) if affine else None
    cw = (torch.randn(Cout, C, 3, 3, dtype=dtype, device=device) / (3 * C ** 0.5))
    cb = torch.randn(Cout, dtype=dtype, device=device) if bias else None
    return gw, gb, cw, cb


def _stats(x, G):
    N, C, H, W = x.shape
    return group_norm_finalize(group_norm_stats(x.double(), G), (C // G) * H * W, eps=1e-6)


@contextlib.contextmanager
def _interp_cfg(**kw):
    old = dict(upconv_mod._INTERP_CFG)
    upconv_mod._INTERP_CFG.update(kw)
    try:
        yield
    finally:
        upconv_mod._INTERP_CFG.clear()
        upconv_mod._INTERP_CFG.update(old)


def test_reference_partitioned_is_plain_shifted(seed):
    # docs/ops.md, SC-VAE and exact tiled decoding: the partitioned tail is the plain tail shifted one
    # output pixel down/right.
    x = torch.randn(1, 6, 5, 4, dtype=torch.float64)
    gw, gb, cw, cb = _params(6, 2, 3, torch.float64)
    yp = tail_reference(x, gw, gb, cw, cb, 3, partitioned=True)
    yq = tail_reference(x, gw, gb, cw, cb, 3, partitioned=False)
    assert yp.shape == yq.shape == (1, 2, 10, 8)
    torch.testing.assert_close(yp[..., 1:, 1:], yq[..., :-1, :-1], rtol=0, atol=1e-12)
    assert not torch.allclose(yp, yq)


@pytest.mark.parametrize("partitioned", [True, False])
@pytest.mark.parametrize("shape", [(2, 6, 3, 5, 3, 2), (1, 20, 4, 3, 5, 4), (1, 3, 1, 1, 1, 1)])
def test_torch_path_float64_exact(seed, partitioned, shape):
    N, C, H, W, Cout, G = shape
    x = torch.randn(N, C, H, W, dtype=torch.float64) * 2 + 0.5
    gw, gb, cw, cb = _params(C, Cout, G, torch.float64)
    mean, rstd = _stats(x, G)
    with backend.prefer("cpu"):
        y = upconv_tail(x, mean, rstd, gw, gb, cw, cb, G, partitioned=partitioned)
    ref = tail_reference_stats(x, mean, rstd, gw, gb, cw, cb, G, partitioned)
    assert y.dtype == torch.float64 and y.shape == (N, Cout, 2 * H, 2 * W)
    torch.testing.assert_close(y, ref, rtol=0, atol=1e-12)
    # and, with the statistics of x itself, the F.group_norm tail (float32 mean/rstd: ~1e-7)
    torch.testing.assert_close(y, tail_reference(x, gw, gb, cw, cb, G, 1e-6, partitioned), rtol=0, atol=1e-5)


@pytest.mark.parametrize("partitioned", [True, False])
def test_fused_fp32(backend_device, seed, partitioned):
    _, dev = backend_device
    N, C, H, W, Cout, G = 2, 20, 5, 7, 3, 4      # C not a power of two, odd H and W
    x = (torch.randn(N, C, H, W) * 1.5 + 0.3).to(dev)
    gw, gb, cw, cb = _params(C, Cout, G, device=dev)
    mean, rstd = _stats(x, G)
    y = upconv_tail(x, mean, rstd, gw, gb, cw, cb, G, partitioned=partitioned)
    ref = tail_reference(x.cpu(), gw.cpu(), gb.cpu(), cw.cpu(), cb.cpu(), G, 1e-6, partitioned)
    assert y.dtype == torch.float32 and y.shape == (N, Cout, 2 * H, 2 * W)
    torch.testing.assert_close(y.cpu().double(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 2e-2), (torch.float16, 4e-3)])
@pytest.mark.parametrize("partitioned", [True, False])
def test_fused_half(backend_device, seed, dtype, tol, partitioned):
    _, dev = backend_device
    N, C, H, W, Cout, G = 1, 24, 3, 5, 3, 8
    x = (torch.randn(N, C, H, W) + 0.5).to(dev, dtype)
    gw, gb, cw, cb = _params(C, Cout, G, dtype, dev)
    mean, rstd = _stats(x, G)
    y = upconv_tail(x, mean, rstd, gw, gb, cw, cb, G, partitioned=partitioned)
    assert y.dtype == dtype
    # float64 reference on the same (rounded) inputs; the bound is a few output roundings
    ref = tail_reference(x.cpu(), gw.cpu(), gb.cpu(), cw.cpu(), cb.cpu(), G, 1e-6, partitioned)
    scale = ref.abs().max().item()
    err = (y.cpu().double() - ref).abs().max().item()
    assert err <= tol * scale, (err, scale)
    # torch's own tail in this dtype is off by a comparable amount
    t = torch_tail(x.cpu(), gw.cpu(), gb.cpu(), cw.cpu(), cb.cpu(), G, 1e-6, partitioned)
    assert err <= 4 * (t.double() - ref).abs().max().item() + 2e-3 * scale


@pytest.mark.parametrize("shift_mode", [True, False])
@pytest.mark.parametrize("partitioned", [True, False])
def test_strips_blocks_and_no_affine(seed, partitioned, shift_mode):
    # several column strips (W > BW), row strips (ROWS < H), channel blocks and output-channel blocks
    if not (backend.HAS_TRITON and backend.interpreter_enabled()):
        pytest.skip("needs the Triton interpreter")
    N, C, H, W, Cout, G = 1, 40, 5, 19, 9, 5
    x = torch.randn(N, C, H, W)
    _, _, cw, _ = _params(C, Cout, G)
    mean, rstd = _stats(x, G)
    ref = tail_reference_stats(x, mean, rstd, None, None, cw, None, G, partitioned)
    with backend.prefer("triton"), _interp_cfg(ROWS=2, BC=32, BN=16, SHIFT=shift_mode):
        y = upconv_tail(x, mean, rstd, None, None, cw, None, G, partitioned=partitioned)
    torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-5)


def test_non_contiguous(backend_device, seed):
    _, dev = backend_device
    N, C, H, W, Cout, G = 1, 12, 4, 5, 2, 3
    base = torch.randn(N, C, 2 * W + 1, H, device=dev)
    x = base[..., ::2, :].transpose(2, 3)                 # (N, C, H, W+1) strided view ...
    x = x[..., 1:]                                         # ... with an offset
    xc = x.contiguous()
    x_cl = xc.to(memory_format=torch.channels_last)
    assert not x.is_contiguous() and not x_cl.is_contiguous()
    gw, gb, cw, cb = _params(C, Cout, G, device=dev)
    cw_nc = cw.transpose(2, 3).contiguous().transpose(2, 3)  # a non-contiguous weight too
    mean, rstd = _stats(xc, G)
    ref = upconv_tail(xc, mean, rstd, gw, gb, cw, cb, G)
    for xi in (x, x_cl):
        torch.testing.assert_close(upconv_tail(xi, mean, rstd, gw, gb, cw_nc, cb, G), ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("partitioned", [True, False])
def test_halo_tiles_equal_whole(backend_device, seed, partitioned):
    # the exact-tiling contract: statistics over tile cores + halo tiles cropped == untiled output
    _, dev = backend_device
    N, C, H, W, Cout, G = 1, 8, 7, 6, 3, 4
    x = torch.randn(N, C, H, W, device=dev) + 1.0
    gw, gb, cw, cb = _params(C, Cout, G, device=dev)
    cores = [(0, 3, 0, 4), (0, 3, 4, 6), (3, 7, 0, 4), (3, 7, 4, 6)]
    stats = torch.zeros(N, G, 2, dtype=torch.float64, device=dev)
    for r0, r1, c0, c1 in cores:
        group_norm_stats(x[..., r0:r1, c0:c1], G, out=stats)
    torch.testing.assert_close(stats, group_norm_stats(x, G), rtol=1e-6, atol=1e-4)
    mean, rstd = group_norm_finalize(stats, (C // G) * H * W)
    whole = upconv_tail(x, mean, rstd, gw, gb, cw, cb, G, partitioned=partitioned)
    out = torch.full_like(whole, float("nan"))
    for r0, r1, c0, c1 in cores:
        h0, h1 = max(r0 - 1, 0), min(r1 + 1, H)            # 1-pixel halo, clamped at the border
        w0, w1 = max(c0 - 1, 0), min(c1 + 1, W)
        yt = upconv_tail(x[..., h0:h1, w0:w1], mean, rstd, gw, gb, cw, cb, G, partitioned=partitioned)
        out[..., 2 * r0:2 * r1, 2 * c0:2 * c1] = yt[..., 2 * (r0 - h0):2 * (r1 - h0), 2 * (c0 - w0):2 * (c1 - w0)]
    torch.testing.assert_close(out, whole, rtol=1e-5, atol=1e-5)


def test_fold_weights_pixel_shuffle_identity(seed):
    # an independent statement of the polyphase identity: conv(pad(up(a))) == pixel_shuffle(conv(a, folded))
    a = torch.randn(1, 3, 4, 5, dtype=torch.float64)
    w = torch.randn(2, 3, 3, 3, dtype=torch.float64)
    u = F.interpolate(a, scale_factor=2, mode="nearest")
    plain = F.pixel_shuffle(F.conv2d(a, fold_weights(w, False, torch.float64), padding=1), 2)
    part = F.pixel_shuffle(F.conv2d(F.pad(a, (1, 0, 1, 0)), fold_weights(w, True, torch.float64)), 2)
    torch.testing.assert_close(plain, F.conv2d(u, w, padding=1), rtol=0, atol=1e-12)
    torch.testing.assert_close(part, F.conv2d(F.pad(u, (2, 0, 2, 0)), w), rtol=0, atol=1e-12)


def test_autograd_uses_torch_path(seed):
    x = torch.randn(1, 4, 2, 3, dtype=torch.float64, requires_grad=True)
    gw, gb, cw, cb = _params(4, 1, 2, torch.float64)
    cw.requires_grad_(True)
    mean, rstd = _stats(x.detach(), 2)
    mean, rstd = mean.double(), rstd.double()
    assert upconv_tail(x, mean, rstd, gw, gb, cw, cb, 2).grad_fn is not None
    assert torch.autograd.gradcheck(
        lambda xx, ww: upconv_tail(xx, mean, rstd, gw, gb, ww, cb, 2, partitioned=True), (x, cw))


def test_torch_compile_fullgraph_cpu(seed):
    x = torch.randn(1, 6, 3, 4)
    gw, gb, cw, cb = _params(6, 3, 3)
    mean, rstd = _stats(x, 3)

    def f(x, mean, rstd):
        return upconv_tail(x, mean, rstd, gw, gb, cw, cb, 3, partitioned=True) * 2

    with backend.prefer("cpu"):
        ref = f(x, mean, rstd)
        y = torch.compile(f, fullgraph=True, backend="aot_eager")(x, mean, rstd)
    torch.testing.assert_close(y, ref)


def test_bad_inputs():
    x = torch.randn(1, 6, 3, 3)
    gw, gb, cw, cb = _params(6, 3, 3)
    mean, rstd = _stats(x, 3)
    with pytest.raises(ValueError, match="6 channels.*num_groups=4"):
        upconv_tail(x, torch.zeros(1, 4), torch.ones(1, 4), gw, gb, cw, cb, 4)
    with pytest.raises(ValueError, match="mean must have shape"):
        upconv_tail(x, mean[:, :2], rstd, gw, gb, cw, cb, 3)
    with pytest.raises(ValueError, match=r"conv_weight must have shape \(Cout, 6, 3, 3\)"):
        upconv_tail(x, mean, rstd, gw, gb, cw[:, :5], cb, 3)
    with pytest.raises(ValueError, match="conv_weight must have shape"):
        upconv_tail(x, mean, rstd, gw, gb, torch.randn(3, 6, 5, 5), cb, 3)
    with pytest.raises(ValueError, match="conv_bias must have shape"):
        upconv_tail(x, mean, rstd, gw, gb, cw, torch.randn(4), 3)
    with pytest.raises(ValueError, match="gn_weight must have shape"):
        upconv_tail(x, mean, rstd, torch.randn(5), gb, cw, cb, 3)
    with pytest.raises(TypeError, match="x has dtype int64"):
        upconv_tail(x.long(), mean, rstd, gw, gb, cw, cb, 3)
    with pytest.raises(ValueError, match="x must have 4 dimensions"):
        upconv_tail(x[0], mean, rstd, gw, gb, cw, cb, 3)
    with pytest.raises(TypeError, match="partitioned must be a bool"):
        upconv_tail(x, mean, rstd, gw, gb, cw, cb, 3, partitioned="yes")
    with pytest.raises(ValueError, match="num_groups must be >= 1"):
        upconv_tail(x, mean, rstd, gw, gb, cw, cb, 0)


_OPCHECK_BACKENDS = ["cpu"] + (["triton"] if backend.HAS_TRITON and backend.interpreter_enabled() else [])


@pytest.mark.parametrize("layout", ["strided", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("impl", _OPCHECK_BACKENDS)
def test_opcheck(seed, impl, dtype, layout):
    """torch.library.opcheck of d4k::upconv_tail (both tails, with and without the affine / bias) on the
    torch path and under the Triton interpreter, with a strided view and a channels_last input."""
    base = (torch.randn(1, 6, 3, 8) + 0.5).to(dtype)
    x = base[..., ::2] if layout == "strided" else base.to(memory_format=torch.channels_last)
    assert not x.is_contiguous()
    gw, gb, cw, cb = _params(6, 2, 3, dtype)
    with backend.prefer(impl):
        mean, rstd = _stats(x, 3)
        torch.library.opcheck(torch.ops.d4k.upconv_tail.default, (x, mean, rstd, gw, gb, cw, cb, 3, True))
        torch.library.opcheck(torch.ops.d4k.upconv_tail.default, (x, mean, rstd, None, None, cw, None, 3, False))


_LAUNCH_ON = ["interpreter"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("where", _LAUNCH_ON)
def test_gpu_launcher_every_config(seed, monkeypatch, where):
    # the autotuned GPU launch (grid lambda, ROWS, scratch sizing, padding) with EVERY tuning config, each
    # checked: on a GPU for real ("cuda": a shape above the no-autotune threshold), else by the interpreter
    if where == "interpreter":
        if not (backend.HAS_TRITON and backend.interpreter_enabled()):
            pytest.skip("needs the Triton interpreter")
        dev, (N, C, H, W, Cout, G) = "cpu", (1, 36, 3, 2, 9, 4)
        monkeypatch.setattr(upconv_mod, "_use_tuned", lambda x: True)
        monkeypatch.setattr(upconv_mod, "_SMALL_PIXELS", 0)
    else:
        dev, (N, C, H, W, Cout, G) = "cuda", (1, 128, 40, 150, 3, 32)
    outs = []

    class _Shim:
        def __getitem__(self, grid):
            def launch(*args, **kw):
                nargs = dict(zip(upconv_mod._upconv_kernel.arg_names, args))
                for cfg in upconv_mod._prune(upconv_mod._gpu_configs(), nargs, **kw):
                    args[5].fill_(float("nan"))
                    upconv_mod._upconv_kernel[grid({**nargs, **kw, **cfg.kwargs})](
                        *args, **kw, **cfg.kwargs, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
                    outs.append((tuple(cfg.kwargs.values()), args[5].clone()))
            return launch

    monkeypatch.setattr(upconv_mod, "_upconv_kernel_tuned", _Shim())
    x = torch.randn(N, C, H, W).bfloat16().to(dev)
    gw, gb, cw, cb = _params(C, Cout, G, torch.bfloat16, dev)
    mean, rstd = _stats(x, G)
    n_cfg = 9 if Cout == 9 else 5
    for partitioned in (True, False):
        outs.clear()
        ref = tail_reference_stats(x.cpu(), mean.cpu(), rstd.cpu(), gw.cpu(), gb.cpu(), cw.cpu(), cb.cpu(), G,
                                   partitioned)
        with backend.prefer("triton"):
            upconv_tail(x, mean, rstd, gw, gb, cw, cb, G, partitioned=partitioned)
        assert len({c for c, _ in outs}) == n_cfg and {c[-1] for c, _ in outs} == {True, False}
        for cfg, y in outs:
            err = (y.cpu().double() - ref).abs().max().item()
            assert err <= 2e-2 * ref.abs().max().item(), (cfg, err)


def test_gpu_small_problem_path_under_interpreter(seed, monkeypatch):
    # the GPU launch for small problems (fixed config, no autotuning), run by the interpreter
    if not (backend.HAS_TRITON and backend.interpreter_enabled()):
        pytest.skip("needs the Triton interpreter")
    monkeypatch.setattr(upconv_mod, "_use_tuned", lambda x: True)
    x = torch.randn(1, 10, 3, 4)
    gw, gb, cw, cb = _params(10, 5, 2)   # 4*Cout = 20 > 16: BN 32
    mean, rstd = _stats(x, 2)
    for partitioned in (True, False):
        with backend.prefer("triton"):
            y = upconv_tail(x, mean, rstd, gw, gb, cw, cb, 2, partitioned=partitioned)
        ref = tail_reference_stats(x, mean, rstd, gw, gb, cw, cb, 2, partitioned)
        torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-5)


def test_empty(backend_device):
    _, dev = backend_device
    x = torch.randn(1, 4, 0, 3, device=dev)
    gw, gb, cw, cb = _params(4, 2, 2, device=dev)
    m, r = torch.zeros(1, 2, device=dev), torch.ones(1, 2, device=dev)
    assert upconv_tail(x, m, r, gw, gb, cw, cb, 2).shape == (1, 2, 0, 6)


@pytest.mark.parametrize("shift_mode", [True, False])
@pytest.mark.parametrize("partitioned", [True, False])
def test_int64_offsets_variant(seed, partitioned, shift_mode):
    # the 64-bit in-tile offset variant (huge tensors) computes the same as the int32 one
    if not (backend.HAS_TRITON and backend.interpreter_enabled()):
        pytest.skip("needs the Triton interpreter")
    x = torch.randn(1, 6, 5, 4).transpose(2, 3)           # a non-contiguous view
    gw, gb, cw, cb = _params(6, 3, 3)
    mean, rstd = _stats(x, 3)
    with backend.prefer("triton"):
        with _interp_cfg(SHIFT=shift_mode):
            y32 = upconv_tail(x, mean, rstd, gw, gb, cw, cb, 3, partitioned=partitioned)
        with _interp_cfg(INT64=True, SHIFT=shift_mode):
            y64 = upconv_tail(x, mean, rstd, gw, gb, cw, cb, 3, partitioned=partitioned)
    torch.testing.assert_close(y64, y32, rtol=0, atol=0)
    torch.testing.assert_close(y32.double(), tail_reference_stats(x, mean, rstd, gw, gb, cw, cb, 3, partitioned),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("partitioned", [True, False])
def test_many_output_channels(backend_device, seed, partitioned):
    # Cout = 70: 4*Cout = 280 folded outputs, several output-channel blocks and padding to 320
    _, dev = backend_device
    N, C, H, W, Cout, G = 1, 8, 2, 3, 70, 2
    x = torch.randn(N, C, H, W, device=dev)
    gw, gb, cw, cb = _params(C, Cout, G, device=dev)
    mean, rstd = _stats(x, G)
    y = upconv_tail(x, mean, rstd, gw, gb, cw, cb, G, partitioned=partitioned)
    ref = tail_reference_stats(x.cpu(), mean.cpu(), rstd.cpu(), gw.cpu(), gb.cpu(), cw.cpu(), cb.cpu(), G,
                               partitioned)
    assert y.shape == (N, Cout, 2 * H, 2 * W)
    torch.testing.assert_close(y.cpu().double(), ref, rtol=1e-5, atol=1e-5)


def test_folded_weight_cache_follows_in_place_updates(backend_device, seed):
    _, dev = backend_device
    x = torch.randn(1, 4, 3, 3, device=dev)
    gw, gb, cw, cb = _params(4, 2, 2, device=dev)
    mean, rstd = _stats(x, 2)
    y1 = upconv_tail(x, mean, rstd, gw, gb, cw, cb, 2)
    torch.testing.assert_close(upconv_tail(x, mean, rstd, gw, gb, cw, cb, 2), y1)
    with torch.no_grad():
        cw.mul_(-2.0)                      # in place: a cached fold must not be reused
    y2 = upconv_tail(x, mean, rstd, gw, gb, cw, cb, 2)
    ref = tail_reference_stats(x.cpu(), mean.cpu(), rstd.cpu(), gw.cpu(), gb.cpu(), cw.cpu(), cb.cpu(), 2, True)
    torch.testing.assert_close(y2.cpu().double(), ref, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# every GPU config compiles for sm_90 (no GPU needed): what the interpreter checks, the GPU compiler accepts
# ---------------------------------------------------------------------------------------------
_COMPILE_SCRIPT = r"""
import triton, triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from d4k_kernels.ops import upconv, groupnorm
kern = upconv._upconv_kernel
names = kern.arg_names
ptr = {"x_ptr": "*bf16", "w_ptr": "*bf16", "bias_ptr": "*fp32", "scale_ptr": "*fp32", "shift_ptr": "*fp32",
       "y_ptr": "*bf16", "s_ptr": "*fp32"}
n = 0
for cfg in upconv._gpu_configs():
    for D in (2, 3):
        const = dict(cfg.kwargs, D=D, HAS_BIAS=True, IEEE=False, INT64=False, DP=2 if D == 2 else 4)
        sig = {a: "constexpr" if a in const else ptr.get(a, "i32") for a in names}
        consts = {(names.index(a),): v for a, v in const.items() if a in names}
        k = triton.compile(ASTSource(fn=kern, signature=sig, constexprs=consts), target=GPUTarget("cuda", 90, 32),
                           options={"num_warps": cfg.num_warps, "num_stages": cfg.num_stages})
        assert "ptx" in k.asm
        n += 1
gn_cases = [
    (groupnorm._gn_stats_kernel, {"x_ptr": "*bf16", "part_ptr": "*fp32"}, {"BLOCK": 2048}),
    (groupnorm._gn_stats_rows_kernel, {"x_ptr": "*bf16", "part_ptr": "*fp32"}, {"RB": 8, "WB": 128}),
    (groupnorm._gn_apply_kernel, {"x_ptr": "*bf16", "y_ptr": "*bf16", "scale_ptr": "*fp32", "shift_ptr": "*fp32"},
     {"SILU": True, "CONTIG": True, "BLOCK": 2048}),
    (groupnorm._gn_apply_kernel, {"x_ptr": "*fp16", "y_ptr": "*fp16", "scale_ptr": "*fp32", "shift_ptr": "*fp32"},
     {"SILU": False, "CONTIG": False, "BLOCK": 2048}),
]
for kern, ptrs, const in gn_cases:
    names = kern.arg_names
    sig = {a: "constexpr" if a in const else ptrs.get(a, "i32") for a in names}
    consts = {(names.index(a),): v for a, v in const.items()}
    k = triton.compile(ASTSource(fn=kern, signature=sig, constexprs=consts), target=GPUTarget("cuda", 90, 32),
                       options={"num_warps": 4})
    assert "ptx" in k.asm
    n += 1
print("compiled", n)
"""


@pytest.mark.skipif(not backend.HAS_TRITON, reason="needs triton")
def test_kernels_compile_for_sm90():
    """All autotune configs of the fused tail (both tails, bf16) and the GroupNorm stats/apply kernels."""
    from gpu_compile import assert_compiles_for_sm90

    assert_compiles_for_sm90(_COMPILE_SCRIPT)
