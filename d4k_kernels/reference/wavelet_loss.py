"""References for the wavelet flow-matching loss (independent of d4k_kernels.ops.wavelet_loss).

* :func:`haar_dwt_plain` / :func:`wavelet_loss_f64`: multi-level Haar (zero mode) written plainly with
  slicing in float64, and the weighted loss built from the explicit coefficient tensors (the mean
  denominator is the number of coefficients counted from those tensors).
* :func:`released_formula`: the Diffusion-4K Flux/SD3 training-script lines, verbatim in spirit, with
  pytorch_wavelets' ``DWTForward(J=1, mode='zero', wave='haar')`` in the inputs' dtype.
* :func:`plain_torch_formula`: the same script math with the DWT done by slicing (the "torch" and
  "torch.compile" peers of the benchmarks).
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .peers import import_pytorch_wavelets


def haar_dwt_plain(x: torch.Tensor, levels: int = 1) -> Tuple[torch.Tensor, List[torch.Tensor]]:
    """(yl, yh): pytorch_wavelets layout, zero mode, computed by slicing in x's dtype."""
    yh = []
    ll = x
    for _ in range(levels):
        H, W = ll.shape[-2:]
        ll = F.pad(ll, (0, W % 2, 0, H % 2))
        a = ll[..., 0::2, 0::2]
        b = ll[..., 0::2, 1::2]
        c = ll[..., 1::2, 0::2]
        d = ll[..., 1::2, 1::2]
        lh = (a + b - c - d) / 2
        hl = (a - b + c - d) / 2
        hh = (a - b - c + d) / 2
        ll = (a + b + c + d) / 2
        yh.append(torch.stack([lh, hl, hh], dim=2))
    return ll, yh


def expand_band_weights(band_weights: Optional[Sequence[float]], levels: int) -> List[float]:
    """[LL_J, LH_1, HL_1, HH_1, ..., LH_J, HL_J, HH_J] from None / 4 values / 1+3J values."""
    if band_weights is None:
        return [1.0] * (1 + 3 * levels)
    v = [float(t) for t in band_weights]
    if len(v) == 4:
        return [v[0]] + v[1:] * levels
    assert len(v) == 1 + 3 * levels
    return v


def wavelet_loss_f64(model_pred, noisy_latents, latents, sigmas, weighting=None, levels=1, band_weights=None,
                     reduction="mean"):
    """Float64 reference of d4k's wavelet_loss (any levels / band weights); differentiable."""
    N = model_pred.shape[0]
    s = torch.as_tensor(sigmas, dtype=torch.float64, device=model_pred.device).reshape(-1, 1, 1, 1)
    x0_pred = model_pred.double() * (-s) + noisy_latents.double()
    return wavelet_mse_f64(x0_pred, latents.double(), levels, band_weights, weighting, reduction)


def wavelet_mse_f64(pred, target, levels=1, band_weights=None, weighting=None, reduction="mean"):
    N = pred.shape[0]
    w = expand_band_weights(band_weights, levels)
    pl, ph = haar_dwt_plain(pred.double(), levels)
    tl_, th = haar_dwt_plain(target.double(), levels)
    total = w[0] * ((pl - tl_) ** 2).reshape(N, -1).sum(1)
    count = pl[0].numel()
    for j in range(levels):
        for k in range(3):
            diff = ph[j][:, :, k] - th[j][:, :, k]
            total = total + w[1 + 3 * j + k] * (diff ** 2).reshape(N, -1).sum(1)
            count += diff[0].numel()
    loss = total / count
    if weighting is not None:
        loss = loss * torch.as_tensor(weighting, device=pred.device).double().reshape(N)
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


_DWT_CACHE = {}


def _released_dwt(device, dtype):
    key = (str(device), dtype)
    if key not in _DWT_CACHE:
        ptw = import_pytorch_wavelets()
        _DWT_CACHE[key] = ptw.DWTForward(J=1, mode="zero", wave="haar").to(device=device, dtype=dtype)
    return _DWT_CACHE[key]


def released_formula(model_pred, noisy_model_input, model_input, sigmas, weighting=None, dwt=None):
    """The Diffusion-4K training-script loss (train_flux_4k_wavelet.py / train_sd3_4k_wavelet.py),
    with pytorch_wavelets in the inputs' dtype. ``sigmas`` and ``weighting`` are (N, 1, 1, 1)."""
    if dwt is None:
        dwt = _released_dwt(model_pred.device, model_pred.dtype)
    N = model_pred.shape[0]
    sigmas = sigmas.reshape(N, 1, 1, 1)
    if weighting is None:
        weighting = torch.ones_like(sigmas)
    weighting = weighting.reshape(N, 1, 1, 1)
    model_pred = model_pred * (-sigmas) + noisy_model_input

    model_input_xll, model_input_xh = dwt(model_input)
    model_input_xlh, model_input_xhl, model_input_xhh = torch.unbind(model_input_xh[0], dim=2)
    model_input = torch.cat([model_input_xll, model_input_xlh, model_input_xhl, model_input_xhh], dim=1)

    model_pred_xll, model_pred_xh = dwt(model_pred)
    model_pred_xlh, model_pred_xhl, model_pred_xhh = torch.unbind(model_pred_xh[0], dim=2)
    model_pred = torch.cat([model_pred_xll, model_pred_xlh, model_pred_xhl, model_pred_xhh], dim=1)

    target = model_input
    loss = torch.mean((weighting.float() * (model_pred.float() - target.float()) ** 2).reshape(target.shape[0], -1), 1)
    return loss.mean()


def plain_torch_formula(model_pred, noisy_model_input, model_input, sigmas, weighting=None):
    """The script's loss with the DWT by slicing (no pytorch_wavelets): the plain-torch peer."""
    N = model_pred.shape[0]
    sigmas = sigmas.reshape(N, 1, 1, 1)
    if weighting is None:
        weighting = torch.ones_like(sigmas)
    x0_pred = model_pred * (-sigmas) + noisy_model_input
    pl, ph = haar_dwt_plain(x0_pred, 1)
    tl_, th = haar_dwt_plain(model_input, 1)
    P = torch.cat([pl, ph[0].flatten(1, 2)], dim=1)
    T = torch.cat([tl_, th[0].flatten(1, 2)], dim=1)
    loss = torch.mean((weighting.reshape(N, 1, 1, 1).float() * (P.float() - T.float()) ** 2).reshape(N, -1), 1)
    return loss.mean()
