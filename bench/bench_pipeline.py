import pytest

from conftest import case_params, run_case


@pytest.mark.parametrize("case", case_params("pipeline"))
def test_pipeline(benchmark, case):
    run_case(benchmark, case)
