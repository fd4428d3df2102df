"""Fused wavelet flow-matching loss (WLF) of Diffusion-4K: loss and gradient in one pass over the inputs.

The Flux / SD3 training scripts of Diffusion-4K compute, per step (docs/ops.md, Wavelet flow-matching loss)::

    x0_pred = model_pred * (-sigma) + x_t
    P = cat([LL, LH, HL, HH] of haar_dwt_J1_zero(x0_pred)); T = the same for x0
    loss = mean_n(mean_{c,h,w}(weighting_n * (P - T) ** 2))

The Haar DWT is linear, so P - T = DWT(d) with ``d = x_t - sigma * model_pred - x0``. The kernels here
read ``model_pred``, ``x_t`` and ``x0`` once, form ``d`` in fp32 registers, run ``levels`` Haar levels
(zero mode) in registers and write one weighted sum of squared coefficients per tile; a one-program
finishing kernel sums each sample's partials in a fixed order (deterministic, no float atomics).
The gradient (band-weighted coefficients through the inverse transform, in registers) is written
in the same pass when a gradient will be wanted: the loss is quadratic, so the gradient for an
upstream gradient of 1 does not depend on the loss value, and the backward only rescales it in
place (moving no data when the upstream gradient is 1). Otherwise (sigma requires grad,
torch.compile, a second backward) the backward recomputes from the inputs in one pass.

Loss definition (what is averaged)
----------------------------------
``levels = J`` Haar levels in zero mode: level ``j`` maps the previous LL (``h_{j-1} x w_{j-1}``,
``h_0 = H``) to four subbands of ``h_j x w_j = ceil(h_{j-1}/2) x ceil(w_{j-1}/2)``. The coefficient set is
the pyramid LL_J plus (LH_j, HL_j, HH_j) for j = 1..J, i.e. exactly what pytorch_wavelets'
``DWTForward(J, mode="zero", wave="haar")`` returns as (yl, yh). Per sample::

    E_n     = sum over the pyramid of band_weight(band) * coefficient ** 2      (all C channels)
    count   = C * (h_J * w_J + 3 * sum_j h_j * w_j)                            (number of coefficients)
    loss_n  = weighting_n * E_n / count

``count`` is the number of coefficients, not ``C*H*W``: for J = 1 it is ``C * 4 * ceil(H/2) * ceil(W/2)``,
the size of the script's ``cat`` of the four ceil-sized subbands, so the defaults reproduce the
script exactly, including odd sizes (where the loss is ``H*W / (4*ceil(H/2)*ceil(W/2))`` times the
x0-MSE). ``reduction``: "mean" -> mean over n, "sum" -> sum over n, "none" -> the (N,) vector.
The loss is returned in float32 (float64 for float64 inputs), as the script's ``.float()`` does.

band_weights
------------
* ``None``: all 1 (the script).
* 4 values ``(LL, LH, HL, HH)``: LL weights the coarsest LL_J, the three detail weights apply at
  every level.
* ``1 + 3*J`` values ``(LL_J, LH_1, HL_1, HH_1, LH_2, HL_2, HH_2, ..., LH_J, HL_J, HH_J)``: the
  coarsest LL, then the detail weights per level, finest level first (pytorch_wavelets' yh order).
  For J = 1 both forms are the same 4 values.
Band weights are constants (a list of floats, or a tensor that does not require grad).

Modules and ops
---------------
This module holds the public functions, the registered ops and their autograd. The kernels and
their launchers are in ops/_wlf_triton.py (CUDA tensors; CPU tensors under the Triton interpreter),
the torch path with the same functions in ops/_wlf_torch.py (CPU tensors; when all band weights
are equal it uses that the zero-mode Haar pyramid is orthonormal and skips the transform).

One registered op per direction: ``d4k::wavelet_energy`` (E_n) with its fake and autograd, and
``d4k::wavelet_energy_backward`` (the gradients, recomputed from the inputs) with its fake; it has
no derivative of its own. ops/_route.py decides how a call runs: under torch.compile the ops, with
the weighting and reduction as torch ops in the graph; under forward-mode AD / torch.func the torch
path, differentiable op by op; otherwise the same forward and backward functions without the
dispatcher, ``_EnergyFn`` / ``_LossFn`` when a gradient is wanted (``_LossFn`` adds the fused
forward + gradient pass described above).
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch

from .. import backend
from .._checks import check_choice, check_int, check_same, check_tensor
from .._util import acc_dtype
from . import _wlf_torch
from ._route import AUTOGRAD, COMPOSITE, DIRECT, OP, route

if backend.HAS_TRITON:
    from . import _wlf_triton

__all__ = ["wavelet_loss", "wavelet_loss_and_grad", "wavelet_mse", "wavelet_energy", "coefficient_count",
           "expand_band_weights", "MAX_LEVELS"]

MAX_LEVELS = 5
_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
_REDUCTIONS = ("mean", "sum", "none")


def _impl(op: str, x: torch.Tensor):
    """The module (ops/_wlf_triton.py or ops/_wlf_torch.py) whose functions run ``op`` for ``x``."""
    return _wlf_triton if backend.choose(op, x) == "triton" else _wlf_torch


def _need(needs_input_grad, x_t) -> Tuple[bool, bool, bool, bool]:
    """Which of (pred, x_t, x0, sigma) want a gradient, from ctx.needs_input_grad."""
    ni = needs_input_grad
    return bool(ni[0]), bool(ni[1]) and x_t is not None, bool(ni[2]), bool(ni[3])


# --------------------------------------------------------------------------------------------
# forward: d4k::wavelet_energy, its fake and autograd
# --------------------------------------------------------------------------------------------
def _energy_forward(pred, x_t, x0, sigma, weights, levels):
    return _impl("wavelet_energy", pred).energy(pred, x_t, x0, sigma, weights, levels)


@torch.library.custom_op("d4k::wavelet_energy", mutates_args=())
def _energy_op(pred: torch.Tensor, x_t: Optional[torch.Tensor], x0: torch.Tensor, sigma: torch.Tensor,
               weights: List[float], levels: int) -> torch.Tensor:
    """E_n of d = x_t - sigma * pred - x0 (sigma (N,) in the accumulation dtype, contiguous)."""
    return _energy_forward(pred, x_t, x0, sigma, weights, levels)


@_energy_op.register_fake
def _energy_fake(pred, x_t, x0, sigma, weights, levels):
    return pred.new_empty((pred.shape[0],), dtype=acc_dtype(pred, x_t, x0))


def _energy_setup(ctx, inputs, output):
    pred, x_t, x0, sigma, weights, levels = inputs
    ctx.save_for_backward(pred, x_t, x0, sigma)
    ctx.weights, ctx.levels = weights, levels


def _energy_backward(ctx, grad_e):
    pred, x_t, x0, sigma = ctx.saved_tensors
    need = _need(ctx.needs_input_grad, x_t)
    if not any(need):
        return None, None, None, None, None, None
    gp, gt, g0, gs = _energy_grads(grad_e, pred, x_t, x0, sigma, ctx.weights, ctx.levels, need)
    return gp, gt, g0, gs, None, None


_energy_op.register_autograd(_energy_backward, setup_context=_energy_setup)


# --------------------------------------------------------------------------------------------
# backward: d4k::wavelet_energy_backward and its fake
# --------------------------------------------------------------------------------------------
@torch.library.custom_op("d4k::wavelet_energy_backward", mutates_args=())
def _energy_bwd_op(grad_e: torch.Tensor, pred: torch.Tensor, x_t: Optional[torch.Tensor], x0: torch.Tensor,
                   sigma: torch.Tensor, weights: List[float], levels: int, need: List[bool]) -> List[torch.Tensor]:
    """[grad pred, grad x_t, grad x0, grad sigma] for the upstream gradient grad_e (N,); an empty
    tensor stands for "not computed" (custom ops cannot return None)."""
    outs = _impl("wavelet_energy_backward", pred).energy_grads(grad_e, pred, x_t, x0, sigma, weights, levels,
                                                               tuple(need))
    return [o if o is not None else pred.new_empty((0,)) for o in outs]


@_energy_bwd_op.register_fake
def _energy_bwd_fake(grad_e, pred, x_t, x0, sigma, weights, levels, need):
    e = pred.new_empty((0,))
    return [
        torch.empty(pred.shape, dtype=pred.dtype, device=pred.device) if need[0] else e,
        torch.empty(x_t.shape, dtype=x_t.dtype, device=pred.device) if (need[1] and x_t is not None) else e,
        torch.empty(x0.shape, dtype=x0.dtype, device=pred.device) if need[2] else e,
        pred.new_empty((pred.shape[0],), dtype=acc_dtype(pred, x_t, x0)) if need[3] else e,
    ]


def _energy_grads(grad_e, pred, x_t, x0, sigma, weights, levels, need):
    """The energy's backward: the registered backward op where the call is traced, else its
    implementation directly."""
    if route(grad_e, pred, x_t, x0, sigma) in (OP, COMPOSITE):
        outs = _energy_bwd_op(grad_e, pred, x_t, x0, sigma, weights, levels, list(need))
        return tuple(o if n else None for o, n in zip(outs, need))
    return _impl("wavelet_energy_backward", pred).energy_grads(grad_e, pred, x_t, x0, sigma, weights, levels, need)


# --------------------------------------------------------------------------------------------
# eager autograd without the dispatcher
# --------------------------------------------------------------------------------------------
class _EnergyFn(torch.autograd.Function):
    """d4k::wavelet_energy's forward, setup_context and backward, called without the dispatcher.
    (A ctx-style forward: ``setup_context`` as a staticmethod would make ``apply`` bind the
    arguments by signature, ~15 us of host time per call.)"""

    @staticmethod
    def forward(ctx, *inputs):
        out = _energy_forward(*inputs)
        _energy_setup(ctx, inputs, out)
        return out

    backward = staticmethod(_energy_backward)


class _LossFn(torch.autograd.Function):
    """The loss (energy, weighting and reduction) with autograd, eager.

    ``fused`` (a gradient of pred / x_t / x0 is wanted, sigma needs none): ONE pass over the inputs
    computes the loss partials and the gradients for an upstream gradient of 1 (the loss is
    quadratic, so the gradient does not depend on the loss value); a finishing kernel forms the
    loss. The backward only rescales those gradients in place by the upstream gradient (on the
    Triton path a kernel whose every access is masked off when it is 1, the usual
    ``loss.backward()``). Total traffic: the three inputs read once + the gradient written once;
    the gradient buffers are the gradients themselves. A second backward through a retained graph
    recomputes. Otherwise: forward = energy + finishing, backward = the energy backward's
    implementation (one recomputing pass, dL/dE_n = upstream * weighting_n / N formed in it)."""

    @staticmethod
    def forward(ctx, pred, x_t, x0, sigma, weighting, weights, levels, reduction, fused):
        impl = _impl("wavelet_energy", pred)
        ctx.grads = None
        if fused:
            need = _need(ctx.needs_input_grad, x_t)[:3] + (False,)
            loss, e, ctx.grads = impl.loss_and_grads(pred, x_t, x0, sigma, weighting, weights, levels, reduction,
                                                     need)
        else:
            loss, e = impl.loss(pred, x_t, x0, sigma, weighting, weights, levels, reduction)
        ctx.save_for_backward(pred, x_t, x0, sigma, weighting, e)
        ctx.impl, ctx.weights, ctx.levels, ctx.reduction = impl, weights, levels, reduction
        return loss

    @staticmethod
    def backward(ctx, go):
        pred, x_t, x0, sigma, weighting, e = ctx.saved_tensors
        need = _need(ctx.needs_input_grad, x_t)
        n_div = pred.shape[0] if ctx.reduction == "mean" else 1
        gp = gt = g0 = gs = gw = None
        if ctx.grads is not None and not need[3]:
            gp, gt, g0 = (ctx.impl.rescale_(g, go) if g is not None else None for g in ctx.grads)
            ctx.grads = None  # handed over; a second backward (retain_graph) recomputes
        elif any(need):
            gp, gt, g0, gs = ctx.impl.energy_grads(go, pred, x_t, x0, sigma, ctx.weights, ctx.levels, need,
                                                   weighting=weighting, n_div=n_div)
        if ctx.needs_input_grad[4]:
            gw = go.to(e.dtype) / n_div * e
        return gp, gt, g0, gs, gw, None, None, None, None


# --------------------------------------------------------------------------------------------
# one routed call per entry point
# --------------------------------------------------------------------------------------------
def _energy(pred, x_t, x0, sigma, weights: List[float], levels: int) -> torch.Tensor:
    s = _per_sample(sigma, "sigmas", pred.shape[0], pred)
    s = s.to(acc_dtype(pred, x_t, x0)).contiguous()
    how = route(pred, x_t, x0, s)
    if how == DIRECT:
        return _energy_forward(pred, x_t, x0, s, weights, levels)
    if how == AUTOGRAD:
        return _EnergyFn.apply(pred, x_t, x0, s, weights, levels)
    if how == COMPOSITE:
        return _wlf_torch.energy(pred, x_t, x0, s, weights, levels, functional=True)
    return _energy_op(pred, x_t, x0, s, weights, levels)


def _loss(pred, x_t, x0, sigma, weighting, levels, band_weights, reduction) -> torch.Tensor:
    weights = _mean_weights(pred.shape, levels, band_weights)
    s = _per_sample(sigma, "sigmas", pred.shape[0], pred)
    how = route(pred, x_t, x0, s, weighting)
    if how in (OP, COMPOSITE):   # the registered op (or differentiable torch) + torch finishing
        return _wlf_torch.finish(_energy(pred, x_t, x0, s, weights, levels), weighting, reduction)
    acc = acc_dtype(pred, x_t, x0)
    # the launchers read sigma / weighting in their own dtype and convert on use (the kernels in
    # registers): no cast launch on the host, which costs more host time than this whole op's GPU time
    # at 4K latent sizes; tensors that need a gradient are converted so theirs comes back in acc
    s = (s.to(acc) if s.requires_grad else s).contiguous()
    w = (weighting.to(acc) if weighting.requires_grad else weighting).contiguous() if weighting is not None else None
    if how == DIRECT:
        return _impl("wavelet_energy", pred).loss(pred, x_t, x0, s, w, weights, levels, reduction)[0]
    # forward + gradient in one pass when a gradient will be wanted and sigma needs none
    fused = not s.requires_grad and any(t is not None and t.requires_grad for t in (pred, x_t, x0))
    return _LossFn.apply(pred, x_t, x0, s, w, weights, levels, reduction, fused)


def _loss_and_grad(pred, x_t, x0, sigma, weighting, levels, band_weights, reduction):
    """(loss, d loss / d pred) without an autograd graph: the fused pass and the finishing kernel
    (Triton), nothing else; the registered ops when traced."""
    weights = _mean_weights(pred.shape, levels, band_weights)
    N = pred.shape[0]
    acc = acc_dtype(pred, x_t, x0)
    s = _per_sample(sigma, "sigmas", N, pred)
    how = route(pred, x_t, x0, s, weighting)
    with torch.no_grad():
        if how == OP:
            s = s.to(acc).contiguous()
            e = _energy_op(pred, x_t, x0, s, weights, levels)
            ge = torch.full((N,), 1.0 / N if reduction == "mean" else 1.0, dtype=acc, device=pred.device)
            if weighting is not None:
                ge = ge * weighting.to(acc)
            gp = _energy_bwd_op(ge, pred, x_t, x0, s, weights, levels, [True, False, False, False])[0]
            return _wlf_torch.finish(e, weighting, reduction), gp
        impl = _wlf_torch if how == COMPOSITE else _impl("wavelet_energy", pred)
        w = weighting.contiguous() if weighting is not None else None
        loss, _, (gp, _, _) = impl.loss_and_grads(pred, x_t, x0, s.contiguous(), w, weights, levels, reduction,
                                                  (True, False, False, False))
    return loss, gp


# --------------------------------------------------------------------------------------------
# arguments
# --------------------------------------------------------------------------------------------
def coefficient_count(shape: Sequence[int], levels: int = 1) -> int:
    """Number of Haar coefficients per sample of an (N, C, H, W) input in zero mode: the loss's
    mean denominator, ``C * (h_J*w_J + 3*sum_j h_j*w_j)`` with ``h_j = ceil(h_{j-1}/2)``."""
    C, h, w = int(shape[1]), int(shape[2]), int(shape[3])
    total = 0
    for _ in range(levels):
        h, w = -(-h // 2), -(-w // 2)
        total += 3 * h * w
    return C * (total + h * w)


def expand_band_weights(band_weights, levels: int) -> List[float]:
    """The ``1 + 3*levels`` band weights ``(LL_J, LH_1, HL_1, HH_1, ..., LH_J, HL_J, HH_J)`` of a
    ``band_weights`` argument (None, 4 values or 1 + 3*levels values; see the module docstring);
    ValueError / TypeError naming the value for anything else."""
    if band_weights is None:
        return [1.0] * (1 + 3 * levels)
    if isinstance(band_weights, torch.Tensor):
        if band_weights.requires_grad:
            raise ValueError("band_weights must be constants: got a tensor that requires grad "
                             "(gradients w.r.t. band weights are not computed)")
        vals = [float(v) for v in band_weights.detach().reshape(-1).tolist()]
    else:
        try:
            vals = [float(v) for v in band_weights]
        except TypeError:
            raise TypeError(f"band_weights must be a sequence of numbers or a tensor, got {band_weights!r}") from None
    bad = [v for v in vals if not (math.isfinite(v) and v >= 0.0)]
    if bad:
        raise ValueError(f"band_weights must be finite and >= 0 (a negative weight makes the loss unbounded "
                         f"below), got {vals!r}")
    if len(vals) == 4:
        return [vals[0]] + vals[1:] * levels
    if len(vals) == 1 + 3 * levels:
        return vals
    raise ValueError(
        f"band_weights must have 4 values (LL, LH, HL, HH) or 1 + 3*levels = {1 + 3 * levels} values "
        f"(LL_J, then LH, HL, HH per level, finest first), got {len(vals)}: {vals!r}")


def _mean_weights(shape, levels: int, band_weights) -> List[float]:
    """The band weights divided by the coefficient count, so that the kernel's per-sample sum is
    already the per-sample mean."""
    count = coefficient_count(shape, levels)
    return [w / count for w in expand_band_weights(band_weights, levels)]


def _per_sample(v: Optional[torch.Tensor], name: str, N: int, ref: torch.Tensor) -> Optional[torch.Tensor]:
    if v is None:
        return None
    if not isinstance(v, torch.Tensor):
        if isinstance(v, (int, float)):
            return torch.full((N,), float(v), dtype=torch.float32, device=ref.device)
        raise TypeError(f"{name} must be a tensor of shape (N,) or (N, 1, 1, 1) or a number, got {type(v).__name__}")
    if v.dim() == 0:
        return v.reshape(1).expand(N)
    if v.shape not in ((N,), (N, 1, 1, 1), (N, 1)):
        raise ValueError(f"{name} must have shape ({N},) or ({N}, 1, 1, 1), got {tuple(v.shape)}")
    if v.device != ref.device:
        raise ValueError(f"{name} is on {v.device} but the inputs are on {ref.device}")
    return v.reshape(N)


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------
def wavelet_energy(pred, x_t, x0, sigma, levels: int = 1, band_weights=None) -> torch.Tensor:
    """Per-sample weighted Haar energy ``E_n`` of ``d = x_t - sigma*pred - x0`` (``x_t`` may be None),
    differentiable. Float32 (float64 for float64 inputs). See the module docstring."""
    return _energy(pred, x_t, x0, sigma, expand_band_weights(band_weights, levels), levels)


def _check_common(x, name, levels, reduction):
    check_int(levels, "levels", lo=1, hi=MAX_LEVELS)
    check_choice(reduction, "reduction", _REDUCTIONS)
    if x.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)}): the mean over coefficients is undefined")


def _check_loss_inputs(model_pred, noisy_latents, latents, sigmas, weighting, levels, reduction):
    """The checks of wavelet_loss / wavelet_loss_and_grad; returns the per-sample weighting (or None)."""
    check_tensor(model_pred, "model_pred", dtypes=_DTYPES, ndim=4)
    check_tensor(noisy_latents, "noisy_latents", dtypes=_DTYPES, ndim=4)
    check_tensor(latents, "latents", dtypes=_DTYPES, ndim=4)
    check_same([model_pred, noisy_latents, latents], ["model_pred", "noisy_latents", "latents"])
    _check_common(model_pred, "model_pred", levels, reduction)
    if sigmas is None:
        raise TypeError("sigmas must be given (shape (N,) or (N, 1, 1, 1))")
    return _per_sample(weighting, "weighting", model_pred.shape[0], model_pred)


def wavelet_loss(model_pred: torch.Tensor, noisy_latents: torch.Tensor, latents: torch.Tensor, sigmas,
                 weighting=None, levels: int = 1, band_weights=None, reduction: str = "mean") -> torch.Tensor:
    """Diffusion-4K's wavelet flow-matching loss, fused.

    Args:
        model_pred: transformer output (N, C, H, W) (unpacked), the predicted velocity.
        noisy_latents: x_t = (1 - sigma) * x0 + sigma * noise, (N, C, H, W).
        latents: clean latents x0, (N, C, H, W).
        sigmas: per-sample sigma, shape (N,) or (N, 1, 1, 1) (or a number).
        weighting: None or per-sample loss weights (N,) / (N, 1, 1, 1) (diffusers'
            ``compute_loss_weighting_for_sd3``).
        levels: Haar levels J (1..5), zero mode.
        band_weights: None, 4 values (LL, LH, HL, HH) or 1 + 3*J values; see the module docstring.
        reduction: "mean" (default, the script), "sum" or "none" (per-sample, shape (N,)).

    With the defaults this equals the Diffusion-4K Flux/SD3 script's loss
    ``mean_n(mean(weighting * (cat(DWT(model_pred*(-sigma) + x_t)) - cat(DWT(x0)))**2))``.
    Inputs may be float32 / bfloat16 / float16 (float64 too), mixed and non-contiguous; the math is
    done in float32 (float64 for float64 inputs) and the loss is returned in that dtype. Gradients
    flow to every input that requires grad (model_pred, noisy_latents, latents, sigmas, weighting).
    """
    w = _check_loss_inputs(model_pred, noisy_latents, latents, sigmas, weighting, levels, reduction)
    return _loss(model_pred, noisy_latents, latents, sigmas, w, levels, band_weights, reduction)


def wavelet_loss_and_grad(model_pred: torch.Tensor, noisy_latents: torch.Tensor, latents: torch.Tensor, sigmas,
                          weighting=None, levels: int = 1, band_weights=None,
                          reduction: str = "mean") -> Tuple[torch.Tensor, torch.Tensor]:
    """:func:`wavelet_loss` and its gradient with respect to ``model_pred``, without autograd:
    ``(loss, grad)``, ``grad`` shaped and typed like ``model_pred`` (contiguous). Same arguments
    and loss as :func:`wavelet_loss`.

    One fused pass over the three inputs plus the finishing kernel, nothing else: autograd's
    ``loss.backward()`` adds the upstream-gradient fill and the rescaling launch (a few µs each on a
    GPU, more in host time). For a training loop that owns its backward::

        loss, grad = d4k_kernels.wavelet_loss_and_grad(model_pred.detach(), noisy_latents, latents, sigmas, w)
        model_pred.backward(grad)      # the same gradients as wavelet_loss(...).backward()

    The loss comes back detached. Use :func:`wavelet_loss` when gradients must also reach
    ``noisy_latents``, ``latents``, ``sigmas`` or ``weighting``, or when something scales the loss
    before its backward (fp16 loss scaling: scale ``grad`` the same way).
    """
    w = _check_loss_inputs(model_pred, noisy_latents, latents, sigmas, weighting, levels, reduction)
    if w is not None:
        w = w.detach()
    sig = sigmas.detach() if isinstance(sigmas, torch.Tensor) else sigmas
    return _loss_and_grad(model_pred.detach(), noisy_latents.detach(), latents.detach(), sig, w, levels,
                          band_weights, reduction)


def wavelet_mse(pred: torch.Tensor, target: torch.Tensor, levels: int = 1, band_weights=None, weighting=None,
                reduction: str = "mean") -> torch.Tensor:
    """Weighted multi-level Haar-domain MSE between ``pred`` and ``target`` (N, C, H, W):
    ``mean over coefficients of band_weight * (DWT(pred) - DWT(target))**2`` per sample, times the
    optional per-sample ``weighting``, then ``reduction`` over the batch (see the module docstring).
    """
    check_tensor(pred, "pred", dtypes=_DTYPES, ndim=4)
    check_tensor(target, "target", dtypes=_DTYPES, ndim=4)
    check_same([pred, target], ["pred", "target"])
    _check_common(pred, "pred", levels, reduction)
    N = pred.shape[0]
    w = _per_sample(weighting, "weighting", N, pred)
    sigma = torch.full((N,), -1.0, dtype=acc_dtype(pred, target), device=pred.device)
    return _loss(pred, None, target, sigma, w, levels, band_weights, reduction)
