"""Benchmark cases for the fused wavelet flow-matching loss (ops/wavelet_loss.py).

Work measured: forward + backward w.r.t. model_pred (what a training step needs), loss reduction
"mean", per-sample weighting, default levels=1 / equal band weights (the Diffusion-4K script).
"d4k" goes through autograd (``torch.autograd.grad(wavelet_loss(...), pred)``); "d4k loss_and_grad"
returns the same loss and gradient from ``wavelet_loss_and_grad`` (fused pass + finishing kernel only).
Peers: the released script formula with pytorch_wavelets ("pytorch_wavelets"), the same math with
the DWT by slicing ("torch") and that under torch.compile ("torch.compile").

CUDA: (4,16,512,512), (1,16,512,512), (4,16,256,256) bf16 (4K latent batches), plus d4k with levels=2 and
      per-band weights on the first shape.
CPU:  (1,16,128,128) fp32.
quick: (1,4,16,16) fp32, no torch.compile peers.
bytes_moved: the three inputs read once + the gradient written once.
"""
from __future__ import annotations

from typing import List

import torch

from . import Case


def wlf_inputs(shape, dtype, device, seed: int = 0):
    """(pred requiring grad, x_t, x0, sigma (N,1,1,1) in dtype, weighting (N,1,1,1) fp32) as a training
    step has them; also used by bench/gpu_profile_wlf.py and bench/gpu_sweep.py."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    mk = lambda: torch.randn(shape, generator=g).to(device=device, dtype=dtype)  # noqa: E731
    pred = mk().requires_grad_(True)
    xt, x0 = mk(), mk()
    N = shape[0]
    sig = torch.rand(N, 1, 1, 1, generator=g).to(device=device, dtype=dtype)
    w = (0.5 + torch.rand(N, 1, 1, 1, generator=g)).to(device=device)
    return pred, xt, x0, sig, w


def _group_cases(shape, dtype, device, quick: bool, extra: bool = False) -> List[Case]:
    from ..ops.wavelet_loss import wavelet_loss, wavelet_loss_and_grad
    from ..reference.peers import optional
    from ..reference.wavelet_loss import plain_torch_formula, released_formula

    pred, xt, x0, sig, w = wlf_inputs(shape, dtype, device)

    def fwd_bwd(fn):
        def run():
            loss = fn(pred, xt, x0, sig, w)
            return torch.autograd.grad(loss, pred)[0]
        return run

    nbytes = 4 * pred.numel() * pred.element_size()
    group = f"wavelet_loss fwd+bwd {tuple(shape)} {str(dtype).replace('torch.', '')}"
    cases = [Case(group, "d4k", fwd_bwd(lambda p, a, b, s, ww: wavelet_loss(p, a, b, s, ww)), nbytes,
                  "fwd+grad in one pass (3 reads, 1 write); bwd rescale is a no-op for upstream grad 1")]
    cases.append(Case(group, "d4k loss_and_grad", lambda: wavelet_loss_and_grad(pred, xt, x0, sig, w)[1], nbytes,
                      "the same loss and gradient without autograd (no grad fill, no rescale launch)"))
    if extra:
        bw = (1.0, 2.0, 2.0, 4.0)
        cases.append(Case(group, "d4k levels=2 weighted",
                          fwd_bwd(lambda p, a, b, s, ww: wavelet_loss(p, a, b, s, ww, levels=2, band_weights=bw)),
                          nbytes, "not the same loss: the multi-level option"))
    if optional("pytorch_wavelets") is not None:
        cases.append(Case(group, "pytorch_wavelets", fwd_bwd(released_formula), nbytes, "the released script"))
    cases.append(Case(group, "torch", fwd_bwd(plain_torch_formula), nbytes, "script math, DWT by slicing"))
    if not quick:
        # one static-shape compile per group: a dynamic-shape recompile is slower and makes other code
        compiled = torch.compile(plain_torch_formula, dynamic=False)
        cases.append(Case(group, "torch.compile", fwd_bwd(compiled), nbytes))
    return cases


def cases(device: torch.device, quick: bool = False) -> List[Case]:
    if quick:
        return _group_cases((1, 4, 16, 16), torch.float32, device, quick=True)
    if device.type == "cuda":
        out: List[Case] = []
        out += _group_cases((4, 16, 512, 512), torch.bfloat16, device, quick, extra=True)
        out += _group_cases((1, 16, 512, 512), torch.bfloat16, device, quick)
        out += _group_cases((4, 16, 256, 256), torch.bfloat16, device, quick)
        return out
    return _group_cases((1, 16, 128, 128), torch.float32, device, quick)
