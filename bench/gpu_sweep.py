"""GPU only: time launch-configuration variants of the Haar and WLF kernels in one process (CUDA-graph
replays, so the numbers are GPU time), and print one table. Run by bench/gpu_check.sh when
D4K_GPU_SWEEP=1; the winners become the defaults (D4K_HAAR_TILE / D4K_HAAR_WARPS, D4K_WLF_TILE /
D4K_WLF_WARPS override them)."""
import itertools
import sys
import time

import torch
from triton.runtime.errors import TritonError

from d4k_kernels import dwt2, idwt2, settings, wavelet_loss
from d4k_kernels.benchmarks import time_graph
from d4k_kernels.benchmarks.wavelet_loss import wlf_inputs


def _t(fn):
    try:
        return time_graph(fn, quick=True) * 1e3
    except TritonError as e:  # a variant that does not compile (registers, shared memory)
        print(f"    failed: {type(e).__name__}: {str(e).splitlines()[0][:80]}", file=sys.stderr)
        torch.cuda.synchronize()
        return float("nan")


def _sweep(title: str, tiles, family: str, cases, width: int, budget_s: float):
    """Time every case for each (tile, warps) variant until budget_s is spent; one printed row each.
    The variant is set through settings.override(<family>_tile=..., <family>_warps=...)."""
    t0 = time.time()
    print(title)
    for tile, warps in itertools.product(tiles, [4, 8]):
        if time.time() - t0 > budget_s:
            break
        with settings.override(**{f"{family}_tile": tile, f"{family}_warps": warps}):
            r = [_t(c) for c in cases]
        print(f"  {tile[0]:>3}x{tile[1]:<4} {warps:>3}  " + "  ".join(f"{v:{width}.1f}" for v in r), flush=True)


def haar(budget_s: float):
    dev = torch.device("cuda")
    x = torch.randn(8, 16, 512, 512, device=dev).to(torch.bfloat16)
    yl, yh = dwt2(x, 1)
    x1 = torch.randn(1, 16, 512, 512, device=dev).to(torch.bfloat16)

    _sweep("haar tile  warps   dwt J=1 (8,16,512^2)  dwt J=3  idwt J=1  dwt J=1 (1,16,512^2)   [us, graph replay]",
           [(32, 128), (16, 256), (64, 128), (32, 256), (64, 64)], "haar",
           [lambda: dwt2(x, 1), lambda: dwt2(x, 3), lambda: idwt2((yl, yh)), lambda: dwt2(x1, 1)], 9, budget_s)


def wlf(budget_s: float):
    dev = torch.device("cuda")
    cases = []
    for shape in [(4, 16, 512, 512), (1, 16, 512, 512), (4, 16, 256, 256)]:
        pred, xt, x0, sig, w = wlf_inputs(shape, torch.bfloat16, dev)
        cases.append(lambda p=pred, a=xt, b=x0, s=sig, ww=w: torch.autograd.grad(wavelet_loss(p, a, b, s, ww), p)[0])

    _sweep("wlf BHxBW warps   fwd+bwd (4,16,512^2)  (1,16,512^2)  (4,16,256^2)   [us, graph replay]",
           [(8, 64), (4, 64), (8, 32), (16, 64), (4, 128)], "wlf", cases, 12, budget_s)


if __name__ == "__main__":
    which = sys.argv[1:] or ["wlf", "haar"]
    for w in which:
        {"wlf": wlf, "haar": haar}[w](budget_s=25.0)
