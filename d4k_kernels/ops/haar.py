"""Multi-level 2-D Haar DWT / IDWT: the public functions, the registered ops and their autograd.
Definitions, sizes and padding modes: docs/ops.md, Haar DWT / IDWT.

Public API
----------
``dwt2(x, levels=1, mode="zero") -> (yl, yh)``
    pytorch_wavelets layout: ``yl`` (..., H_J, W_J); ``yh`` a list, finest level first, each
    (..., 3, h, w) ordered LH, HL, HH. ``x`` has at least 2 dims (any leading dims).
``idwt2((yl, yh), mode="zero", output_size=None)``
    the inverse. Without ``output_size`` the result is even-sized (2 h_1, 2 w_1), like
    pytorch_wavelets' DWTInverse; ``output_size=(H, W)`` crops it to the size the forward saw.
``DWTForward`` / ``DWTInverse``: drop-in nn.Modules for pytorch_wavelets' classes (Haar only).
``to_pywt`` / ``from_pywt``: convert to and from pywt ``wavedec2`` lists.

Sizes and levels
----------------
Each level maps an axis of size n to ceil(n / 2) (pywt's output size in every mode, periodization
included). An odd axis is padded by one sample at its end: zero -> 0, symmetric and periodization
-> the last sample, reflect -> x[n - 2]. A level needs an input of at least 2 x 2, so ``levels``
runs from 1 to ``max_levels(H, W) = ceil(log2(min(H, W)))``. pywt computes the same values for
those levels (it warns beyond its ``dwt_max_level = floor(log2 n)``, but its results match ours).

Implementations (d4k_kernels.backend.choose)
--------------------------------------------
* "triton": ops/_haar_triton.py, all levels of a group in registers, one launch per group.
* "cpp": the compiled levels of csrc/haar.cpp (CPU tensors), looped by ops/_haar_torch.py.
* "torch": ops/_haar_torch.py, vectorised torch on 2x2 blocks; runs on any device.

Autograd
--------
Both directions are torch.library custom ops (``d4k::haar_dwt2``, ``d4k::haar_idwt2``), so
``torch.compile(fullgraph=True)`` sees single ops. The backward of the DWT is its exact adjoint:
the inverse transform, with each padded row/column's gradient folded back onto the row/column it
copied (last one for symmetric / periodization, n - 2 for reflect, dropped for zero). The backward
of the IDWT (inverse + crops) is the zero-mode DWT. ``d4k::haar_idwt2`` takes a ``fold`` argument
("crop", "edge", "reflect") that selects which of these adjoints it computes. Each backward calls
the other direction, so higher derivatives work too.

How a call runs is decided by ops/_route.py: the custom ops when traced, the torch levels
(differentiable op by op) under forward-mode AD / torch.func, and otherwise the same forward and
backward functions without the dispatcher (``_Dwt2Fn`` / ``_Idwt2Fn`` when a gradient is wanted).
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch

from .. import backend
from .._checks import check_choice, check_int, check_tensor
from . import _haar_torch
from ._haar_torch import FOLD_OF_MODE, MODE_OF_FOLD, MODES, chain, max_levels
from ._route import AUTOGRAD, COMPOSITE, DIRECT, route

if backend.HAS_TRITON:
    from . import _haar_triton

__all__ = ["dwt2", "idwt2", "DWTForward", "DWTInverse", "to_pywt", "from_pywt", "max_levels", "MODES"]

_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


# ----------------------------------------------------------------------------------------------
# forward: d4k::haar_dwt2, its fake and autograd, and the eager Function around the same pieces
# ----------------------------------------------------------------------------------------------
def _dwt2_forward(x: torch.Tensor, levels: int, mode: str) -> List[torch.Tensor]:
    """[yl, yh_1 (finest), ..., yh_J] from the implementation backend.choose picks."""
    impl = backend.choose("haar_dwt2", x)
    if impl == "triton":
        return _haar_triton.dwt(x, levels, mode)
    return _haar_torch.dwt(x, levels, mode, backend.extension("haar") if impl == "cpp" else None)


@torch.library.custom_op("d4k::haar_dwt2", mutates_args=())
def _dwt2_op(x: torch.Tensor, levels: int, mode: str) -> List[torch.Tensor]:
    """[yl, yh_1 (finest), ..., yh_J]."""
    return _dwt2_forward(x, levels, mode)


@_dwt2_op.register_fake
def _dwt2_fake(x, levels, mode):
    lead, (H, W) = x.shape[:-2], x.shape[-2:]
    hs, ws = chain(H, levels), chain(W, levels)
    out = [x.new_empty(tuple(lead) + (hs[levels], ws[levels]))]
    out += [x.new_empty(tuple(lead) + (3, hs[k + 1], ws[k + 1])) for k in range(levels)]
    return out


def _dwt2_setup(ctx, inputs, output):
    x, levels, mode = inputs
    ctx.hw = (x.shape[-2], x.shape[-1])
    ctx.mode = mode
    ctx.shapes = [o.shape for o in output]


def _dwt2_backward(ctx, grads):
    """d x from d yl, d yh_1.. (None: zeros): the adjoint of the DWT, an IDWT with folds."""
    ref = next(g for g in grads if g is not None)
    grads = [g if g is not None else ref.new_zeros(shape) for g, shape in zip(grads, ctx.shapes)]
    return _idwt(grads[0], grads[1:], ctx.hw[0], ctx.hw[1], FOLD_OF_MODE[ctx.mode]), None, None


_dwt2_op.register_autograd(_dwt2_backward, setup_context=_dwt2_setup)


class _Dwt2Fn(torch.autograd.Function):
    """d4k::haar_dwt2's forward, setup_context and backward, called without the dispatcher. (A
    ctx-style forward: ``setup_context`` as a staticmethod would make ``apply`` bind the arguments
    by signature, ~15 us of host time per call.)"""

    @staticmethod
    def forward(ctx, x, levels, mode):
        out = tuple(_dwt2_forward(x, levels, mode))
        _dwt2_setup(ctx, (x, levels, mode), out)
        return out

    @staticmethod
    def backward(ctx, *grads):
        return _dwt2_backward(ctx, grads)


# ----------------------------------------------------------------------------------------------
# inverse: d4k::haar_idwt2 likewise
# ----------------------------------------------------------------------------------------------
def _idwt2_forward(yl: torch.Tensor, yh: Sequence[torch.Tensor], out_h: int, out_w: int, fold: str) -> torch.Tensor:
    impl = backend.choose("haar_idwt2", yl)
    if impl == "triton":
        return _haar_triton.idwt(yl, yh, out_h, out_w, fold)
    return _haar_torch.idwt(yl, yh, out_h, out_w, fold, backend.extension("haar") if impl == "cpp" else None)


@torch.library.custom_op("d4k::haar_idwt2", mutates_args=())
def _idwt2_op(yl: torch.Tensor, yh: List[torch.Tensor], out_h: int, out_w: int, fold: str) -> torch.Tensor:
    """Inverse (fold="crop"), or the adjoint of the symmetric/periodization ("edge") or reflect
    ("reflect") DWT. Sizes: yh[k] is (..., 3, n_{k+1}), n_0 = (out_h, out_w), n_{k+1} = ceil(n_k/2),
    yl matches yh[-1]."""
    return _idwt2_forward(yl, yh, out_h, out_w, fold)


@_idwt2_op.register_fake
def _idwt2_fake(yl, yh, out_h, out_w, fold):
    return yl.new_empty(tuple(yl.shape[:-2]) + (out_h, out_w))


def _idwt2_setup(ctx, inputs, output):
    yl, yh, out_h, out_w, fold = inputs
    ctx.levels = len(yh)
    ctx.fold = fold


def _idwt2_backward(ctx, g):
    """d yl, d yh from d out: the adjoint of the IDWT, a DWT (zero mode for the inverse)."""
    out = _dwt(g, ctx.levels, MODE_OF_FOLD[ctx.fold])
    return out[0], list(out[1:]), None, None, None


_idwt2_op.register_autograd(_idwt2_backward, setup_context=_idwt2_setup)


class _Idwt2Fn(torch.autograd.Function):
    """d4k::haar_idwt2's forward, setup_context and backward, called without the dispatcher (the
    tensors of ``yh`` are passed one by one, after the non-tensor arguments)."""

    @staticmethod
    def forward(ctx, out_h, out_w, fold, yl, *yh):
        out = _idwt2_forward(yl, yh, out_h, out_w, fold)
        _idwt2_setup(ctx, (yl, yh, out_h, out_w, fold), out)
        return out

    @staticmethod
    def backward(ctx, g):
        gl, gh, *_ = _idwt2_backward(ctx, g)
        return (None, None, None, gl, *gh)


# ----------------------------------------------------------------------------------------------
# one routed call per direction (public functions and the backward formulas above)
# ----------------------------------------------------------------------------------------------
def _dwt(x: torch.Tensor, levels: int, mode: str) -> List[torch.Tensor]:
    how = route(x)
    if how == DIRECT:
        return _dwt2_forward(x, levels, mode)
    if how == AUTOGRAD:
        return list(_Dwt2Fn.apply(x, levels, mode))
    if how == COMPOSITE:
        return _haar_torch.dwt(x, levels, mode, functional=True)
    return _dwt2_op(x, levels, mode)


def _idwt(yl: torch.Tensor, yh: Sequence[torch.Tensor], out_h: int, out_w: int, fold: str) -> torch.Tensor:
    how = route(yl, *yh)
    if how == DIRECT:
        return _idwt2_forward(yl, yh, out_h, out_w, fold)
    if how == AUTOGRAD:
        return _Idwt2Fn.apply(out_h, out_w, fold, yl, *yh)
    if how == COMPOSITE:
        return _haar_torch.idwt(yl, yh, out_h, out_w, fold, functional=True)
    return _idwt2_op(yl, list(yh), out_h, out_w, fold)


# ----------------------------------------------------------------------------------------------
# public functions
# ----------------------------------------------------------------------------------------------
def dwt2(x: torch.Tensor, levels: int = 1, mode: str = "zero") -> Tuple[torch.Tensor, List[torch.Tensor]]:
    """J-level 2-D Haar DWT over the last two dims: ``(yl, yh)`` in pytorch_wavelets layout."""
    check_tensor(x, "x", dtypes=_DTYPES, min_dim=2)
    check_int(levels, "levels", lo=1)
    check_choice(mode, "mode", MODES)
    H, W = x.shape[-2], x.shape[-1]
    if x.numel() == 0:
        raise ValueError(f"x is empty (shape {tuple(x.shape)})")
    if H < 2 or W < 2:
        raise ValueError(f"x is too small for a Haar level: its last two dims are {H}x{W}, each must be >= 2")
    jmax = max_levels(H, W)
    if levels > jmax:
        raise ValueError(
            f"levels={levels} is more than a {H}x{W} input allows: at most {jmax} "
            "(each level halves the size rounding up and needs an input of at least 2x2)")
    out = _dwt(x, levels, mode)
    return out[0], out[1:]


def idwt2(coeffs, mode: str = "zero", output_size: Optional[Sequence[int]] = None) -> torch.Tensor:
    """Inverse of :func:`dwt2`. ``coeffs = (yl, yh)``; entries of ``yh`` may be None (zeros).

    Like pytorch_wavelets, each level crops the low-pass to the next detail size, and the result is
    even-sized; ``output_size=(H, W)`` crops it to the size the forward saw. For Haar the inverse
    is the same in every mode; ``mode`` is checked for symmetry with :func:`dwt2`."""
    check_choice(mode, "mode", MODES)
    if not isinstance(coeffs, (tuple, list)) or len(coeffs) != 2:
        raise TypeError("coeffs must be a pair (yl, yh)")
    yl, yh = coeffs
    check_tensor(yl, "yl", dtypes=_DTYPES, min_dim=2)
    if not isinstance(yh, (tuple, list)):
        raise TypeError(f"yh must be a list of tensors, got {type(yh).__name__}")
    yh = list(yh)
    if yl.numel() == 0:
        raise ValueError(f"yl is empty (shape {tuple(yl.shape)})")
    if not yh:
        return yl
    lead = tuple(yl.shape[:-2])
    cur_h, cur_w = yl.shape[-2], yl.shape[-1]   # size of the low-pass entering level k
    for k in reversed(range(len(yh))):
        d = yh[k]
        if d is None:
            hk, wk = cur_h, cur_w
            yh[k] = yl.new_zeros(lead + (3, hk, wk))
        else:
            check_tensor(d, f"yh[{k}]", min_dim=3)
            if d.dtype != yl.dtype:
                raise TypeError(f"yh[{k}] has dtype {d.dtype} but yl has dtype {yl.dtype}")
            if d.device != yl.device:
                raise ValueError(f"yh[{k}] is on {d.device} but yl is on {yl.device}")
            if tuple(d.shape[:-3]) != lead or d.shape[-3] != 3:
                raise ValueError(f"yh[{k}] has shape {tuple(d.shape)}; expected {lead + (3, 'h', 'w')}")
            hk, wk = d.shape[-2], d.shape[-1]
        if cur_h not in (hk, hk + 1) or cur_w not in (wk, wk + 1):
            what = "yl" if k == len(yh) - 1 else f"the level-{k + 2} reconstruction"
            raise ValueError(f"{what} is {cur_h}x{cur_w} but yh[{k}] is {hk}x{wk}: sizes must "
                             "match or be one larger (sizes halve rounding up)")
        if k == len(yh) - 1 and (cur_h, cur_w) != (hk, wk):
            yl = yl[..., :hk, :wk]
        cur_h, cur_w = 2 * hk, 2 * wk
    if output_size is None:
        out_h, out_w = cur_h, cur_w
    else:
        out_h, out_w = (int(v) for v in output_size)
        if out_h not in (cur_h, cur_h - 1) or out_w not in (cur_w, cur_w - 1):
            raise ValueError(f"output_size={tuple(output_size)} does not fit coefficients whose finest "
                             f"level reconstructs {cur_h}x{cur_w}: expected H in ({cur_h - 1}, {cur_h}), "
                             f"W in ({cur_w - 1}, {cur_w})")
    return _idwt(yl, yh, out_h, out_w, "crop")


# ----------------------------------------------------------------------------------------------
# drop-in modules and pywt conversion
# ----------------------------------------------------------------------------------------------
_SUPPORTED_WAVES = ("haar", "db1")


def _check_wave(wave) -> None:
    name = getattr(wave, "name", wave)
    if isinstance(name, str) and name.lower() in _SUPPORTED_WAVES:
        return
    raise NotImplementedError(
        f"wave={wave!r} is not supported: d4k_kernels implements only the Haar wavelet "
        f"(wave='haar' or 'db1', or pywt.Wavelet('haar'))")


class DWTForward(torch.nn.Module):
    """Drop-in for ``pytorch_wavelets.DWTForward`` (Haar only): ``forward(x) -> (yl, yh)``."""

    def __init__(self, J: int = 1, wave="haar", mode: str = "zero"):
        super().__init__()
        _check_wave(wave)
        self.J = check_int(J, "J", lo=1)
        self.mode = check_choice(mode, "mode", MODES)

    def forward(self, x: torch.Tensor):
        return dwt2(x, levels=self.J, mode=self.mode)


class DWTInverse(torch.nn.Module):
    """Drop-in for ``pytorch_wavelets.DWTInverse`` (Haar only): ``forward((yl, yh)) -> x``."""

    def __init__(self, wave="haar", mode: str = "zero"):
        super().__init__()
        _check_wave(wave)
        self.mode = check_choice(mode, "mode", MODES)

    def forward(self, coeffs):
        return idwt2(coeffs, mode=self.mode)


def to_pywt(yl: torch.Tensor, yh: Sequence[torch.Tensor]) -> list:
    """pywt ``wavedec2`` list ``[cA_J, (cH_J, cV_J, cD_J), ..., (cH_1, cV_1, cD_1)]`` (tensors;
    ``.numpy()`` them for pywt). LH = cH, HL = cV, HH = cD."""
    return [yl] + [(d[..., 0, :, :], d[..., 1, :, :], d[..., 2, :, :]) for d in reversed(list(yh))]


def from_pywt(coeffs) -> Tuple[torch.Tensor, List[torch.Tensor]]:
    """``(yl, yh)`` from a pywt ``wavedec2`` list (numpy arrays or tensors)."""
    if not isinstance(coeffs, (list, tuple)) or len(coeffs) < 1:
        raise TypeError("coeffs must be a pywt wavedec2 list [cA, (cH, cV, cD), ...]")
    yl = torch.as_tensor(coeffs[0])
    yh = []
    for k, det in enumerate(reversed(list(coeffs[1:]))):
        if not isinstance(det, (list, tuple)) or len(det) != 3:
            raise ValueError(f"detail entry {len(coeffs) - 1 - k} must be a (cH, cV, cD) tuple")
        yh.append(torch.stack([torch.as_tensor(t, device=yl.device) for t in det], dim=-3))
    return yl, yh
