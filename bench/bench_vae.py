import pytest

from conftest import case_params, run_case


@pytest.mark.parametrize("case", case_params("vae"))
def test_vae(benchmark, case):
    run_case(benchmark, case)
