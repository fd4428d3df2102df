"""d4k_kernels.wavelet_loss / wavelet_mse against independent references:

* the Diffusion-4K training-script formula written with pytorch_wavelets (float64 and bf16),
* plain x0-space MSE (even sizes) and the exact odd-size ratio,
* a float64 multi-level Haar written plainly (d4k_kernels/reference/wavelet_loss.py) and
  pytorch_wavelets' multi-level DWTForward for levels > 1 and per-band weights.
Every test that takes ``backend_device`` runs on each of its backends (CPU torch path, Triton kernels
under the interpreter, Triton on CUDA when present). How the loss runs (wavelet_loss_and_grad,
torch.compile, the registered ops, forward AD, the kernels on a GPU): tests/test_wavelet_loss_paths.py.
"""
import math

import pytest
import torch

from d4k_kernels import backend
from d4k_kernels.ops.wavelet_loss import coefficient_count, wavelet_loss, wavelet_mse
from d4k_kernels.reference.peers import import_pytorch_wavelets
from d4k_kernels.reference.wavelet_loss import released_formula, wavelet_loss_f64, wavelet_mse_f64
from wlf_testing import close, grads, inputs

ptw = import_pytorch_wavelets()


# ----------------------------------------------------------------------------------------------
# the released formula (pytorch_wavelets), default arguments
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(2, 4, 8, 12), (3, 2, 7, 5), (1, 1, 2, 2), (2, 3, 1, 9)])
def test_released_formula_float64(backend_device, seed, shape):
    _, dev = backend_device
    (p, xt, x0), sig, w = inputs(shape, dev, torch.float64)
    dwt = ptw.DWTForward(J=1, mode="zero", wave="haar").to(dev, torch.float64)
    ref = released_formula(p, xt, x0, sig.view(-1, 1, 1, 1), w.view(-1, 1, 1, 1), dwt=dwt)
    gref = grads(ref, [p, xt, x0])
    out = wavelet_loss(p, xt, x0, sig.view(-1, 1, 1, 1), w.view(-1, 1, 1, 1))
    assert out.dtype == torch.float64 and out.shape == ()
    # the script casts to float32 (.float()) before squaring: float32 rounding
    close(out, ref, 1e-6, what="loss")
    close(out, wavelet_loss_f64(p, xt, x0, sig, w), 1e-12, what="loss vs float64 reference")
    g64 = grads(wavelet_loss_f64(p, xt, x0, sig, w), [p, xt, x0])
    for g, gr, g2, n in zip(grads(out, [p, xt, x0]), gref, g64, ("model_pred", "x_t", "x0")):
        assert g.dtype == torch.float64
        close(g, gr, 1e-6, what=f"grad {n}")
        close(g, g2, 1e-12, what=f"grad {n} vs float64 reference")  # float64 end to end


@pytest.mark.parametrize("shape", [(2, 4, 16, 10), (2, 3, 9, 7)])
def test_released_formula_bf16(backend_device, seed, shape):
    """bf16 inputs: d4k computes in fp32 from the bf16 values; the script computes x0_pred and the
    DWT in bf16 (pytorch_wavelets' bf16 filters are 0.70703125). Both are compared with the float64
    loss of the same bf16 inputs; d4k must be at least as close as the script, and the two agree to
    bf16 tolerance."""
    _, dev = backend_device
    (p, xt, x0), sig, w = inputs(shape, dev, torch.bfloat16)
    sig_b = sig.to(torch.bfloat16).view(-1, 1, 1, 1)
    dwt = ptw.DWTForward(J=1, mode="zero", wave="haar").to(dev, torch.bfloat16)
    rel = released_formula(p, xt, x0, sig_b, w.view(-1, 1, 1, 1).float(), dwt=dwt)
    g_rel = grads(rel, [p])[0]
    exact = wavelet_loss_f64(p, xt, x0, sig_b.double(), w)
    g_exact = grads(exact, [p])[0]
    out = wavelet_loss(p, xt, x0, sig_b, w)
    g = grads(out, [p])[0]
    assert out.dtype == torch.float32 and g.dtype == torch.bfloat16
    close(out, exact, 1e-5, what="loss vs float64")
    close(out, rel, 2e-2, what="loss vs script in bf16")
    assert abs(out.item() - exact.item()) <= abs(rel.item() - exact.item()) + 1e-6 * exact.item()
    close(g, g_exact, 1e-2, what="grad vs float64")  # bf16 output rounding
    close(g, g_rel, 5e-2, what="grad vs script in bf16")


# ----------------------------------------------------------------------------------------------
# x0-space MSE: equal for even sizes, the exact ratio for odd ones
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(2, 3, 6, 8), (1, 2, 2, 16)])
def test_even_equals_x0_mse(backend_device, seed, shape):
    _, dev = backend_device
    (p, xt, x0), sig, w = inputs(shape, dev, grad=False)
    s = sig.float().view(-1, 1, 1, 1)
    mse = (w.float().view(-1, 1, 1, 1) * (xt - s * p - x0) ** 2).mean(dim=(1, 2, 3)).mean()
    out = wavelet_loss(p, xt, x0, sig.float(), w.float())
    close(out, mse, 2e-6, what="even size vs x0-MSE")


@pytest.mark.parametrize("hw", [(7, 9), (5, 4), (1, 1), (3, 2)])
def test_odd_size_ratio(backend_device, seed, hw):
    _, dev = backend_device
    H, W = hw
    (p, xt, x0), sig, _ = inputs((2, 3, H, W), dev, torch.float64, grad=False)
    per_sample_mse = ((xt - sig.view(-1, 1, 1, 1) * p - x0) ** 2).mean(dim=(1, 2, 3))
    out = wavelet_loss(p, xt, x0, sig, reduction="none")
    ratio = H * W / (4 * math.ceil(H / 2) * math.ceil(W / 2))
    close(out, per_sample_mse * ratio, 1e-12, what="odd-size ratio")


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
    (p, xt, x0), sig, w = inputs(shape, dev, torch.float32)
    bw = _bw(spec, levels)
    ref = wavelet_loss_f64(p, xt, x0, sig, w, levels, bw, reduction)
    out = wavelet_loss(p, xt, x0, sig.float(), w.float(), levels=levels, band_weights=bw, reduction=reduction)
    assert out.shape == ref.shape
    close(out, ref, 2e-6, what="loss")
    up = torch.ones_like(ref) if reduction == "none" else None
    gref = torch.autograd.grad(ref, [p, xt, x0], up)
    gout = torch.autograd.grad(out, [p, xt, x0], None if up is None else up.float())
    for g, gr, n in zip(gout, gref, ("model_pred", "x_t", "x0")):
        close(g, gr, 2e-6, what=f"grad {n}")


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
    close(out, tot / cnt, 1e-6, what="wavelet_mse vs pytorch_wavelets")
    close(out, wavelet_mse_f64(a, b, levels, bw, reduction="none"), 1e-12, what="wavelet_mse vs float64")


def test_wavelet_mse_default_equals_mse(backend_device, seed):
    _, dev = backend_device
    a = torch.randn(2, 3, 10, 6, device=dev, requires_grad=True)
    b = torch.randn(2, 3, 10, 6, device=dev)
    out = wavelet_mse(a, b)
    ref = torch.nn.functional.mse_loss(a, b)
    close(out, ref, 2e-6, what="loss")
    close(torch.autograd.grad(out, a)[0], torch.autograd.grad(ref, a)[0], 2e-6, what="grad")


def test_wavelet_mse_weighting_sum(backend_device, seed):
    _, dev = backend_device
    a = torch.randn(3, 2, 5, 6, device=dev)
    b = torch.randn(3, 2, 5, 6, device=dev)
    w = torch.rand(3, device=dev)
    out = wavelet_mse(a, b, levels=2, band_weights=(1.0, 0.5, 0.5, 2.0), weighting=w, reduction="sum")
    ref = wavelet_mse_f64(a, b, 2, (1.0, 0.5, 0.5, 2.0), w, "sum")
    close(out, ref, 2e-6, what="sum")


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
    close(out, tot / coefficient_count(a.shape, levels), 1e-12, what="vs dwt2")


# ----------------------------------------------------------------------------------------------
# dtypes, layouts, sigma / weighting forms and their gradients
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_dtypes(backend_device, seed, dtype):
    _, dev = backend_device
    (p, xt, x0), sig, w = inputs((2, 3, 6, 5), dev, dtype)
    out = wavelet_loss(p, xt, x0, sig.float(), w.float(), levels=2, band_weights=(1.0, 2.0, 0.5, 1.0))
    ref = wavelet_loss_f64(p, xt, x0, sig.float(), w.float(), 2, (1.0, 2.0, 0.5, 1.0))
    assert out.dtype == torch.float32
    close(out, ref, 1e-5, what="loss")
    gs = grads(out, [p, xt, x0])
    grs = grads(ref, [p, xt, x0])
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    for g, gr in zip(gs, grs):
        assert g.dtype == dtype and g.shape == p.shape
        close(g, gr, tol, what=f"grad {dtype}")


def test_mixed_dtypes(backend_device, seed):
    _, dev = backend_device
    p = torch.randn(2, 2, 6, 6, device=dev, dtype=torch.bfloat16, requires_grad=True)
    xt = torch.randn(2, 2, 6, 6, device=dev, dtype=torch.float32, requires_grad=True)
    x0 = torch.randn(2, 2, 6, 6, device=dev, dtype=torch.float16, requires_grad=True)
    sig = torch.rand(2, device=dev)
    out = wavelet_loss(p, xt, x0, sig)
    ref = wavelet_loss_f64(p, xt, x0, sig)
    close(out, ref, 1e-5, what="loss")
    gp, gt, g0 = grads(out, [p, xt, x0])
    assert (gp.dtype, gt.dtype, g0.dtype) == (torch.bfloat16, torch.float32, torch.float16)
    close(gt, grads(ref, [xt])[0], 1e-5, what="grad x_t")


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
    close(out, ref, 2e-6, what="loss")
    for g, gr in zip(grads(out, [p, x0]), grads(ref, [p, x0])):
        close(g, gr, 2e-6, what="grad")


def test_expanded_input(backend_device, seed):
    """A broadcast (stride-0) x0 is read in place."""
    _, dev = backend_device
    p = torch.randn(2, 3, 6, 4, device=dev)
    xt = torch.randn(2, 3, 6, 4, device=dev)
    x0 = torch.randn(1, 3, 6, 4, device=dev).expand(2, 3, 6, 4)
    sig = torch.rand(2, device=dev)
    close(wavelet_loss(p, xt, x0, sig), wavelet_loss_f64(p, xt, x0, sig), 2e-6, what="loss")


@pytest.mark.parametrize("sig_shape,reduction", [("n", "mean"), ("n111", "sum"), ("n", "none")])
def test_sigma_and_weighting_grads(backend_device, seed, sig_shape, reduction):
    _, dev = backend_device
    (p, xt, x0), sig, w = inputs((3, 2, 5, 6), dev, torch.float64)
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
        close(g, gr, 1e-11, what=f"grad {n}")


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_upstream_gradient_not_one(backend_device, seed, reduction):
    """On the Triton path the gradient is computed in the forward pass for an upstream gradient of
    1 and rescaled in the backward: check scaled / per-sample upstream gradients, and a second
    backward through a retained graph (which recomputes)."""
    _, dev = backend_device
    (p, xt, x0), sig, w = inputs((3, 2, 6, 10), dev, torch.float32)
    bw = (1.0, 2.0, 0.5, 3.0)
    out = wavelet_loss(p, xt, x0, sig.float(), w.float(), levels=2, band_weights=bw, reduction=reduction)
    ref = wavelet_loss_f64(p, xt, x0, sig, w, 2, bw, reduction)
    up = (0.25 + torch.rand(ref.shape, dtype=torch.float64, device=dev)) * 3.0
    first = torch.autograd.grad(out, [p, xt, x0], up.float(), retain_graph=True)
    second = torch.autograd.grad(out, [p, xt, x0], (2 * up).float())
    grs = torch.autograd.grad(ref, [p, xt, x0], up)
    for a, b, gr in zip(first, second, grs):
        close(a, gr, 2e-6, what="grad")
        close(b, 2 * gr, 2e-6, what="grad, second backward")


def test_weighting_grad_with_fused_gradient(backend_device, seed):
    """weighting requires grad, sigmas do not: the fused forward+gradient path plus E for dL/dw."""
    _, dev = backend_device
    (p, xt, x0), sig, w = inputs((3, 2, 5, 8), dev, torch.float64)
    w = w.clone().requires_grad_(True)
    out = wavelet_loss(p, xt, x0, sig, w, levels=2, band_weights=(1.0, 2.0, 0.5, 3.0))
    ref = wavelet_loss_f64(p, xt, x0, sig, w, 2, (1.0, 2.0, 0.5, 3.0))
    for g, gr in zip(grads(2.5 * out, [p, x0, w]), grads(2.5 * ref, [p, x0, w])):
        close(g, gr, 1e-12, what="grad")


def test_no_grad_forward(backend_device, seed):
    _, dev = backend_device
    (p, xt, x0), sig, w = inputs((2, 2, 4, 6), dev, torch.float32)
    with torch.no_grad():
        out = wavelet_loss(p, xt, x0, sig.float(), w.float())
    assert not out.requires_grad
    close(out, wavelet_loss_f64(p, xt, x0, sig, w), 2e-6, what="loss")


def test_only_some_inputs_need_grad(backend_device, seed):
    _, dev = backend_device
    p = torch.randn(2, 2, 4, 6, device=dev, requires_grad=True)
    xt, x0 = torch.randn(2, 2, 4, 6, device=dev), torch.randn(2, 2, 4, 6, device=dev)
    sig = torch.rand(2, device=dev)
    out = wavelet_loss(p, xt, x0, sig, levels=2, band_weights=(0.0, 1.0, 1.0, 1.0))
    out.backward()
    ref = wavelet_loss_f64(p, xt, x0, sig, None, 2, (0.0, 1.0, 1.0, 1.0))
    close(p.grad, grads(ref, [p])[0], 2e-6, what="grad")


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
    (p, xt, x0), sig, w = inputs((2, 4, 20, 36), dev, torch.bfloat16)
    a = wavelet_loss(p, xt, x0, sig.float(), w.float(), levels=2)
    ga = grads(a, [p])[0]
    b = wavelet_loss(p, xt, x0, sig.float(), w.float(), levels=2)
    gb = grads(b, [p])[0]
    assert torch.equal(a, b) and torch.equal(ga, gb)


def test_coefficient_count_matches_pytorch_wavelets():
    for shape, J in [((1, 3, 7, 9), 1), ((1, 2, 13, 17), 3), ((1, 1, 1, 1), 2), ((1, 4, 16, 16), 4)]:
        yl, yh = ptw.DWTForward(J=J, mode="zero", wave="haar")(torch.zeros(shape))
        assert coefficient_count(shape, J) == yl.numel() + sum(h.numel() for h in yh)


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
