"""Attention at head dims up to 512 (d4k_kernels/benchmarks/attention.py): d4k beside torch SDPA's
backends and flash-attn; each case also records its TFLOP/s (4 * M * N * D per head / median time)."""
import pytest
from conftest import case_params, run_case

from d4k_kernels.benchmarks.attention import flops


@pytest.mark.parametrize("case", case_params("attention"))
def test_attention(benchmark, case):
    run_case(benchmark, case)
    stats = getattr(benchmark, "stats", None)
    if stats is not None and flops(case.group):
        benchmark.extra_info["TFLOP/s"] = flops(case.group) / stats.stats.median / 1e12
