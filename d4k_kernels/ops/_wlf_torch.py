"""The torch path of the wavelet flow-matching loss (ops/wavelet_loss.py): vectorised torch for CPU
tensors, for CUDA tensors under ``backend.prefer("cpu")``, and (``energy(..., functional=True)``,
differentiable op by op) for the composite route: forward-mode AD and torch.func transforms.

The functions have the same names and arguments as the Triton launchers (ops/_wlf_triton.py), and
the same structure: ``d = x_t - sigma * pred - x0`` is formed once, the zero-mode Haar levels are
those of ops/_haar_torch.py, and the gradient is ``2 dL/dE W^T diag(band weights) W d`` (the
adjoint of the levels is the inverse with crops). With all band weights equal the zero-mode
pyramid is orthonormal (its padding is zero), so the energy is ``w * sum(d**2)`` and the adjoint
``w * d``: the transform is skipped, which gives the same loss up to float rounding.
docs/ops.md, Wavelet flow-matching loss.
"""
from __future__ import annotations

from typing import List, Optional

import torch

from .._util import acc_dtype
from ._haar_torch import dwt, idwt

__all__ = ["diff", "finish", "energy", "loss", "energy_grads", "loss_and_grads", "rescale_"]


def diff(pred, x_t, x0, sigma, acc: torch.dtype) -> torch.Tensor:
    """d = x_t - sigma * pred - x0 (x_t may be None) in ``acc``; sigma (N,)."""
    s = sigma.to(acc).view(-1, 1, 1, 1)
    base = -x0.to(acc) if x_t is None else x_t.to(acc) - x0.to(acc)
    return torch.addcmul(base, s, pred.to(acc), value=-1.0)


def finish(e: torch.Tensor, weighting: Optional[torch.Tensor], reduction: str) -> torch.Tensor:
    """The loss from the per-sample energies (already divided by the coefficient count)."""
    if weighting is not None:
        e = weighting.to(e.dtype) * e
    if reduction == "mean":
        return e.mean()
    if reduction == "sum":
        return e.sum()
    return e


def _uniform(weights: List[float]) -> bool:
    return all(w == weights[0] for w in weights)


def _weighted_energy(coeffs: List[torch.Tensor], weights: List[float]) -> torch.Tensor:
    """sum over the pyramid [LL_J, yh_1, ..., yh_J] of band weight * coefficient**2, per sample."""
    e = weights[0] * coeffs[0].square().sum(dim=(1, 2, 3))
    for j, yh in enumerate(coeffs[1:]):
        per_band = yh.square().sum(dim=(1, 3, 4))           # (N, 3): LH, HL, HH over all channels
        for k, band in enumerate(per_band.unbind(1)):
            e = e + weights[1 + 3 * j + k] * band
    return e


def _energy_of_d(d, weights, levels, functional=False):
    if _uniform(weights):   # Parseval: the transform is skipped (module docstring)
        return weights[0] * torch.linalg.vector_norm(d.flatten(1), dim=1).square()
    return _weighted_energy(dwt(d, levels, "zero", functional=functional), weights)


def _energy_and_adjoint(d, weights, levels, want_energy):
    """(E or None, W^T diag(w) W d at d's size)."""
    if _uniform(weights):   # W^T (w I) W = w I
        e = _energy_of_d(d, weights, levels) if want_energy else None
        return e, d * weights[0]
    coeffs = dwt(d, levels, "zero")
    e = _weighted_energy(coeffs, weights) if want_energy else None
    coeffs[0].mul_(weights[0])                             # fresh buffers: weighted in place
    for j, yh in enumerate(coeffs[1:]):
        for k, band in enumerate(yh.unbind(2)):
            band.mul_(weights[1 + 3 * j + k])
    return e, idwt(coeffs[0], coeffs[1:], d.shape[-2], d.shape[-1], "crop")


def _grads_from(g, pred, x_t, x0, sigma, need, acc):
    s = sigma.to(acc).view(-1, 1, 1, 1)
    gp = (-s * g).to(pred.dtype) if need[0] else None
    gt = g.to(x_t.dtype) if (need[1] and x_t is not None) else None
    g0 = (-g).to(x0.dtype) if need[2] else None
    gs = (-(pred.to(acc) * g)).sum(dim=(1, 2, 3)) if need[3] else None
    return gp, gt, g0, gs


def energy(pred, x_t, x0, sigma, weights, levels, functional: bool = False) -> torch.Tensor:
    """Per-sample weighted energy E (N,)."""
    return _energy_of_d(diff(pred, x_t, x0, sigma, acc_dtype(pred, x_t, x0)), weights, levels, functional)


def loss(pred, x_t, x0, sigma, weighting, weights, levels, reduction):
    """(loss, E)."""
    e = energy(pred, x_t, x0, sigma, weights, levels)
    return finish(e, weighting, reduction), e


def energy_grads(go, pred, x_t, x0, sigma, weights, levels, need, weighting=None, n_div: int = 1):
    """Gradients (pred, x_t, x0, sigma) for dL/dE_n = go * weighting_n / n_div (go: () or (N,));
    None where ``need`` says no."""
    acc = acc_dtype(pred, x_t, x0)
    _, g = _energy_and_adjoint(diff(pred, x_t, x0, sigma, acc), weights, levels, False)
    ge = go.to(acc).reshape(-1)
    if weighting is not None:
        ge = ge * weighting.to(acc)
    if n_div != 1:
        ge = ge / n_div
    return _grads_from(g * (2.0 * ge).view(-1, 1, 1, 1), pred, x_t, x0, sigma, need, acc)


def loss_and_grads(pred, x_t, x0, sigma, weighting, weights, levels, reduction, need):
    """The fused forward: d once, the loss and the gradients for an upstream gradient of 1:
    (loss, E, (grad pred, grad x_t, grad x0))."""
    acc = acc_dtype(pred, x_t, x0)
    N = pred.shape[0]
    d = diff(pred, x_t, x0, sigma, acc)
    e, g = _energy_and_adjoint(d, weights, levels, True)
    ge = torch.full((N,), 2.0 / N if reduction == "mean" else 2.0, dtype=acc, device=d.device)
    if weighting is not None:
        ge = ge * weighting.to(acc)
    gp, gt, g0, _ = _grads_from(g * ge.view(-1, 1, 1, 1), pred, x_t, x0, sigma, need, acc)
    return finish(e, weighting, reduction), e, (gp, gt, g0)


def rescale_(g: torch.Tensor, go: torch.Tensor) -> torch.Tensor:
    """g *= go in place (go: () or (N,)); nothing to do when go is a CPU scalar equal to 1."""
    if go.dim() == 0 and go.device.type == "cpu" and go.item() == 1.0:
        return g
    return g.mul_(go.to(g.dtype).view(-1, *([1] * (g.dim() - 1))) if go.dim() else go.to(g.dtype))
