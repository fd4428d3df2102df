"""pytest-benchmark suites: `pytest bench/ --benchmark-only`.

Each bench_<op>.py parametrises over d4k_kernels.benchmarks.<op>.cases(device): one benchmark
group per shape, d4k beside its peers. On CUDA the 4K shapes run; on the CPU small ones.
On CUDA every call is followed by a synchronisation, so small ops include the host's launch costs;
D4K_BENCH_GRAPH=1 times replays of a CUDA graph of each case instead (GPU time; cases that are host
work, like the skimage loop, stay eager). `d4k bench` prints both.
"""
import os

import pytest
import torch

from d4k_kernels.benchmarks import resolve_device

DEVICE = resolve_device(os.environ.get("D4K_BENCH_DEVICE", "auto"))
QUICK = os.environ.get("D4K_BENCH_QUICK", "0") == "1"
GRAPH = os.environ.get("D4K_BENCH_GRAPH", "0") == "1"


def case_params(family: str):
    """pytest params (one per Case) for an op family; ids are "group | impl"."""
    import importlib

    mod = importlib.import_module(f"d4k_kernels.benchmarks.{family}")
    cases = mod.cases(DEVICE, quick=QUICK)
    return [pytest.param(c, id=f"{c.group} | {c.impl}") for c in cases]


def run_case(benchmark, case):
    benchmark.group = case.group
    benchmark.extra_info["impl"] = case.impl
    if case.bytes_moved:
        benchmark.extra_info["bytes_moved"] = case.bytes_moved
    if DEVICE.type == "cuda":
        run = case.fn
        if GRAPH and case.graph:
            from d4k_kernels.benchmarks import capture_graph

            run = capture_graph(case.fn).replay
            benchmark.extra_info["timing"] = "CUDA-graph replay"

        def fn():
            run()
            torch.cuda.synchronize()
    else:
        fn = case.fn
    fn()  # warm-up: compilation and first-call costs stay out of the numbers
    benchmark(fn)
