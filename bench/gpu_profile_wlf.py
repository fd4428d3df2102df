"""GPU only: where the eager time of d4k's wavelet_loss fwd+bwd goes (host launch costs vs kernels).

Prints the eager and CUDA-graph time of one launch of an empty Triton kernel and of a tiny ATen op
(the host floor per launch on this machine), of d4k's fwd+bwd, and a torch.profiler table of the
fwd+bwd (host time per op, kernel time per kernel), and the same for wavelet_loss_and_grad. Run by
bench/gpu_check.sh (D4K_GPU_PROFILE=1)."""
import torch
import triton
from triton.testing import do_bench

from d4k_kernels import wavelet_loss, wavelet_loss_and_grad
from d4k_kernels.benchmarks import time_graph
from d4k_kernels.benchmarks.wavelet_loss import wlf_inputs


@triton.jit
def _noop(x_ptr):
    pass


def main():
    dev = torch.device("cuda")
    x = torch.zeros(1, device=dev)
    print(f"empty Triton launch: eager {do_bench(lambda: _noop[(1,)](x), return_mode='median') * 1e3:.1f} us, "
          f"graph {time_graph(lambda: _noop[(1,)](x)) * 1e3:.1f} us")
    print(f"torch.add(1 elem): eager {do_bench(lambda: torch.add(x, 1), return_mode='median') * 1e3:.1f} us, "
          f"graph {time_graph(lambda: torch.add(x, 1)) * 1e3:.1f} us")
    for shape in [(4, 16, 512, 512), (1, 16, 512, 512)]:
        pred, xt, x0, sig, w = wlf_inputs(shape, torch.bfloat16, dev)

        def fwd():
            with torch.no_grad():
                return wavelet_loss(pred, xt, x0, sig, w)

        def fwd_bwd():
            return torch.autograd.grad(wavelet_loss(pred, xt, x0, sig, w), pred)[0]

        def loss_and_grad():
            return wavelet_loss_and_grad(pred, xt, x0, sig, w)[1]

        for name, fn in [("fwd (no grad)", fwd), ("fwd+bwd", fwd_bwd), ("loss_and_grad", loss_and_grad)]:
            print(f"{shape} {name}: eager {do_bench(fn, return_mode='median') * 1e3:.1f} us, "
                  f"graph {time_graph(fn) * 1e3:.1f} us")
        if shape[0] == 1:
            acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
            for _ in range(5):
                fwd_bwd()
            torch.cuda.synchronize()
            with torch.profiler.profile(activities=acts) as prof:
                for _ in range(20):
                    fwd_bwd()
                torch.cuda.synchronize()
            print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=18, max_name_column_width=48))
            # GPU time per kernel (which of the graph's nodes costs what)
            print(prof.key_averages().table(sort_by="device_time_total", row_limit=8, max_name_column_width=48))


if __name__ == "__main__":
    main()
