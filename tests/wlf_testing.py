"""Helpers shared by the wavelet-loss tests (tests/test_wavelet_loss.py, tests/test_wavelet_loss_paths.py):
random loss inputs and a relative closeness check."""
import torch


def inputs(shape, device, dtype=torch.float32, grad=True):
    """([model_pred, x_t, x0] in ``dtype``, each requiring grad if ``grad``), sigma (N,) in [0.05, 1), weighting (N,)
    in [0.5, 1.5), both float64."""
    ts = [torch.randn(shape, dtype=torch.float64).to(device=device, dtype=dtype) for _ in range(3)]
    for t in ts:
        t.requires_grad_(grad)
    n = shape[0]
    sig = torch.rand(n, dtype=torch.float64).clamp_min(0.05).to(device)
    w = (0.5 + torch.rand(n, dtype=torch.float64)).to(device)
    return ts, sig, w


def grads(loss, ts):
    """d loss / d ts."""
    return torch.autograd.grad(loss, ts)


def close(a, b, rtol, atol=0.0, what=""):
    """max |a - b| <= rtol * max |b| + atol (compared in float64 on the CPU)."""
    a, b = a.double().cpu(), b.double().cpu()
    scale = b.abs().max().item() + 1e-30
    err = (a - b).abs().max().item()
    assert err <= rtol * scale + atol, f"{what}: max err {err:.3e} vs scale {scale:.3e}"
