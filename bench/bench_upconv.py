import pytest
from conftest import case_params, run_case


@pytest.mark.parametrize("case", case_params("upconv"))
def test_upconv(benchmark, case):
    run_case(benchmark, case)
