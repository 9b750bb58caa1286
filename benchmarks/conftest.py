"""Print each timing's figures (``benchmark.extra_info``: ratios, throughput, peak memory) after the run."""

from __future__ import annotations

import pytest

_FIGURES: list[tuple[str, dict]] = []


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
