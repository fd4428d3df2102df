import pytest
from conftest import case_params, run_case


@pytest.mark.parametrize("case", case_params("wavelet_loss"))
def test_wavelet_loss(benchmark, case):
    run_case(benchmark, case)
