"""GLCM Score: d4k beside the paper's skimage loop (see d4k_kernels/benchmarks/glcm.py)."""
import pytest

from conftest import case_params, run_case


@pytest.mark.parametrize("case", case_params("glcm"))
def test_glcm(benchmark, case):
    run_case(benchmark, case)
