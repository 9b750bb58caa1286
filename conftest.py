"""Shared test options and the names every docstring example may use (pytest runs them with ``--doctest-modules``)."""

import numpy
import pytest
import torch


def pytest_addoption(parser):
    parser.addoption("--device", default="cpu", help="device of the model contract tests (default: cpu)")
    parser.addoption("--dtype", default="float64", choices=("float32", "float64"),
                     help="dtype of the model contract tests (default: float64, where exactness is checked)")
    parser.addoption("--robustness-table", default=None, metavar="PATH",
                     help="tests/test_robustness.py: run every row of the bad-input table, slow ones included, "
                          "and write the table into PATH (between its table markers, or as the whole file)")


def pytest_configure(config):
    config.addinivalue_line("markers", "robustness_slow: a row group of the bad-input table that starts processes "
                                       "(slow, unless --robustness-table asks for the whole table)")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Row groups of the bad-input table that start processes are ``slow``, unless ``--robustness-table``
    asks for the whole table."""
    if config.getoption("--robustness-table"):
        return
    for item in items:
        if item.get_closest_marker("robustness_slow"):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def device(request) -> torch.device:
    name = request.config.getoption("--device")
    if name.startswith("cuda") and not torch.cuda.is_available():
        pytest.skip(f"--device {name}: no CUDA device here")
    return torch.device(name)


@pytest.fixture(scope="session")
def dtype(request) -> torch.dtype:
    return getattr(torch, request.config.getoption("--dtype"))


@pytest.fixture(autouse=True)
def _doctest_names(doctest_namespace):
    doctest_namespace.update(torch=torch, np=numpy)
