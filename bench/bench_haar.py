"""Haar DWT / IDWT benchmarks: `pytest bench/bench_haar.py --benchmark-only` (one group per shape,
d4k beside pytorch_wavelets, ptwt (fp32), plain torch and, on CUDA, torch.compile)."""
import pytest
from conftest import case_params, run_case


@pytest.mark.parametrize("case", case_params("haar"))
def test_haar(benchmark, case):
    run_case(benchmark, case)
