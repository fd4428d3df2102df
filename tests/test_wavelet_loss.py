"""d4k_kernels.wavelet_loss / wavelet_mse against independent references:

* the Diffusion-4K training-script formula written with pytorch_wavelets (float64 and bf16),
* plain x0-space MSE (even sizes) and the exact odd-size ratio,
* a float64 multi-level Haar written plainly (d4k_kernels/reference/wavelet_loss.py) and
  pytorch_wavelets' multi-level DWTForward for levels > 1 and per-band weights.
Every test runs on each backend of the `backend_device` fixture (CPU torch path, Triton kernels
under the interpreter, Triton on CUDA when present).
"""
import math

import pytest
import torch

from d4k_kernels import backend
from d4k_kernels.ops.wavelet_loss import coefficient_count, wavelet_loss, wavelet_loss_and_grad, wavelet_mse
from d4k_kernels.reference.peers import import_pytorch_wavelets
from d4k_kernels.reference.wavelet_loss import released_formula, wavelet_loss_f64, wavelet_mse_f64

ptw = import_pytorch_wavelets()


def _inputs(shape, device, dtype=torch.float32, grad=True):
    ts = [torch.randn(shape, dtype=torch.float64).to(device=device, dtype=dtype) for _ in range(3)]
    for t in ts:
        t.requires_grad_(grad)
    n = shape[0]
    sig = torch.rand(n, dtype=torch.float64).clamp_min(0.05).to(device)
    w = (0.5 + torch.rand(n, dtype=torch.float64)).to(device)
    return ts, sig, w


def _grads(loss, ts):
    return torch.autograd.grad(loss, ts)


def _close(a, b, rtol, atol=0.0, what=""):
    a, b = a.double().cpu(), b.double().cpu()
    scale = b.abs().max().item() + 1e-30
    err = (a - b).abs().max().item()
    assert err <= rtol * scale + atol, f"{what}: max err {err:.3e} vs scale {scale:.3e}"


# ----------------------------------------------------------------------------------------------
# the released formula (pytorch_wavelets), default arguments
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(2, 4, 8, 12), (3, 2, 7, 5), (1, 1, 2, 2), (2, 3, 1, 9)])
def test_released_formula_float64(backend_device, seed, shape):
    _, dev = backend_device
    (p, xt, x0), sig, w = _inputs(shape, dev, torch.float64)
    dwt = ptw.DWTForward(J=1, mode="zero", wave="haar").to(dev, torch.float64)
    ref = released_formula(p, xt, x0, sig.view(-1, 1, 1, 1), w.view(-1, 1, 1, 1), dwt=dwt)
    gref = _grads(ref, [p, xt, x0])
    out = wavelet_loss(p, xt, x0, sig.view(-1, 1, 1, 1), w.view(-1, 1, 1, 1))
    assert out.dtype == torch.float64 and out.shape == ()
    # the script casts to float32 (.float()) before squaring: float32 rounding
    _close(out, ref, 1e-6, what="loss")
    _close(out, wavelet_loss_f64(p, xt, x0, sig, w), 1e-12, what="loss vs float64 reference")
    g64 = _grads(wavelet_loss_f64(p, xt, x0, sig, w), [p, xt, x0])
    for g, gr, g2, n in zip(_grads(out, [p, xt, x0]), gref, g64, ("model_pred", "x_t", "x0")):
        assert g.dtype == torch.float64
        _close(g, gr, 1e-6, what=f"grad {n}")
        _close(g, g2, 1e-12, what=f"grad {n} vs float64 reference")  # float64 end to end


@pytest.mark.parametrize("shape", [(2, 4, 16, 10), (2, 3, 9, 7)])
def test_released_formula_bf16(backend_device, seed, shape):
    """bf16 inputs: d4k computes in fp32 from the bf16 values; the script computes x0_pred and the
    DWT in bf16 (pytorch_wavelets' bf16 filters are 0.70703125). Both are compared with the float64
    loss of the same bf16 inputs; d4k must be at least as close as the script, and the two agree to
    bf16 tolerance."""
    _, dev = backend_device
    (p, xt, x0), sig, w = _inputs(shape, dev, torch.bfloat16)
    sig_b = sig.to(torch.bfloat16).view(-1, 1, 1, 1)
    dwt = ptw.DWTForward(J=1, mode="zero", wave="haar").to(dev, torch.bfloat16)
    rel = released_formula(p, xt, x0, sig_b, w.view(-1, 1, 1, 1).float(), dwt=dwt)
    g_rel = _grads(rel, [p])[0]
    exact = wavelet_loss_f64(p, xt, x0, sig_b.double(), w)
    g_exact = _grads(exact, [p])[0]
    out = wavelet_loss(p, xt, x0, sig_b, w)
    g = _grads(out, [p])[0]
    assert out.dtype == torch.float32 and g.dtype == torch.bfloat16
    _close(out, exact, 1e-5, what="loss vs float64")
    _close(out, rel, 2e-2, what="loss vs script in bf16")
    assert abs(out.item() - exact.item()) <= abs(rel.item() - exact.item()) + 1e-6 * exact.item()
    _close(g, g_exact, 1e-2, what="grad vs float64")  # bf16 output rounding
    _close(g, g_rel, 5e-2, what="grad vs script in bf16")


# ----------------------------------------------------------------------------------------------
# x0-space MSE: equal for even sizes, the exact ratio for odd ones
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(2, 3, 6, 8), (1, 2, 2, 16)])
def test_even_equals_x0_mse(backend_device, seed, shape):
    _, dev = backend_device
    (p, xt, x0), sig, w = _inputs(shape, dev, grad=False)
    s = sig.float().view(-1, 1, 1, 1)
    mse = (w.float().view(-1, 1, 1, 1) * (xt - s * p - x0) ** 2).mean(dim=(1, 2, 3)).mean()
    out = wavelet_loss(p, xt, x0, sig.float(), w.float())
    _close(out, mse, 2e-6, what="even size vs x0-MSE")


@pytest.mark.parametrize("hw", [(7, 9), (5, 4), (1, 1), (3, 2)])
def test_odd_size_ratio(backend_device, seed, hw):
    _, dev = backend_device
    H, W = hw
    (p, xt, x0), sig, _ = _inputs((2, 3, H, W), dev, torch.float64, grad=False)
    per_sample_mse = ((xt - sig.view(-1, 1, 1, 1) * p - x0) ** 2).mean(dim=(1, 2, 3))
    out = wavelet_loss(p, xt, x0, sig, reduction="none")
    ratio = H * W / (4 * math.ceil(H / 2) * math.ceil(W / 2))
    _close(out, per_sample_mse * ratio, 1e-12, what="odd-size ratio")


# ----------------------------------------------------------------------------------------------
# levels and band weights against the float64 reference and pytorch_wavelets' multi-level DWT
# ----------------------------------------------------------------------------------------------
CONFIGS = [
    ((2, 3, 8, 8), 2, None),
    ((2, 2, 11, 6), 2, (0.5, 2.0, 1.0, 3.0)),
    ((1, 2, 13, 17), 3, "per_level"),
    ((2, 1, 4, 4), 1, (2.0, 0.0, 0.5, 1.5)),
    ((1, 2, 32, 20), 5, "per_level"),
    ((1, 1, 3, 3), 4, (1.0, 2.0, 3.0, 4.0)),
]


def _bw(spec, levels):
    if spec == "per_level":
        return [0.25 + 0.5 * k for k in range(1 + 3 * levels)]
    return spec


@pytest.mark.parametrize("shape,levels,spec", CONFIGS)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_levels_band_weights_vs_f64(backend_device, seed, shape, levels, spec, reduction):
    _, dev = backend_device
    (p, xt, x0), sig, w = _inputs(shape, dev, torch.float32)
    bw = _bw(spec, levels)
    ref = wavelet_loss_f64(p, xt, x0, sig, w, levels, bw, reduction)
    out = wavelet_loss(p, xt, x0, sig.float(), w.float(), levels=levels, band_weights=bw, reduction=reduction)
    assert out.shape == ref.shape
    _close(out, ref, 2e-6, what="loss")
    up = torch.ones_like(ref) if reduction == "none" else None
    gref = torch.autograd.grad(ref, [p, xt, x0], up)
    gout = torch.autograd.grad(out, [p, xt, x0], None if up is None else up.float())
    for g, gr, n in zip(gout, gref, ("model_pred", "x_t", "x0")):
        _close(g, gr, 2e-6, what=f"grad {n}")


@pytest.mark.parametrize("shape,levels", [((2, 3, 12, 10), 2), ((1, 2, 9, 7), 3)])
def test_wavelet_mse_vs_pytorch_wavelets(backend_device, seed, shape, levels):
    """Per-band weighted mean over pytorch_wavelets' (yl, yh) pyramid, written out band by band."""
    _, dev = backend_device
    a = torch.randn(shape, dtype=torch.float64, device=dev)
    b = torch.randn(shape, dtype=torch.float64, device=dev)
    bw = [0.3 + 0.7 * k for k in range(1 + 3 * levels)]
    dwt = ptw.DWTForward(J=levels, mode="zero", wave="haar").to(dev, torch.float64)
    (al, ah), (bl, bh) = dwt(a), dwt(b)
    tot = bw[0] * ((al - bl) ** 2).sum(dim=(1, 2, 3))
    cnt = al[0].numel()
    for j in range(levels):
        for k in range(3):
            tot = tot + bw[1 + 3 * j + k] * ((ah[j][:, :, k] - bh[j][:, :, k]) ** 2).sum(dim=(1, 2, 3))
            cnt += ah[j][0, :, k].numel()
    assert cnt == coefficient_count(shape, levels)
    out = wavelet_mse(a, b, levels=levels, band_weights=bw, reduction="none")
    # pytorch_wavelets builds its filters in float32 (1/sqrt(2) rounded) even for float64 input
    _close(out, tot / cnt, 1e-6, what="wavelet_mse vs pytorch_wavelets")
    _close(out, wavelet_mse_f64(a, b, levels, bw, reduction="none"), 1e-12, what="wavelet_mse vs float64")


def test_wavelet_mse_default_equals_mse(backend_device, seed):
    _, dev = backend_device
    a = torch.randn(2, 3, 10, 6, device=dev, requires_grad=True)
    b = torch.randn(2, 3, 10, 6, device=dev)
    out = wavelet_mse(a, b)
    ref = torch.nn.functional.mse_loss(a, b)
    _close(out, ref, 2e-6, what="loss")
    _close(torch.autograd.grad(out, a)[0], torch.autograd.grad(ref, a)[0], 2e-6, what="grad")


def test_wavelet_mse_weighting_sum(backend_device, seed):
    _, dev = backend_device
    a = torch.randn(3, 2, 5, 6, device=dev)
    b = torch.randn(3, 2, 5, 6, device=dev)
    w = torch.rand(3, device=dev)
    out = wavelet_mse(a, b, levels=2, band_weights=(1.0, 0.5, 0.5, 2.0), weighting=w, reduction="sum")
    ref = wavelet_mse_f64(a, b, 2, (1.0, 0.5, 0.5, 2.0), w, "sum")
    _close(out, ref, 2e-6, what="sum")


@pytest.mark.parametrize("levels", [1, 2])
def test_cross_check_with_haar_dwt2(backend_device, seed, levels):
    """If d4k's own dwt2 has landed, the loss equals the per-band weighted mean over its pyramid."""
    haar = pytest.importorskip("d4k_kernels.ops.haar")
    _, dev = backend_device
    a = torch.randn(2, 2, 9, 12, dtype=torch.float64, device=dev)
    b = torch.randn(2, 2, 9, 12, dtype=torch.float64, device=dev)
    bw = [1.0 + k for k in range(1 + 3 * levels)]
    with backend.prefer("cpu"):
        yl, yh = haar.dwt2(a - b, levels, "zero")
    tot = bw[0] * (yl ** 2).sum(dim=(1, 2, 3))
    for j in range(levels):
        for k in range(3):
            tot = tot + bw[1 + 3 * j + k] * (yh[j][:, :, k] ** 2).sum(dim=(1, 2, 3))
    out = wavelet_mse(a, b, levels=levels, band_weights=bw, reduction="none")
    _close(out, tot / coefficient_count(a.shape, levels), 1e-12, what="vs dwt2")


# ----------------------------------------------------------------------------------------------
# dtypes, layouts, sigma / weighting forms and their gradients
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_dtypes(backend_device, seed, dtype):
    _, dev = backend_device
    (p, xt, x0), sig, w = _inputs((2, 3, 6, 5), dev, dtype)
    out = wavelet_loss(p, xt, x0, sig.float(), w.float(), levels=2, band_weights=(1.0, 2.0, 0.5, 1.0))
    ref = wavelet_loss_f64(p, xt, x0, sig.float(), w.float(), 2, (1.0, 2.0, 0.5, 1.0))
    assert out.dtype == torch.float32
    _close(out, ref, 1e-5, what="loss")
    gs = _grads(out, [p, xt, x0])
    grs = _grads(ref, [p, xt, x0])
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    for g, gr in zip(gs, grs):
        assert g.dtype == dtype and g.shape == p.shape
        _close(g, gr, tol, what=f"grad {dtype}")


def test_mixed_dtypes(backend_device, seed):
    _, dev = backend_device
    p = torch.randn(2, 2, 6, 6, device=dev, dtype=torch.bfloat16, requires_grad=True)
    xt = torch.randn(2, 2, 6, 6, device=dev, dtype=torch.float32, requires_grad=True)
    x0 = torch.randn(2, 2, 6, 6, device=dev, dtype=torch.float16, requires_grad=True)
    sig = torch.rand(2, device=dev)
    out = wavelet_loss(p, xt, x0, sig)
    ref = wavelet_loss_f64(p, xt, x0, sig)
    _close(out, ref, 1e-5, what="loss")
    gp, gt, g0 = _grads(out, [p, xt, x0])
    assert (gp.dtype, gt.dtype, g0.dtype) == (torch.bfloat16, torch.float32, torch.float16)
    _close(gt, _grads(ref, [xt])[0], 1e-5, what="grad x_t")


def test_non_contiguous(backend_device, seed):
    _, dev = backend_device
    base = torch.randn(3, 2, 9, 14, device=dev)
    p = base.transpose(2, 3).detach().requires_grad_(True)            # (3, 2, 14, 9), transposed strides
    xt = torch.randn(3, 2, 28, 9, device=dev)[:, :, ::2]              # row stride 2
    x0 = torch.randn(2, 3, 14, 9, device=dev).permute(1, 0, 2, 3)      # N/C swapped
    x0 = x0.detach().requires_grad_(True)
    sig = torch.rand(3, 1, device=dev)[:, 0]                          # strided sigma
    w = torch.rand(3, device=dev)
    assert not p.is_contiguous() and not xt.is_contiguous() and not x0.is_contiguous()
    out = wavelet_loss(p, xt, x0, sig, w, levels=2, band_weights=(1.0, 3.0, 0.5, 2.0))
    ref = wavelet_loss_f64(p, xt, x0, sig, w, 2, (1.0, 3.0, 0.5, 2.0))
    _close(out, ref, 2e-6, what="loss")
    for g, gr in zip(_grads(out, [p, x0]), _grads(ref, [p, x0])):
        _close(g, gr, 2e-6, what="grad")


def test_expanded_input(backend_device, seed):
    """A broadcast (stride-0) x0 is read in place."""
    _, dev = backend_device
    p = torch.randn(2, 3, 6, 4, device=dev)
    xt = torch.randn(2, 3, 6, 4, device=dev)
    x0 = torch.randn(1, 3, 6, 4, device=dev).expand(2, 3, 6, 4)
    sig = torch.rand(2, device=dev)
    _close(wavelet_loss(p, xt, x0, sig), wavelet_loss_f64(p, xt, x0, sig), 2e-6, what="loss")


@pytest.mark.parametrize("sig_shape,reduction", [("n", "mean"), ("n111", "sum"), ("n", "none")])
def test_sigma_and_weighting_grads(backend_device, seed, sig_shape, reduction):
    _, dev = backend_device
    (p, xt, x0), sig, w = _inputs((3, 2, 5, 6), dev, torch.float64)
    sig = sig.clone().requires_grad_(True)
    w = w.clone().requires_grad_(True)
    s_in = sig if sig_shape == "n" else sig.view(-1, 1, 1, 1)
    w_in = w if sig_shape == "n" else w.view(-1, 1, 1, 1)
    bw = (1.0, 2.0, 0.5, 3.0)
    out = wavelet_loss(p, xt, x0, s_in, w_in, levels=2, band_weights=bw, reduction=reduction)
    ref = wavelet_loss_f64(p, xt, x0, sig, w, 2, bw, reduction)
    up = torch.rand(ref.shape, dtype=torch.float64, device=dev)
    ins = [p, xt, x0, sig, w]
    for g, gr, n in zip(torch.autograd.grad(out, ins, up), torch.autograd.grad(ref, ins, up),
                        ("pred", "x_t", "x0", "sigmas", "weighting")):
        _close(g, gr, 1e-11, what=f"grad {n}")


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_upstream_gradient_not_one(backend_device, seed, reduction):
    """On the Triton path the gradient is computed in the forward pass for an upstream gradient of
    1 and rescaled in the backward: check scaled / per-sample upstream gradients, and a second
    backward through a retained graph (which recomputes)."""
    _, dev = backend_device
    (p, xt, x0), sig, w = _inputs((3, 2, 6, 10), dev, torch.float32)
    bw = (1.0, 2.0, 0.5, 3.0)
    out = wavelet_loss(p, xt, x0, sig.float(), w.float(), levels=2, band_weights=bw, reduction=reduction)
    ref = wavelet_loss_f64(p, xt, x0, sig, w, 2, bw, reduction)
    up = (0.25 + torch.rand(ref.shape, dtype=torch.float64, device=dev)) * 3.0
    first = torch.autograd.grad(out, [p, xt, x0], up.float(), retain_graph=True)
    second = torch.autograd.grad(out, [p, xt, x0], (2 * up).float())
    grs = torch.autograd.grad(ref, [p, xt, x0], up)
    for a, b, gr in zip(first, second, grs):
        _close(a, gr, 2e-6, what="grad")
        _close(b, 2 * gr, 2e-6, what="grad, second backward")


def test_weighting_grad_with_fused_gradient(backend_device, seed):
    """weighting requires grad, sigmas do not: the fused forward+gradient path plus E for dL/dw."""
    _, dev = backend_device
    (p, xt, x0), sig, w = _inputs((3, 2, 5, 8), dev, torch.float64)
    w = w.clone().requires_grad_(True)
    out = wavelet_loss(p, xt, x0, sig, w, levels=2, band_weights=(1.0, 2.0, 0.5, 3.0))
    ref = wavelet_loss_f64(p, xt, x0, sig, w, 2, (1.0, 2.0, 0.5, 3.0))
    for g, gr in zip(_grads(2.5 * out, [p, x0, w]), _grads(2.5 * ref, [p, x0, w])):
        _close(g, gr, 1e-12, what="grad")


def test_no_grad_forward(backend_device, seed):
    _, dev = backend_device
    (p, xt, x0), sig, w = _inputs((2, 2, 4, 6), dev, torch.float32)
    with torch.no_grad():
        out = wavelet_loss(p, xt, x0, sig.float(), w.float())
    assert not out.requires_grad
    _close(out, wavelet_loss_f64(p, xt, x0, sig, w), 2e-6, what="loss")


def test_only_some_inputs_need_grad(backend_device, seed):
    _, dev = backend_device
    p = torch.randn(2, 2, 4, 6, device=dev, requires_grad=True)
    xt, x0 = torch.randn(2, 2, 4, 6, device=dev), torch.randn(2, 2, 4, 6, device=dev)
    sig = torch.rand(2, device=dev)
    out = wavelet_loss(p, xt, x0, sig, levels=2, band_weights=(0.0, 1.0, 1.0, 1.0))
    out.backward()
    ref = wavelet_loss_f64(p, xt, x0, sig, None, 2, (0.0, 1.0, 1.0, 1.0))
    _close(p.grad, _grads(ref, [p])[0], 2e-6, what="grad")


def test_gradcheck(backend_device, seed):
    _, dev = backend_device
    p, xt, x0 = [torch.randn(2, 2, 5, 3, dtype=torch.float64, device=dev, requires_grad=True) for _ in range(3)]
    sig = torch.rand(2, dtype=torch.float64, device=dev, requires_grad=True)
    w = torch.rand(2, dtype=torch.float64, device=dev, requires_grad=True)

    def f(p, xt, x0, sig, w):
        return wavelet_loss(p, xt, x0, sig, w, levels=2, band_weights=(0.5, 1.0, 2.0, 3.0), reduction="none")

    # fast mode (random projections) keeps the interpreter run short; the CPU path runs the full check
    fast = backend.select(p) == "triton"
    assert torch.autograd.gradcheck(f, (p, xt, x0, sig, w), eps=1e-6, atol=1e-8, fast_mode=fast)


def test_deterministic(backend_device, seed):
    _, dev = backend_device
    (p, xt, x0), sig, w = _inputs((2, 4, 20, 36), dev, torch.bfloat16)
    a = wavelet_loss(p, xt, x0, sig.float(), w.float(), levels=2)
    ga = _grads(a, [p])[0]
    b = wavelet_loss(p, xt, x0, sig.float(), w.float(), levels=2)
    gb = _grads(b, [p])[0]
    assert torch.equal(a, b) and torch.equal(ga, gb)


@pytest.mark.parametrize("levels", [1, 5])
def test_gpu_tile_sizes_under_interpreter(seed, monkeypatch, levels):
    """The fixed GPU tiles (16 x 128 pixels, 32 rows for J = 5) on an image spanning several tiles
    with ragged edges, run by the Triton interpreter."""
    if not (backend.HAS_TRITON and backend.interpreter_enabled()):
        pytest.skip("needs the Triton interpreter")
    import d4k_kernels.ops._wlf_triton as wl

    orig = wl.tiles
    monkeypatch.setattr(wl, "tiles", lambda H, W, J, fixed=True: orig(H, W, J, True))
    (p, xt, x0), sig, w = _inputs((1, 2, 37, 141), "cpu", torch.bfloat16)
    bw = [0.5 + 0.25 * k for k in range(1 + 3 * levels)]
    with backend.prefer("triton"):
        out = wavelet_loss(p, xt, x0, sig.float(), w.float(), levels=levels, band_weights=bw)
        g = _grads(out, [p])[0]
    ref = wavelet_loss_f64(p, xt, x0, sig.float(), w.float(), levels, bw)
    _close(out, ref, 1e-5, what="loss")
    _close(g, _grads(ref, [p])[0], 1e-2, what="grad")


def test_coefficient_count_matches_pytorch_wavelets():
    for shape, J in [((1, 3, 7, 9), 1), ((1, 2, 13, 17), 3), ((1, 1, 1, 1), 2), ((1, 4, 16, 16), 4)]:
        yl, yh = ptw.DWTForward(J=J, mode="zero", wave="haar")(torch.zeros(shape))
        assert coefficient_count(shape, J) == yl.numel() + sum(h.numel() for h in yh)


# ----------------------------------------------------------------------------------------------
# wavelet_loss_and_grad: the loss and d loss / d model_pred without autograd
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape,levels,bw,reduction,dtype", [
    ((2, 3, 8, 12), 1, None, "mean", torch.float64),
    ((3, 2, 7, 5), 2, (0.5, 2.0, 1.0, 3.0), "sum", torch.float64),
    ((2, 4, 9, 16), 3, "per_level", "none", torch.float32),
    ((2, 4, 16, 10), 1, None, "mean", torch.bfloat16),
    ((1, 1, 1, 1), 1, None, "mean", torch.float16),
])
def test_loss_and_grad_matches_autograd(backend_device, seed, shape, levels, bw, reduction, dtype):
    """Equal to wavelet_loss and its autograd gradient (same kernels: bit-equal loss), and to the
    float64 reference; reduction 'none' gives the gradient of the per-sample losses' sum."""
    _, dev = backend_device
    if bw == "per_level":
        bw = tuple(float(v) for v in torch.rand(1 + 3 * levels).add(0.25))
    (p, xt, x0), sig, w = _inputs(shape, dev, dtype)
    loss, g = wavelet_loss_and_grad(p, xt, x0, sig, w, levels=levels, band_weights=bw, reduction=reduction)
    assert not loss.requires_grad and not g.requires_grad
    assert g.shape == p.shape and g.dtype == p.dtype and g.is_contiguous()
    ref = wavelet_loss(p, xt, x0, sig, w, levels=levels, band_weights=bw, reduction=reduction)
    assert torch.equal(loss, ref.detach())
    g_ref = torch.autograd.grad(ref.sum(), p)[0]
    assert torch.equal(g, g_ref)
    exact = wavelet_loss_f64(p, xt, x0, sig, w, levels, bw, reduction=reduction)
    g_exact = _grads(exact.sum(), [p])[0]
    tol = {torch.float64: 1e-12, torch.float32: 2e-6, torch.bfloat16: 1e-2, torch.float16: 2e-3}[dtype]
    _close(loss, exact, max(tol, 2e-6) if dtype != torch.float64 else tol, what="loss vs float64")
    _close(g, g_exact, tol, what="grad vs float64")


def test_loss_and_grad_non_contiguous_mixed(backend_device, seed):
    """Strided views (a transposed model_pred, a sliced x0) and mixed dtypes: the gradient comes back
    contiguous in model_pred's dtype and equals autograd's."""
    _, dev = backend_device
    p = torch.randn(2, 3, 10, 7, dtype=torch.float64, device=dev).to(torch.bfloat16).transpose(2, 3)
    xt = torch.randn(2, 3, 7, 10, device=dev)
    x0 = torch.randn(2, 3, 7, 20, device=dev, dtype=torch.float16)[..., ::2]
    sig, w = torch.rand(2, device=dev), torch.rand(2, device=dev) + 0.5
    assert not p.is_contiguous() and not x0.is_contiguous()
    loss, g = wavelet_loss_and_grad(p, xt, x0, sig, w, levels=2)
    pg = p.detach().clone().requires_grad_(True)
    ref = wavelet_loss(pg, xt, x0, sig, w, levels=2)
    g_ref = torch.autograd.grad(ref, pg)[0]
    assert g.is_contiguous() and g.dtype == torch.bfloat16 and g.shape == p.shape
    assert torch.equal(loss, ref.detach())
    assert torch.equal(g, g_ref.contiguous())


def test_loss_and_grad_drives_backward(backend_device, seed):
    """The documented swap: model_pred.backward(grad) gives a module's parameters the gradients of
    wavelet_loss(...).backward(); inputs that require grad are not touched."""
    _, dev = backend_device
    lin = torch.nn.Conv2d(4, 4, 1).to(dev, torch.float64)
    (x, xt, x0), sig, w = _inputs((2, 4, 6, 10), dev, torch.float64)
    xt.requires_grad_(True)
    out = lin(x)
    wavelet_loss(out, xt, x0, sig, w, levels=2).backward()
    ref = [q.grad.clone() for q in lin.parameters()]
    lin.zero_grad()
    xt.grad = None
    out = lin(x)
    loss, g = wavelet_loss_and_grad(out, xt, x0, sig, w, levels=2)
    out.backward(g)
    for a, b in zip(lin.parameters(), ref):
        _close(a.grad, b, 1e-12, what="parameter grad")
    assert xt.grad is None


def test_loss_and_grad_bad_inputs():
    p = torch.randn(2, 3, 4, 4)
    with pytest.raises(TypeError, match="sigmas"):
        wavelet_loss_and_grad(p, p, p, None)
    with pytest.raises(ValueError, match="reduction"):
        wavelet_loss_and_grad(p, p, p, torch.rand(2), reduction="max")
    with pytest.raises(ValueError, match="weighting"):
        wavelet_loss_and_grad(p, p, p, torch.rand(2), torch.rand(3))
    with pytest.raises(ValueError):
        wavelet_loss_and_grad(p, p[:, :2], p, torch.rand(2))


def test_loss_and_grad_torch_compile(backend_device, seed):
    _, dev = backend_device
    torch._dynamo.reset()
    (p, xt, x0), sig, w = _inputs((2, 3, 6, 7), dev, torch.float32, grad=False)
    cf = torch.compile(lambda *a: wavelet_loss_and_grad(*a, levels=2), fullgraph=True, backend="aot_eager")
    loss, g = cf(p, xt, x0, sig.float(), w.float())
    ref = wavelet_loss_f64(p, xt, x0, sig, w, 2)
    p64 = p.detach().double().requires_grad_(True)
    g_ref = torch.autograd.grad(wavelet_loss_f64(p64, xt, x0, sig, w, 2), p64)[0]
    _close(loss, ref, 2e-6, what="compiled loss")
    _close(g, g_ref, 2e-6, what="compiled grad")


# ----------------------------------------------------------------------------------------------
# torch.compile and bad inputs
# ----------------------------------------------------------------------------------------------
def test_torch_compile_fullgraph(backend_device, seed):
    """fullgraph=True: the registered ops keep the graph whole; on the CPU path and on the Triton
    kernels (interpreter / CUDA) behind the op."""
    _, dev = backend_device
    torch._dynamo.reset()
    p = torch.randn(2, 3, 6, 7, device=dev, requires_grad=True)
    xt, x0 = torch.randn(2, 3, 6, 7, device=dev), torch.randn(2, 3, 6, 7, device=dev)
    sig, w = torch.rand(2, 1, 1, 1, device=dev), torch.rand(2, 1, 1, 1, device=dev)

    def f(p, xt, x0, sig, w):
        return wavelet_loss(p, xt, x0, sig, w, levels=2, band_weights=(1.0, 2.0, 0.5, 1.0))

    cf = torch.compile(f, fullgraph=True, backend="aot_eager")
    out = cf(p, xt, x0, sig, w)
    g = torch.autograd.grad(out, p)[0]
    ref = wavelet_loss_f64(p, xt, x0, sig, w, 2, (1.0, 2.0, 0.5, 1.0))
    _close(out, ref, 2e-6, what="compiled loss")
    _close(g, _grads(ref, [p])[0], 2e-6, what="compiled grad")


def test_registered_op_opcheck_and_grads(backend_device, seed):
    """The torch.library ops (used under torch.compile): opcheck (schema, fake, autograd
    registration) and gradients equal to the eager path's."""
    _, dev = backend_device
    p = torch.randn(2, 3, 5, 6, device=dev, requires_grad=True)
    xt = torch.randn(2, 3, 5, 6, device=dev, requires_grad=True)
    x0 = torch.randn(2, 3, 5, 6, device=dev)
    sig = torch.rand(2, device=dev, requires_grad=True)
    weights = [1.0, 2.0, 0.5, 3.0, 1.5, 0.25, 2.0]
    op = torch.ops.d4k.wavelet_energy.default
    torch.library.opcheck(op, (p, xt, x0, sig, weights, 2),
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))
    e_op = op(p, xt, x0, sig, weights, 2)
    e_ref = wavelet_loss_f64(p, xt, x0, sig, None, 2, weights, "none") * coefficient_count(p.shape, 2)
    _close(e_op, e_ref, 2e-6, what="energy")
    up = torch.rand(2, device=dev)
    for g, gr in zip(torch.autograd.grad(e_op, [p, xt, sig], up), torch.autograd.grad(e_ref, [p, xt, sig], up.double())):
        _close(g, gr, 2e-6, what="op grad")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_opcheck(seed, impl, dtype):
    """torch.library.opcheck (schema, fake, autograd registration, AOT dispatch) of
    d4k::wavelet_energy and d4k::wavelet_energy_backward on each implementation, with and without
    x_t, from non-contiguous inputs. The backward op has no derivative of its own, so its inputs do
    not require grad."""
    if impl == "triton" and not (backend.HAS_TRITON and backend.interpreter_enabled()):
        pytest.skip("needs the Triton interpreter")
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    p = torch.randn(2, 3, 6, 5, dtype=torch.float64).to(dtype).transpose(-1, -2).requires_grad_(True)
    xt = torch.randn(2, 3, 5, 6, dtype=torch.float64).to(dtype).requires_grad_(True)
    x0 = torch.randn(2, 3, 5, 12, dtype=torch.float64).to(dtype)[..., ::2]
    sig = torch.rand(2, dtype=acc, requires_grad=True)
    ge = torch.rand(2, dtype=acc)
    weights = [1.0, 2.0, 0.5, 3.0, 1.5, 0.25, 2.0]
    assert not p.is_contiguous() and not x0.is_contiguous()
    with backend.prefer("triton" if impl == "triton" else "cpu"):
        assert backend.choose("wavelet_energy", p) == impl
        for x_t in (xt, None):
            torch.library.opcheck(torch.ops.d4k.wavelet_energy.default, (p, x_t, x0, sig, weights, 2))
            need = [True, x_t is not None, True, True]
            args = (ge, p.detach(), x_t.detach() if x_t is not None else None, x0, sig.detach(), weights, 2, need)
            torch.library.opcheck(torch.ops.d4k.wavelet_energy_backward.default, args)


def test_forward_ad_and_torch_func(backend_device, seed):
    """Under forward-mode AD and torch.func transforms the loss runs the torch path op by op
    (ops/_route.py), on every backend: jvp and forward AD give <autograd gradient, tangent>,
    torch.func.grad gives autograd's gradient, vmap gives the per-sample losses."""
    from torch.autograd import forward_ad as fwAD

    _, dev = backend_device
    (p, xt, x0), sig, w = _inputs((2, 3, 6, 5), dev, torch.float64, grad=False)
    t = torch.randn_like(p)
    for bw in ((1.0, 2.0, 0.5, 3.0), None):                  # a transform, and the Parseval shortcut

        def f(p):
            return wavelet_loss(p, xt, x0, sig, w, levels=2, band_weights=bw)

        pr = p.clone().requires_grad_(True)
        g = torch.autograd.grad(f(pr), pr)[0]
        value, tangent = torch.func.jvp(f, (p,), (t,))
        _close(value, f(p), 1e-12, what="jvp value")
        _close(tangent, (g * t).sum(), 1e-12, what="jvp tangent")
        _close(torch.func.grad(f)(p), g, 1e-12, what="func.grad")
        with fwAD.dual_level():
            out = f(fwAD.make_dual(p, t))
            _close(fwAD.unpack_dual(out).tangent, (g * t).sum(), 1e-12, what="forward AD")
        per_sample = torch.func.vmap(lambda a, b, c, s: wavelet_loss(a[None], b[None], c[None], s[None],
                                                                     levels=2, band_weights=bw))(p, xt, x0, sig)
        _close(per_sample, wavelet_loss(p, xt, x0, sig, levels=2, band_weights=bw, reduction="none"), 1e-12,
               what="vmap")


def test_bad_inputs():
    x = torch.randn(2, 3, 4, 4)
    s = torch.rand(2)
    with pytest.raises(ValueError, match="model_pred must have 4 dimensions"):
        wavelet_loss(torch.randn(3, 4, 4), x, x, s)
    with pytest.raises(ValueError, match=r"latents has shape \(2, 3, 4, 5\)"):
        wavelet_loss(x, x, torch.randn(2, 3, 4, 5), s)
    with pytest.raises(TypeError, match="int64"):
        wavelet_loss(x.long(), x, x, s)
    with pytest.raises(ValueError, match="levels must be >= 1, got 0"):
        wavelet_loss(x, x, x, s, levels=0)
    with pytest.raises(ValueError, match="levels must be <= 5, got 6"):
        wavelet_loss(x, x, x, s, levels=6)
    with pytest.raises(ValueError, match="'avg'"):
        wavelet_loss(x, x, x, s, reduction="avg")
    with pytest.raises(ValueError, match="got 5"):
        wavelet_loss(x, x, x, s, levels=2, band_weights=[1, 2, 3, 4, 5])
    with pytest.raises(ValueError, match="requires grad"):
        wavelet_loss(x, x, x, s, band_weights=torch.ones(4, requires_grad=True))
    for bad in ([1.0, -2.0, 1.0, 1.0], [1.0, float("nan"), 1.0, 1.0], torch.tensor([1.0, 1.0, float("inf"), 1.0])):
        with pytest.raises(ValueError, match="band_weights must be finite and >= 0"):
            wavelet_loss(x, x, x, s, band_weights=bad)
    with pytest.raises(ValueError, match=r"sigmas must have shape \(2,\) or \(2, 1, 1, 1\), got \(3,\)"):
        wavelet_loss(x, x, x, torch.rand(3))
    with pytest.raises(ValueError, match=r"weighting must have shape .* got \(2, 3\)"):
        wavelet_loss(x, x, x, s, weighting=torch.rand(2, 3))
    with pytest.raises(TypeError, match="sigmas must be given"):
        wavelet_loss(x, x, x, None)
    with pytest.raises(ValueError, match=r"model_pred is empty \(shape \(2, 3, 0, 4\)\)"):
        e = torch.randn(2, 3, 0, 4)
        wavelet_loss(e, e, e, s)
    with pytest.raises(ValueError, match="target has shape"):
        wavelet_mse(x, torch.randn(2, 3, 4, 2))


# ----------------------------------------------------------------------------------------------
# the kernels compile for a real GPU (no GPU needed) and the contiguous path uses vector loads
# ----------------------------------------------------------------------------------------------
_COMPILE_SCRIPT = r"""
import re
import triton, triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from d4k_kernels.ops import _wlf_triton as wl
FP32 = ("sigma_ptr", "bw_ptr", "part_ptr", "go_ptr", "w_ptr", "epart_ptr")
DIV16 = ("H", "W", "sp_n", "sp_c", "sp_h", "st_n", "st_c", "st_h", "s0_n", "s0_c", "s0_h")
jobs = [(wl._wl_fwd_kernel, 1, True, {}), (wl._wl_fwd_kernel, 5, False, {}),
        (wl._wl_bwd_kernel, 1, True, dict(W_PRED=True, W_XT=False, W_X0=False, W_SIGMA=False)),
        (wl._wl_bwd_kernel, 5, True, dict(W_PRED=True, W_XT=True, W_X0=False, W_SIGMA=False)),
        (wl._wl_bwd_kernel, 3, True, dict(W_PRED=True, W_XT=True, W_X0=True, W_SIGMA=True)),
        (wl._wl_bwd_kernel, 1, False, dict(W_PRED=True, W_XT=False, W_X0=False, W_SIGMA=False))]
for kern, levels, unit, flags in jobs:
    names = kern.arg_names
    bh, bw, _, _ = wl.tiles(4096, 4096, levels)
    const = dict(HAS_XT=True, LEVELS=levels, BH=bh, BW=bw, ACC=tl.float32, UNIT_W=unit, **flags)
    sig = {n: "constexpr" if n in const else (("*fp32" if n in FP32 else "*bf16") if n.endswith("_ptr")
                                              else "i32")
           for n in names}
    consts = {(names.index(n),): v for n, v in const.items()}
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in names if n.endswith("_ptr") or n in DIV16}
    k = triton.compile(ASTSource(fn=kern, signature=sig, constexprs=consts, attrs=attrs),
                       target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
    ptx = k.asm["ptx"]
    if unit:  # 16-byte loads of the bf16 inputs on the contiguous path
        assert re.search(r"ld\.global(\.\w+)*\.v4", ptx), (levels, flags)
fin = wl._wl_finish_kernel
for per_sample in (False, True):
    const = dict(PER_SAMPLE=per_sample, BLOCK=1024, ACC=tl.float32)
    names = fin.arg_names
    sig = {n: "constexpr" if n in const else ("*fp32" if n.endswith("_ptr") else "i32") for n in names}
    consts = {(names.index(n),): v for n, v in const.items()}
    triton.compile(ASTSource(fn=fin, signature=sig, constexprs=consts), target=GPUTarget("cuda", 90, 32),
                   options={"num_warps": 4})
resc = wl._wl_rescale_kernel
for acc_t in ("fp32",):
    names = resc.arg_names
    const = dict(BLOCK=4096, ACC=tl.float32)
    sig = {"g_ptr": "*bf16", "go_ptr": "*" + acc_t, "go_stride": "i32", "per_sample": "i32", "BLOCK": "constexpr",
           "ACC": "constexpr"}
    consts = {(names.index(n),): v for n, v in const.items()}
    triton.compile(ASTSource(fn=resc, signature=sig, constexprs=consts), target=GPUTarget("cuda", 90, 32),
                   options={"num_warps": 4})
print("compiled")
"""


@pytest.mark.skipif(not backend.HAS_TRITON, reason="needs triton")
def test_kernels_compile_for_sm90():
    """Compile forward (1 and 5 levels) and backward kernels for sm_90 in a process without the
    interpreter: the GPU compiler accepts what the interpreter runs, and contiguous bf16 inputs
    are read with vector loads."""
    from gpu_compile import assert_compiles_for_sm90

    assert_compiles_for_sm90(_COMPILE_SCRIPT)


@pytest.mark.cuda
@pytest.mark.parametrize("shape,levels,bw", [((4, 16, 512, 512), 1, None), ((2, 16, 333, 517), 3, (1.0, 2.0, 0.5, 3.0)),
                                             ((1, 16, 256, 256), 2, None)])
def test_cuda_matches_cpu_path(seed, shape, levels, bw):
    dev = torch.device("cuda")
    p = torch.randn(shape, device=dev, dtype=torch.bfloat16, requires_grad=True)
    xt, x0 = torch.randn(shape, device=dev, dtype=torch.bfloat16), torch.randn(shape, device=dev, dtype=torch.bfloat16)
    sig, w = torch.rand(shape[0], device=dev), torch.rand(shape[0], device=dev)
    out = wavelet_loss(p, xt, x0, sig, w, levels=levels, band_weights=bw)
    g = torch.autograd.grad(out, p)[0]
    with backend.prefer("cpu"):
        ref = wavelet_loss(p, xt, x0, sig, w, levels=levels, band_weights=bw)
        gr = torch.autograd.grad(ref, p)[0]
    _close(out, ref, 1e-5, what="loss")
    _close(g, gr, 1e-2, what="grad")
    a = wavelet_loss(p, xt, x0, sig, w, levels=levels, band_weights=bw)
    assert torch.equal(a, out)  # deterministic on the GPU too


@pytest.mark.cuda
def test_cuda_over_2_31_elements(seed):
    """(1, 33, 8192, 8192) bf16 inputs (2.2e9 elements each): int64 indexing. With equal band
    weights the loss is the mean of d**2 (orthonormal pyramid) and the gradient -sigma*2*w/count*d;
    the loss is checked channel by channel, the gradient on the last rows of the last channel."""
    dev = torch.device("cuda")
    shape = (1, 33, 8192, 8192)
    p = torch.empty(shape, device=dev, dtype=torch.bfloat16).uniform_(-1, 1).requires_grad_(True)
    xt = torch.empty(shape, device=dev, dtype=torch.bfloat16).uniform_(-1, 1)
    x0 = torch.empty(shape, device=dev, dtype=torch.bfloat16).uniform_(-1, 1)
    assert p.numel() > 2**31
    sig, w = torch.tensor([0.3], device=dev), torch.tensor([1.7], device=dev)
    out = wavelet_loss(p, xt, x0, sig, w)
    g = torch.autograd.grad(out, p)[0]
    count = coefficient_count(shape, 1)
    with torch.no_grad():
        tot = sum(((xt[:, c].float() - 0.3 * p[:, c].float() - x0[:, c].float()) ** 2).sum(dtype=torch.float64)
                  for c in range(shape[1]))
        ref = 1.7 * tot / count
        _close(out, ref, 1e-4, what="loss")
        d_tail = xt[0, -1, -4:].float() - 0.3 * p[0, -1, -4:].float() - x0[0, -1, -4:].float()
        _close(g[0, -1, -4:], -0.3 * 2 * 1.7 / count * d_tail, 1e-2, what="grad tail")
