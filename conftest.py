"""Names every docstring example may use (pytest runs them with ``--doctest-modules``)."""

import numpy
import pytest
import torch


@pytest.fixture(autouse=True)
def _doctest_names(doctest_namespace):
    doctest_namespace.update(torch=torch, np=numpy)
