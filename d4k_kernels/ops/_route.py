"""How a call of a registered op runs: the one decision shared by the Haar DWT / IDWT (ops/haar.py)
and the wavelet loss (ops/wavelet_loss.py).

Each of those ops has one forward and one backward implementation, registered as a torch.library
custom op with ``register_fake`` and ``register_autograd`` beside it. The custom-op dispatch costs
tens of microseconds of host time per call, which at 4K latent sizes is more than the kernels' GPU
time, so an eager call skips the dispatcher and runs the same functions
directly (wrapped in a ``torch.autograd.Function`` that reuses the op's setup_context and backward
when a gradient is wanted). :func:`route` says which of the four ways a call takes:

* ``"op"``: through the registered custom op: under ``torch.compile`` / ``torch.export`` (the op is
  one node of the graph; its backward is the registered backward op), for tensor subclasses (fake,
  functional, user subclasses) and for devices other than cpu / cuda (meta runs the fake);
* ``"composite"``: plain torch, differentiable op by op, under forward-mode AD or a torch.func
  transform (grad, jvp, vmap), which custom ops with only a backward formula do not serve;
* ``"autograd"``: eager, a gradient is wanted: the ``torch.autograd.Function`` of the op family;
* ``"direct"``: eager, no gradient: the implementation itself.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch.autograd import forward_ad

__all__ = ["route", "OP", "COMPOSITE", "AUTOGRAD", "DIRECT"]

OP, COMPOSITE, AUTOGRAD, DIRECT = "op", "composite", "autograd", "direct"

_PLAIN = (torch.Tensor, torch.nn.Parameter)
_peek_functorch = getattr(getattr(torch._C, "_functorch", None), "peek_interpreter_stack", lambda: None)


def route(*tensors: Optional[torch.Tensor]) -> str:
    """``"op"``, ``"composite"``, ``"autograd"`` or ``"direct"`` for a call on ``tensors`` (None
    entries are skipped); see the module docstring. About 1 us of host time."""
    if torch.compiler.is_compiling():
        return OP
    if getattr(forward_ad, "_current_level", -1) >= 0 or _peek_functorch() is not None:
        return COMPOSITE
    grad = False
    for t in tensors:
        if t is None:
            continue
        if t.__class__ not in _PLAIN or not (t.is_cpu or t.is_cuda):
            return OP
        grad = grad or t.requires_grad
    return AUTOGRAD if grad and torch.is_grad_enabled() else DIRECT
