"""The timing harness: every module of this folder is collected (``python -m pytest benchmarks``), and each
timing's figures (``benchmark.extra_info``: ratios, throughput, peak memory) are printed after the run."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
_FIGURES: list[tuple[str, dict]] = []


def pytest_collect_file(file_path: Path, parent):
    """Collect ``timing.py``, ``scaling.py``, ``gpu.py``, ... as test modules when the folder is collected
    (a file named on the command line is collected by pytest itself)."""
    if (file_path.suffix == ".py" and file_path.parent == HERE and file_path.name != "conftest.py"
            and not file_path.name.startswith("test_") and not parent.session.isinitpath(file_path)):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


@pytest.fixture(autouse=True)
def _collect_figures(request):
    yield
    fixture = request.node.funcargs.get("benchmark")
    if fixture is not None:
        info = fixture.extra_info
        if info:
            _FIGURES.append((request.node.name, dict(info)))


def pytest_terminal_summary(terminalreporter):
    if not _FIGURES:
        return
    terminalreporter.section("figures (ratios are interleaved medians in one process)")
    for name, info in _FIGURES:
        shown = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in info.items())
        terminalreporter.write_line(f"{name}: {shown}")
